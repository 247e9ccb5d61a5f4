//! `private-worker`: parse the command line, set up logging and signals,
//! then hand over to the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use private_worker::shown::shown;
use tokio_util::sync::CancellationToken;

/// The private worker: dials out to the orchestrator and runs locally allowed tasks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// What to do instead of running the worker.
    #[command(subcommand)]
    command: Option<Command>,
    /// Path of the worker's TOML config.
    #[arg(long, short, env = "PRIVATE_WORKER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Verify an audit log in the contract's record form (this worker's, or
    /// one written by any other implementation), print where its chain
    /// ends or the first bad line, and exit (0 intact, 2 broken, 1 cannot
    /// be read). Needs no config.
    #[arg(long, value_name = "FILE", conflicts_with = "check")]
    verify_audit: Option<PathBuf>,
    /// Validate the config, TLS files, audit log and secret references, print a report and exit.
    #[arg(long)]
    check: bool,
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "PRIVATE_WORKER_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the running worker's status from its status file and exit: 0
    /// healthy (connected, kill switch off, file fresh), 1 unhealthy, 2 the
    /// file cannot be read. Needs no socket: the worker writes the file.
    Status {
        /// Print the status file's JSON (for scripts) instead of text.
        #[arg(long)]
        json: bool,
        /// The status file (default: the one the config names; the config
        /// comes from --config, PRIVATE_WORKER_CONFIG, or
        /// /etc/private-worker/worker.toml).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

/// Where `private-worker status` looks for the config when none is given.
const DEFAULT_CONFIG: &str = "/etc/private-worker/worker.toml";

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // Every log line passes the credential masker on its way out.
        .with_writer(private_worker::secrets::mask::MaskingMakeWriter(
            std::io::stderr,
        ));
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some(log) = &cli.verify_audit {
        return verify_audit(log);
    }
    if let Some(Command::Status { json, file }) = &cli.command {
        return status(*json, file.as_deref(), cli.config.as_deref());
    }
    let Some(config_path) = &cli.config else {
        eprintln!(
            "error: --config FILE (or PRIVATE_WORKER_CONFIG) is required to run the worker; see --help"
        );
        return ExitCode::from(2);
    };
    let config = match private_worker::Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        if cli.check {
            let report = private_worker::check::check(&config).await;
            for line in &report.lines {
                println!("{line}");
            }
            return if report.passed {
                println!("all checks passed");
                ExitCode::SUCCESS
            } else {
                println!("some checks failed");
                ExitCode::from(2)
            };
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        match private_worker::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %shown(&e), "worker stopped");
                eprintln!("error: {}", shown(&e));
                ExitCode::FAILURE
            }
        }
    })
}

/// Cancels `shutdown` on SIGTERM or SIGINT; a second signal exits at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

/// `--verify-audit FILE`: the chain check any verifier of the contract
/// makes, on one file.
fn verify_audit(log: &std::path::Path) -> ExitCode {
    match private_worker::audit::verify_file(log) {
        Ok((0, _)) => {
            println!("{}: empty (no records)", log.display());
            ExitCode::SUCCESS
        }
        Ok((records, last_hash)) => {
            println!(
                "{}: {records} records, chain intact, last record_hash {last_hash}",
                log.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ private_worker::audit::AuditError::Io { .. }) => {
            eprintln!("error: cannot read the log: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(2)
        }
    }
}

/// `status`: reads the status file and judges it.
fn status(
    json: bool,
    file: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
) -> ExitCode {
    use private_worker::status::report;
    let file = match file {
        Some(file) => file.to_path_buf(),
        None => {
            let config = config.unwrap_or(std::path::Path::new(DEFAULT_CONFIG));
            match private_worker::Config::load(config) {
                Ok(config) => config.status_file,
                Err(e) => {
                    eprintln!(
                        "error: {e}\n(give the worker's config with --config, or the status file with --file)"
                    );
                    return ExitCode::from(2);
                }
            }
        }
    };
    let status = match report::read(&file) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let now = std::time::SystemTime::now();
    let health = status.health(now);
    if json {
        match serde_json::to_string_pretty(&status) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", status.render(now));
        for warning in &health.warnings {
            println!("warning: {warning}");
        }
        if health.is_healthy() {
            println!("healthy");
        } else {
            for problem in &health.problems {
                println!("unhealthy: {problem}");
            }
        }
    }
    if health.is_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn status_takes_the_config_before_or_after_the_subcommand() {
        for args in [
            ["private-worker", "--config", "w.toml", "status"],
            ["private-worker", "status", "--config", "w.toml"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("w.toml")));
            assert!(matches!(cli.command, Some(Command::Status { .. })));
        }
    }
}
