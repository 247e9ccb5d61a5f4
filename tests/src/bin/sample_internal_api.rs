//! `sample-internal-api`: the demo's stand-in for an internal CRM.
//!
//! Listens on `--listen` (default 127.0.0.1:0), accepts only the bearer
//! token in `$SAMPLE_API_TOKEN`, prints `sample-internal-api ready
//! url=http://<addr>` on stdout once listening, and runs until killed.

use clap::Parser;

/// A stand-in internal CRM API that requires a bearer token.
#[derive(Parser)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let token = std::env::var("SAMPLE_API_TOKEN")
        .map_err(|_| anyhow::anyhow!("set SAMPLE_API_TOKEN to the bearer token the API accepts"))?;
    let api = private_worker_tests::internal_api::InternalApi::start(cli.listen, &token).await?;
    println!("sample-internal-api ready url={}", api.base_url());
    use std::io::Write;
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
