//! `certs-tool`: the command line over the certs-tool library.
//!
//! Each subcommand parses its arguments, calls the library, writes files with
//! [`certs_tool::files`] and prints what it wrote. Errors are printed on one
//! line (file, problem, what to do) and the exit code is 1.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use certs_tool::dev::{self, DevOptions};
use certs_tool::files::{write_private_key, write_public};
use certs_tool::{
    CertError, CertificateAuthority, IssuedCert, ServerCertRequest, WorkerCertRequest,
    create_worker_csr,
};
use clap::{Parser, Subcommand};
use private_worker_identity::inspect_pem;
use private_worker_identity::pem::read_pem;

/// Default validity of a root CA, in days (10 years).
const DEFAULT_ROOT_DAYS: u32 = 3650;
/// Default validity of an intermediate CA, in days (5 years).
const DEFAULT_INTERMEDIATE_DAYS: u32 = 1825;
/// Default validity of a leaf certificate, in days.
const DEFAULT_LEAF_DAYS: u32 = 90;

/// PKI helper for private-worker: CAs, orchestrator and worker certificates,
/// the CSR flow, inspection.
#[derive(Debug, Parser)]
#[command(name = "certs-tool", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a self-signed root CA: <out-dir>/ca.pem and ca.key.
    Ca {
        /// Directory to write to (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
        /// Common name of the CA.
        #[arg(long, default_value = "private-worker root CA")]
        cn: String,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_ROOT_DAYS)]
        days: u32,
    },
    /// Create an intermediate CA (path length 0) signed by a CA:
    /// <out-dir>/intermediate.pem (its chain without the root) and intermediate.key.
    Intermediate {
        #[command(flatten)]
        ca: CaFiles,
        /// Directory to write to (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
        /// Common name of the intermediate.
        #[arg(long, default_value = "private-worker intermediate CA")]
        cn: String,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_INTERMEDIATE_DAYS)]
        days: u32,
    },
    /// Issue an orchestrator (TLS server) certificate: <out-dir>/<name>.pem
    /// (leaf + intermediates) and <name>.key.
    Server {
        #[command(flatten)]
        ca: CaFiles,
        /// DNS name the orchestrator answers to (repeatable).
        #[arg(long = "dns", value_name = "NAME", num_args = 1.., required_unless_present = "ip")]
        dns: Vec<String>,
        /// IP address the orchestrator answers to (repeatable).
        #[arg(long = "ip", value_name = "IP", num_args = 1..)]
        ip: Vec<IpAddr>,
        /// Directory to write to (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
        /// Base name of the files, also the certificate's common name.
        #[arg(long, default_value = "orchestrator")]
        name: String,
        /// Validity in days (capped at the CA's expiry).
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
        days: u32,
    },
    /// Issue a worker (TLS client) certificate with a new key made here:
    /// <out-dir>/<name>.pem (leaf + intermediates) and <name>.key.
    /// In production prefer `csr` on the worker host and `sign-csr` here.
    Worker {
        #[command(flatten)]
        ca: CaFiles,
        /// The worker identity, e.g. spiffe://example.org/worker/crm-1.
        #[arg(long)]
        identity: String,
        /// Directory to write to (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
        /// Base name of the files.
        #[arg(long, default_value = "worker")]
        name: String,
        /// Validity in days (capped at the CA's expiry).
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
        days: u32,
    },
    /// Create an Ed25519 approver key pair: <out-dir>/<id>.key (the
    /// approver's signing key, mode 0600; never give it to the
    /// orchestrator) and <out-dir>/<id>.pub (trusted by workers'
    /// `[approvals] keys` and the orchestrator's). Refuses to replace an
    /// existing key.
    ApproverKey {
        /// The key id approvals carry, e.g. approvals-2026-12.
        #[arg(long)]
        id: String,
        /// Directory to write to (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// On the worker host: create a key and a CSR for an identity:
    /// <out-dir>/<name>.csr (send it to the CA) and <name>.key (keep it here).
    Csr {
        /// The worker identity, e.g. spiffe://example.org/worker/crm-1.
        #[arg(long)]
        identity: String,
        /// Directory to write to (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
        /// Base name of the files.
        #[arg(long, default_value = "worker")]
        name: String,
    },
    /// Sign a worker CSR: writes the chain the worker presents (leaf +
    /// intermediates) to --out. The CA sets every usage; the CSR supplies
    /// only the key and the identity.
    SignCsr {
        #[command(flatten)]
        ca: CaFiles,
        /// The CSR file (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the certificate chain.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days (capped at the CA's expiry).
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
        days: u32,
    },
    /// Re-issue a certificate for its existing key: reads --cert for its
    /// identity (a worker's URI SAN, or a server's names), signs a new
    /// certificate for the key in --key (a worker's through a CSR made with
    /// that key) and replaces --cert atomically (temporary file, then
    /// rename). The key file is not touched. A worker or orchestrator that
    /// polls its files takes the new certificate without a restart.
    Renew {
        #[command(flatten)]
        ca: CaFiles,
        /// The certificate (chain) file to renew; replaced in place.
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (kept).
        #[arg(long)]
        key: PathBuf,
        /// Validity in days (capped at the CA's expiry).
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
        days: u32,
    },
    /// Print every certificate of a PEM file.
    Inspect {
        /// The PEM file.
        file: PathBuf,
    },
    /// Write a complete development PKI: root, intermediate, orchestrator
    /// and worker certificates.
    Dev {
        /// Directory to write to (created if missing).
        #[arg(long, default_value = dev::DEFAULT_OUT_DIR)]
        out_dir: PathBuf,
        /// Trust domain of the worker identities.
        #[arg(long, default_value = dev::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Worker id (repeatable); identity spiffe://<trust-domain>/worker/<id>.
        #[arg(long = "worker", value_name = "ID", default_value = dev::DEFAULT_WORKER_ID)]
        workers: Vec<String>,
        /// Orchestrator DNS name (repeatable); default localhost and orchestrator.local.
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// Orchestrator IP address (repeatable); default 127.0.0.1 and ::1.
        #[arg(long = "ip", value_name = "IP")]
        ip: Vec<IpAddr>,
        /// Validity of every certificate, in days.
        #[arg(long, default_value_t = dev::DEFAULT_VALIDITY_DAYS)]
        days: u32,
    },
}

