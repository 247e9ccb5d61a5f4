//! `bench`: what private-worker costs and how far it goes, measured in one
//! run next to the ceiling of its own transport.
//!
//! Sections: (1) baseline: a bare tonic bidirectional stream with the same
//! mTLS set-up, echoing task-sized messages; (2) full path: orchestrator-mock
//! -> private-worker -> echo executor (and, separately, an HTTP call to a
//! local stub) -> result + audit record stored -> acknowledgement, with 1,
//! 16 and 256 tasks in flight, as a ratio to the baseline; (3) worker
//! memory; (4) orchestrator scale with many connected workers; (5)
//! reconnect after an orchestrator restart. Prints a table, writes JSON.
//!
//! `--smoke` runs every section with small counts in seconds (CI runs it
//! so the benchmark never rots). Real figures come from a release build:
//! `cargo run --release --bin bench`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use orchestrator_mock::api::{PlanRequest, StepRequest};
use orchestrator_mock::client::AdminClient;
use private_worker::tls::ClientTls;
use private_worker_tests::bench::{baseline, cpu_time, load_worker, ms, percentiles, rss_kib};
use private_worker_tests::catalog::{self, OrchestratorSetup, WorkerSetup};
use private_worker_tests::internal_api::InternalApi;
use private_worker_tests::pki::{ORCHESTRATOR_NAME, Pki};
use private_worker_tests::procs::{Process, binary};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Measures throughput, latency, memory, scale and reconnect.
#[derive(Parser)]
struct Cli {
    /// Small counts, a few seconds: checks that every section still runs.
    #[arg(long)]
    smoke: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench-results.json")]
    json: PathBuf,
    /// Connected-worker counts for the scale section.
    #[arg(long, value_delimiter = ',')]
    scale: Option<Vec<usize>>,
}

const IN_FLIGHT: [usize; 3] = [1, 16, 256];
const ECHO_TASK: &str = "bench.echo";

struct Sizes {
    baseline_total: [usize; 3],
    full_total: [usize; 3],
    http_total: [usize; 3],
    scale: Vec<usize>,
    dispatch_samples: usize,
}

fn sizes(cli: &Cli) -> Sizes {
    if cli.smoke {
        Sizes {
            baseline_total: [200, 400, 1000],
            full_total: [20, 64, 256],
            http_total: [10, 32, 256],
            scale: cli.scale.clone().unwrap_or_else(|| vec![20]),
            dispatch_samples: 5,
        }
    } else {
        Sizes {
            baseline_total: [5_000, 50_000, 200_000],
            full_total: [1_000, 8_000, 25_600],
            http_total: [500, 4_000, 12_800],
            scale: cli.scale.clone().unwrap_or_else(|| vec![1_000, 5_000]),
            dispatch_samples: 50,
        }
    }
}

fn echo_schema() -> Value {
    json!({"type": "object", "required": ["payload"], "properties": {"payload": {"type": "string", "maxLength": 1000}}})
}

fn payload() -> Value {
    json!({"payload": "p".repeat(baseline::PAYLOAD_BYTES - 14)})
}

/// Everything on disk one run needs.
struct Setup {
    dir: PathBuf,
    pki: Pki,
    registry: PathBuf,
}

/// The PKI has the bench worker's certificate and one per load worker (each
/// load worker is its own worker identity, as in a real fleet: the
/// orchestrator keeps one stream per identity).
fn setup(dir: &Path, load_workers: usize) -> anyhow::Result<Setup> {
    let ids: Vec<String> = std::iter::once("bench-worker".to_string())
        .chain((0..load_workers).map(|i| format!("load-{i}")))
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let pki = Pki::create_for(&dir.join("pki"), &ids);
    let mut registry: Value = serde_json::from_str(&catalog::registry_json())?;
    registry["tasks"]
        .as_array_mut()
        .context("registry has tasks")?
        .push(json!({"name": ECHO_TASK, "version": "1", "description": "benchmark no-op", "input_schema": echo_schema()}));
    let registry_path = dir.join("registry.json");
    std::fs::write(&registry_path, serde_json::to_string_pretty(&registry)?)?;
    Ok(Setup {
        dir: dir.to_path_buf(),
        pki,
        registry: registry_path,
    })
}