/// The CA that signs.
#[derive(Debug, clap::Args)]
struct CaFiles {
    /// CA certificate (PEM; may be followed by its chain without the root).
    #[arg(long)]
    ca_cert: PathBuf,
    /// CA private key (PEM).
    #[arg(long)]
    ca_key: PathBuf,
}

impl CaFiles {
    fn load(&self) -> Result<CertificateAuthority, CertError> {
        let cert = read_pem(&self.ca_cert)?;
        let key = read_pem(&self.ca_key)?;
        CertificateAuthority::from_pem(&cert, &key).map_err(|e| {
            // Name the file the problem is in.
            let path = match e {
                CertError::MalformedKey(_) | CertError::KeyMismatch => &self.ca_key,
                _ => &self.ca_cert,
            };
            e.in_file(path)
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("certs-tool: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ca { out_dir, cn, days } => {
            let ca = CertificateAuthority::new_root(&cn, days)?;
            create_dir(&out_dir)?;
            public(
                &out_dir.join("ca.pem"),
                ca.cert_pem(),
                "root CA certificate",
            )?;
            private(&out_dir.join("ca.key"), &ca.key_pem(), "root CA key")?;
        }
        Command::Intermediate {
            ca,
            out_dir,
            cn,
            days,
        } => {
            let parent = ca.load()?;
            let intermediate = parent.new_intermediate(&cn, days)?;
            create_dir(&out_dir)?;
            public(
                &out_dir.join("intermediate.pem"),
                &intermediate.chain_pem(),
                "intermediate CA certificate, followed by its chain without the root",
            )?;
            private(
                &out_dir.join("intermediate.key"),
                &intermediate.key_pem(),
                "intermediate CA key",
            )?;
        }
        Command::Server {
            ca,
            dns,
            ip,
            out_dir,
            name,
            days,
        } => {
            let ca = ca.load()?;
            let issued = ca.issue_server(&ServerCertRequest {
                common_name: name.clone(),
                dns_names: dns,
                ip_addresses: ip,
                validity_days: days,
            })?;
            write_issued(&out_dir, &name, &issued, "server")?;
        }
        Command::Worker {
            ca,
            identity,
            out_dir,
            name,
            days,
        } => {
            let ca = ca.load()?;
            let issued = ca.issue_worker(&WorkerCertRequest {
                identity: identity.clone(),
                validity_days: days,
            })?;
            write_issued(&out_dir, &name, &issued, "worker")?;
            println!("worker identity: {identity}");
        }
        Command::ApproverKey { id, out_dir } => {
            if let Err(rule) = private_worker_proto::check_id(&id) {
                anyhow::bail!("--id {rule} (1 to 128 bytes of A-Z a-z 0-9 . _ - :)");
            }
            let (key, public) = certs_tool::approver::write_approver_key(&out_dir, &id)?;
            println!(
                "wrote {} (approver signing key, mode 0600: keep it with the approver only)",
                key.display()
            );
            println!("wrote {} (approver public key)", public.display());
            println!(
                "trust it on each worker:\n  [approvals]\n  keys = [{{ id = \"{id}\", public_key = \"{}\" }}]",
                public.display()
            );
        }
        Command::Csr {
            identity,
            out_dir,
            name,
        } => {
            let csr = create_worker_csr(&identity)?;
            create_dir(&out_dir)?;
            let csr_path = out_dir.join(format!("{name}.csr"));
            public(&csr_path, &csr.csr_pem, "certificate signing request")?;
            private(
                &out_dir.join(format!("{name}.key")),
                &csr.key_pem,
                "worker private key",
            )?;
            println!(
                "the private key stays on this host: send only {} to the CA",
                csr_path.display()
            );
        }
        Command::SignCsr { ca, csr, out, days } => {
            let ca = ca.load()?;
            let csr_pem = read_pem(&csr)?;
            let cert_pem = ca
                .sign_worker_csr(&csr_pem, days)
                .map_err(|e| e.in_file(&csr))?;
            public(
                &out,
                &ca.presented_chain(&cert_pem),
                "worker certificate chain (leaf + intermediates)",
            )?;
            let info = inspect_pem(&cert_pem)?;
            if let Some(leaf) = info.first() {
                println!("worker identity: {}", leaf.uris.join(", "));
            }
        }
        Command::Renew {
            ca,
            cert,
            key,
            days,
        } => {
            let ca = ca.load()?;
            let renewed = certs_tool::renew::renew_files(&cert, &key, &ca, days)?;
            let what = match &renewed.kind {
                certs_tool::renew::RenewedKind::Worker(identity) => {
                    format!("worker certificate of {identity}")
                }
                certs_tool::renew::RenewedKind::Server(names) => {
                    format!("server certificate for {}", names.join(", "))
                }
            };
            println!("renewed the {what} in {} (same key)", cert.display());
            println!(
                "serial {} -> {}, valid until {}",
                renewed.old_serial, renewed.new_serial, renewed.not_after
            );
            println!(
                "a running worker or orchestrator takes it at its next [tls] reload_interval poll"
            );
        }
        Command::Inspect { file } => {
            let text = read_pem(&file)?;
            let infos = inspect_pem(&text).map_err(|e| CertError::from(e).in_file(&file))?;
            let count = infos.len();
            for (i, info) in infos.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                println!("certificate {} of {count} in {}", i + 1, file.display());
                println!("{info}");
            }
        }
        Command::Dev {
            out_dir,
            trust_domain,
            workers,
            dns,
            ip,
            days,
        } => {
            // Names given on the command line replace both default lists: a
            // certificate for exactly the names asked for.
            let defaults = DevOptions::default();
            let (server_dns, server_ips) = if dns.is_empty() && ip.is_empty() {
                (defaults.server_dns, defaults.server_ips)
            } else {
                (dns, ip)
            };
            let opts = DevOptions {
                out_dir,
                trust_domain,
                worker_ids: workers,
                server_dns,
                server_ips,
                validity_days: days,
            };
            let bundle = dev::write_dev_bundle(&opts)?;
            for file in bundle.files() {
                let is_key = file.extension().is_some_and(|e| e == "key");
                let note = if is_key {
                    " (private key, mode 0600)"
                } else {
                    ""
                };
                println!("wrote {}{note}", file.display());
            }
            println!("trust anchor (both sides): {}", bundle.ca_cert.display());
            for (identity, cert, _) in &bundle.workers {
                println!("worker identity: {identity} ({})", cert.display());
            }
        }
    }
    Ok(())
}

fn write_issued(out_dir: &Path, name: &str, issued: &IssuedCert, kind: &str) -> anyhow::Result<()> {
    create_dir(out_dir)?;
    public(
        &out_dir.join(format!("{name}.pem")),
        &issued.chain_pem,
        &format!("{kind} certificate chain (leaf + intermediates)"),
    )?;
    private(
        &out_dir.join(format!("{name}.key")),
        &issued.key_pem,
        &format!("{kind} private key"),
    )
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))
}

fn public(path: &Path, pem: &str, what: &str) -> anyhow::Result<()> {
    write_public(path, pem)?;
    println!("wrote {} ({what})", path.display());
    Ok(())
}

fn private(path: &Path, pem: &str, what: &str) -> anyhow::Result<()> {
    write_private_key(path, pem)?;
    println!("wrote {} ({what}, mode 0600)", path.display());
    Ok(())
}