/// Starts orchestrator-mock as a process; `grpc_port` 0 picks a free port;
/// `durable` is its `sync_writes`.
async fn start_orchestrator(
    setup: &Setup,
    name: &str,
    grpc_port: u16,
    durable: bool,
) -> anyhow::Result<(Process, String, AdminClient)> {
    let config = catalog::orchestrator_config_toml(&OrchestratorSetup {
        ca_cert: &setup.pki.ca_cert,
        cert: &setup.pki.orchestrator_cert,
        key: &setup.pki.orchestrator_key,
        registry: &setup.registry,
        data_dir: &setup.dir.join(format!("{name}-data")),
        insecure_skip_checks: false,
        wire_capture_dir: None,
    })
    .replace(
        "grpc_listen = \"127.0.0.1:0\"",
        &format!("grpc_listen = \"127.0.0.1:{grpc_port}\"\nsync_writes = {durable}"),
    );
    // The scale section connects thousands of workers at once: the
    // admission limit on connections before Hello (default 256) would turn
    // the measurement into one of backoff.
    let config = format!("{config}\n[admission]\nmax_connections_before_hello = 100000\n");
    let path = setup.dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    let process = Process::start(
        name,
        &binary("orchestrator-mock"),
        &["serve", "--config", path.to_str().context("utf-8 path")?],
        &[("RUST_LOG", "warn")],
        &setup.dir.join(format!("{name}.log")),
    );
    let (process, line) = tokio::task::spawn_blocking(move || {
        let mut process = process;
        let line = process.wait_for("orchestrator-mock ready", Duration::from_secs(60));
        (process, line)
    })
    .await?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|p| p.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .with_context(|| format!("no {key}= in {line}"))
    };
    let grpc = field("grpc")?;
    // One token with every role: the bench measures throughput, not the
    // role split (the demo shows that).
    let admin = private_worker_tests::admin::client(
        &field("admin")?,
        &orchestrator_mock::tokens::TokenFile::in_data_dir(&setup.dir.join(format!("{name}-data"))),
        private_worker_tests::admin::Holder::Harness,
    )?;
    Ok((process, grpc, admin))
}

/// Starts orchestrator-mock and private-worker (256 in flight, the sample
/// tasks plus the echo task), waits until the worker is connected.
async fn start_full_path(
    setup: &Setup,
    api_base: &str,
    token: &str,
    durable: bool,
) -> anyhow::Result<(Process, AdminClient, Process)> {
    let name = if durable { "durable" } else { "no-fsync" };
    let (orchestrator, grpc, admin) =
        start_orchestrator(setup, &format!("orchestrator-{name}"), 0, durable).await?;
    let mut worker_config = catalog::worker_config_toml(&WorkerSetup {
        orchestrator_address: grpc,
        server_name: ORCHESTRATOR_NAME,
        ca_cert: &setup.pki.ca_cert,
        cert: &setup.pki.worker_cert,
        key: &setup.pki.worker_key,
        api_base,
        audit_log: &setup.dir.join(format!("worker-{name}-audit.jsonl")),
        max_in_flight: 256,
    })
    .replace(
        "[worker]\n",
        &format!("[worker]\naudit_fsync = {durable}\n"),
    );
    worker_config.push_str(&format!(
        "\n[tasks.\"{ECHO_TASK}\"]\nversion = \"1\"\ninput_schema = {}\necho = true\n",
        toml::Value::try_from(echo_schema())?
    ));
    let worker_config_path = setup.dir.join(format!("worker-{name}.toml"));
    std::fs::write(&worker_config_path, worker_config)?;
    let mut worker = Process::start(
        "private-worker",
        &binary("private-worker"),
        &[
            "--config",
            worker_config_path.to_str().context("utf-8 path")?,
        ],
        &[(catalog::TOKEN_ENV, token)],
        &setup.dir.join(format!("worker-{name}.log")),
    );
    let start = Instant::now();
    while admin.workers().await?.is_empty() {
        if start.elapsed() > Duration::from_secs(30) || worker.has_exited() {
            bail!("the worker did not connect:\n{}", worker.output());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((orchestrator, admin, worker))
}

fn parse_time(text: &Option<String>) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(
        text.as_deref()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
}

/// One throughput/latency figure.
struct Point {
    in_flight: usize,
    tasks: usize,
    per_second: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

impl Point {
    fn json(&self, baseline: Option<&Point>) -> Value {
        json!({
            "in_flight": self.in_flight,
            "tasks": self.tasks,
            "per_second": self.per_second.round(),
            "latency_ms": {"p50": self.p50, "p99": self.p99, "p999": self.p999},
            "ratio_to_baseline": baseline.map(|b| self.per_second / b.per_second),
        })
    }
}

/// Runs `total` tasks as `in_flight` concurrent plans of sequential steps
/// and reads throughput and enqueue-to-stored latency from the step
/// timestamps the orchestrator records.
async fn full_path(
    admin: &AdminClient,
    task: &str,
    inputs: &Value,
    in_flight: usize,
    total: usize,
) -> anyhow::Result<Point> {
    let per_plan = (total / in_flight).max(1);
    let mut ids = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let request = PlanRequest {
            name: Some(format!("bench {task} x{in_flight}")),
            steps: (0..per_plan)
                .map(|_| StepRequest {
                    task: task.into(),
                    version: None,
                    inputs: inputs.clone(),
                })
                .collect(),
        };
        ids.push(admin.submit_plan(&request).await?.id);
    }
    let approvals = ids.iter().map(|id| admin.approve(id));
    for approved in futures::future::join_all(approvals).await {
        approved?;
    }
    let mut latencies = Vec::with_capacity(per_plan * in_flight);
    let (mut first, mut last) = (None, None);
    for id in &ids {
        let plan = admin.wait_for_plan(id, Duration::from_secs(600)).await?;
        if plan.status != orchestrator_mock::api::PlanStatus::Succeeded {
            bail!(
                "bench plan {id} ended {:?}: {:?}",
                plan.status,
                plan.steps.iter().find(|s| s.error_code.is_some())
            );
        }
        for step in &plan.steps {
            let (Some(q), Some(f)) = (parse_time(&step.queued_at), parse_time(&step.finished_at))
            else {
                bail!("step without timestamps");
            };
            latencies.push((f - q).as_seconds_f64() * 1000.0);
            first = Some(first.map_or(q, |t: time::OffsetDateTime| t.min(q)));
            last = Some(last.map_or(f, |t: time::OffsetDateTime| t.max(f)));
        }
    }
    let span = (last.context("no steps")? - first.context("no steps")?).as_seconds_f64();
    let (p50, p99, p999) = percentiles(&mut latencies);
    Ok(Point {
        in_flight,
        tasks: latencies.len(),
        per_second: latencies.len() as f64 / span.max(1e-9),
        p50,
        p99,
        p999,
    })
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0).round(),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn print_points(title: &str, points: &[Point], baseline: Option<&[Point]>) {
    println!("\n{title}");
    println!(
        "  {:>9} {:>8} {:>12} {:>9} {:>9} {:>9} {:>8}",
        "in flight", "tasks", "per second", "p50 ms", "p99 ms", "p99.9 ms", "ratio"
    );
    for (i, p) in points.iter().enumerate() {
        let ratio = baseline.map_or("".to_string(), |b| {
            format!("{:.2}x", p.per_second / b[i].per_second)
        });
        println!(
            "  {:>9} {:>8} {:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>8}",
            p.in_flight, p.tasks, p.per_second, p.p50, p.p99, p.p999, ratio
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let sizes = sizes(&cli);
    // Thousands of connections need thousands of descriptors, here and in
    // the orchestrator child (which inherits the limit).
    let nofile = rlimit::increase_nofile_limit(65_536).unwrap_or(0);
    let workdir = tempfile::Builder::new()
        .prefix("private-worker-bench-")
        .tempdir()?;
    let load_workers = sizes.scale.iter().copied().max().unwrap_or(0);
    let setup = setup(workdir.path(), load_workers)?;
    let machine = machine();
    println!(
        "private-worker bench ({}; {} cores; {}; fd limit {nofile})",
        machine["profile"], machine["cores"], machine["cpu"]
    );

    let worker_tls_files = private_worker::config::TlsFiles {
        ca_cert: setup.pki.ca_cert.clone(),
        cert: setup.pki.worker_cert.clone(),
        key: setup.pki.worker_key.clone(),
    };
    let client_tls = ClientTls::load(&worker_tls_files, ORCHESTRATOR_NAME)?;
    let server_tls = orchestrator_mock::TlsConfig {
        ca_cert: setup.pki.ca_cert.clone(),
        cert: setup.pki.orchestrator_cert.clone(),
        key: setup.pki.orchestrator_key.clone(),
    };

    // 1. Baseline.
    let echo = baseline::start(&server_tls).await;
    let mut base = Vec::new();
    for (i, k) in IN_FLIGHT.into_iter().enumerate() {
        let (elapsed, latencies) =
            baseline::run(&client_tls, echo.addr, k, sizes.baseline_total[i]).await;
        let mut samples: Vec<f64> = latencies.into_iter().map(ms).collect();
        let (p50, p99, p999) = percentiles(&mut samples);
        base.push(Point {
            in_flight: k,
            tasks: samples.len(),
            per_second: samples.len() as f64 / elapsed.as_secs_f64(),
            p50,
            p99,
            p999,
        });
    }
    drop(echo);
    print_points(
        "1. Baseline: bare tonic bidi stream, same mTLS, 200-byte messages",
        &base,
        None,
    );

    // 2. Full path, with the worker as its own process.
    let token = format!("bench-{}", std::process::id());
    let api = InternalApi::start("127.0.0.1:0".parse()?, &token).await?;
    let (mut orchestrator, admin, mut worker) =
        start_full_path(&setup, &api.base_url(), &token, true).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (idle_rss, _) = rss_kib(worker.pid()).context("worker RSS")?;

    let mut full = Vec::new();
    let mut cpu_per_task = Value::Null;
    for (i, k) in IN_FLIGHT.into_iter().enumerate() {
        let cpu = |pid| cpu_time(pid).unwrap_or_default();
        let before = (
            cpu(worker.pid()),
            cpu(orchestrator.pid()),
            cpu(std::process::id()),
        );
        full.push(full_path(&admin, ECHO_TASK, &payload(), k, sizes.full_total[i]).await?);
        if k == 256 {
            // Where the time goes at full load: CPU per task in each process.
            let tasks = sizes.full_total[i] as f64;
            let per_task = |now: Duration, then: Duration| (now - then).as_secs_f64() * 1e6 / tasks;
            cpu_per_task = json!({
                "worker_us": per_task(cpu(worker.pid()), before.0),
                "orchestrator_us": per_task(cpu(orchestrator.pid()), before.1),
                "bench_client_us": per_task(cpu(std::process::id()), before.2),
            });
        }
    }
    print_points(
        "2a. Full path: orchestrator -> worker -> echo executor -> result + audit stored -> ack",
        &full,
        Some(&base),
    );
    println!(
        "  CPU per task at 256 in flight: worker {:.0} us, orchestrator {:.0} us, bench client {:.0} us",
        cpu_per_task["worker_us"].as_f64().unwrap_or_default(),
        cpu_per_task["orchestrator_us"].as_f64().unwrap_or_default(),
        cpu_per_task["bench_client_us"].as_f64().unwrap_or_default()
    );
    let mut http = Vec::new();
    let message = json!({"message": "m".repeat(baseline::PAYLOAD_BYTES - 14)});
    for (i, k) in IN_FLIGHT.into_iter().enumerate() {
        http.push(full_path(&admin, "diag.echo", &message, k, sizes.http_total[i]).await?);
    }
    print_points(
        "2b. Full path with an HTTP call to a local stub (bearer credential, redaction)",
        &http,
        Some(&base),
    );
    let (_, peak_rss) = rss_kib(worker.pid()).context("worker RSS")?;
    println!(
        "\n3. Worker memory: RSS idle after connecting {:.1} MiB; peak (through 256 in flight) {:.1} MiB",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    worker.terminate(Duration::from_secs(20));
    orchestrator.terminate(Duration::from_secs(10));
    let (mut orchestrator, admin, mut worker) =
        start_full_path(&setup, &api.base_url(), &token, false).await?;
    let mut volatile = Vec::new();
    for (i, k) in IN_FLIGHT.into_iter().enumerate() {
        volatile.push(full_path(&admin, ECHO_TASK, &payload(), k, sizes.full_total[i]).await?);
    }
    print_points(
        "2c. Full path, durability off (no fdatasync on either side), echo executor",
        &volatile,
        Some(&base),
    );
    worker.terminate(Duration::from_secs(20));
    orchestrator.terminate(Duration::from_secs(10));
    drop(api);

    // 4. Orchestrator scale, and 5. reconnect after a restart.
    let manifest = load_worker::manifest(ECHO_TASK, "1", &echo_schema());
    let mut scale = Vec::new();
    let mut reconnect = Value::Null;
    println!("\n4. Orchestrator scale (load workers in this process, orchestrator in its own)");
    println!(
        "  {:>8} {:>14} {:>16} {:>14} {:>14}",
        "workers", "handshakes/s", "KiB per worker", "dispatch p50", "dispatch p99"
    );
    let last_n = *sizes.scale.last().unwrap_or(&0);
    let load_tls = setup
        .pki
        .other_workers
        .iter()
        .map(|(_, cert, key)| {
            ClientTls::load(
                &private_worker::config::TlsFiles {
                    ca_cert: setup.pki.ca_cert.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                },
                ORCHESTRATOR_NAME,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    for &n in &sizes.scale {
        let (mut orchestrator, grpc, admin) =
            start_orchestrator(&setup, &format!("scale-{n}"), 0, true).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rss_before, _) = rss_kib(orchestrator.pid()).context("orchestrator RSS")?;
        let stop = CancellationToken::new();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let started = Instant::now();
        for (id, tls) in load_tls.iter().take(n).enumerate() {
            tokio::spawn(load_worker::run(
                id,
                tls.clone(),
                grpc.clone(),
                manifest.clone(),
                events_tx.clone(),
                stop.clone(),
            ));
        }
        let mut connected = std::collections::HashSet::new();
        while connected.len() < n {
            match tokio::time::timeout(Duration::from_secs(120), events.recv()).await {
                Ok(Some(load_worker::Event::Connected(id, _))) => {
                    connected.insert(id);
                }
                Ok(Some(_)) => {}
                _ => bail!("only {} of {n} load workers connected", connected.len()),
            }
        }
        let handshake_rate = n as f64 / started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss_after, _) = rss_kib(orchestrator.pid()).context("orchestrator RSS")?;
        let per_worker_kib = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
        let mut dispatch = Vec::new();
        for _ in 0..sizes.dispatch_samples {
            let point = full_path(&admin, ECHO_TASK, &payload(), 1, 1).await?;
            dispatch.push(point.p50);
        }
        let (d50, d99, _) = percentiles(&mut dispatch);
        println!(
            "  {n:>8} {handshake_rate:>14.0} {per_worker_kib:>16.1} {:>11.3} ms {:>11.3} ms",
            d50, d99
        );
        scale.push(json!({
            "workers": n,
            "handshakes_per_second": handshake_rate.round(),
            "orchestrator_rss_mib": rss_after as f64 / 1024.0,
            "orchestrator_kib_per_worker": per_worker_kib,
            "dispatch_latency_ms": {"p50": d50, "p99": d99},
        }));

        if n == last_n {
            // 5. Restart the orchestrator on the same port; every load
            // worker reconnects with its own jittered backoff.
            let port: u16 = grpc
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .context("grpc port")?;
            orchestrator.terminate(Duration::from_secs(20));
            let down = Instant::now();
            let (restarted, _, _) =
                start_orchestrator(&setup, &format!("restart-{n}"), port, true).await?;
            let ready = Instant::now();
            let mut back = std::collections::HashMap::new();
            let mut attempts = 0usize;
            while back.len() < n {
                match tokio::time::timeout(Duration::from_secs(120), events.recv()).await {
                    Ok(Some(load_worker::Event::Connected(id, at))) if at > down => {
                        back.entry(id).or_insert(at);
                    }
                    Ok(Some(load_worker::Event::Attempt(_, at))) if at > down => attempts += 1,
                    Ok(Some(_)) => {}
                    _ => bail!("only {} of {n} load workers reconnected", back.len()),
                }
            }
            let mut offsets: Vec<f64> = back
                .values()
                .map(|at| ms(at.saturating_duration_since(ready)))
                .collect();
            let (r50, r99, _) = percentiles(&mut offsets);
            let all = offsets.iter().copied().fold(0.0, f64::max);
            println!(
                "\n5. Reconnect after an orchestrator restart ({n} workers): all back {:.0} ms after it was ready (down for {:.0} ms); p50 {r50:.0} ms, p99 {r99:.0} ms; {:.2} attempts per worker",
                all,
                ms(ready - down),
                attempts as f64 / n as f64
            );
            reconnect = json!({
                "workers": n,
                "restart_downtime_ms": ms(ready - down),
                "all_reconnected_after_ready_ms": all,
                "reconnected_after_ready_ms": {"p50": r50, "p99": r99, "max": all},
                "attempts_per_worker": attempts as f64 / n as f64,
            });
            let mut restarted = restarted;
            stop.cancel();
            restarted.terminate(Duration::from_secs(20));
        } else {
            stop.cancel();
            orchestrator.terminate(Duration::from_secs(20));
        }
    }

    let report = json!({
        "machine": machine,
        "smoke": cli.smoke,
        "baseline": base.iter().map(|p| p.json(None)).collect::<Vec<_>>(),
        "full_path_echo": full.iter().enumerate().map(|(i, p)| p.json(Some(&base[i]))).collect::<Vec<_>>(),
        "cpu_per_task_at_256": cpu_per_task,
        "full_path_echo_no_fsync": volatile.iter().enumerate().map(|(i, p)| p.json(Some(&base[i]))).collect::<Vec<_>>(),
        "full_path_http": http.iter().enumerate().map(|(i, p)| p.json(Some(&base[i]))).collect::<Vec<_>>(),
        "worker_memory_mib": {"idle": idle_rss as f64 / 1024.0, "peak": peak_rss as f64 / 1024.0},
        "orchestrator_scale": scale,
        "reconnect": reconnect,
    });
    if let Some(parent) = cli.json.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&cli.json, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", cli.json.display());
    Ok(())
}
