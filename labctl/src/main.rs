//! The labctl binary: parses the command line and glues the labctl library together. Owns exit codes and output.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agent_core::identity::Role;
use agent_core::tls::TlsMaterial;
use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use labctl::inventory::Inventory;
use labctl::{pki, status};

#[derive(Parser)]
#[command(name = "labctl", version, about = "Control a Strata homelab: PKI, status, and each agent's commands")]
struct Cli {
    /// Inventory file (default: $LABCTL_CONFIG, else ~/.config/strata/labctl.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of a table (read commands).
    #[arg(long, global = true)]
    json: bool,
    /// Per-agent timeout in seconds.
    #[arg(long, global = true, default_value_t = 5)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The lab's certificate authority.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Ask every agent in the inventory how it is doing. Exit 0: all healthy; 2: all answered, some degraded
    /// (answering but unable to do part of their job: the HEALTH column says why); 1: some unreachable (wins over 2).
    Status,
    /// The dns-agent: records, blocklist, query log, stats.
    #[command(subcommand)]
    Dns(labctl::dns::DnsCmd),
    /// The services-agent: stacks, lifecycle, logs, sync, audit, backups, restores, checks, drills.
    #[command(subcommand)]
    Services(labctl::services::ServicesCmd),
    /// VMs on the host-agent: list, start/stop, backups, restore, drill.
    #[command(subcommand)]
    Vm(labctl::vm::VmCmd),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create DIR/ca.pem and DIR/ca.key (ECDSA P-256, 10 years).
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/NAME.pem and DIR/NAME.key for ROLE, signed by DIR's CA.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        role: Role,
        #[arg(long)]
        name: String,
        /// A DNS name or IP address the holder serves on (repeatable; an agent needs at least one).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Validity in days (default: 90 for agents, 397 for admin and viewer; never past the CA's expiry).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        days: Option<u32>,
        #[arg(long)]
        force: bool,
    },
    /// Describe a certificate: identity, SANs, validity, serial.
    Show { file: PathBuf },
    /// Revoke DIR/NAME.pem, or a certificate by SERIAL (hex, as `pki show` prints it): adds it to DIR/crl.pem.
    /// Copy crl.pem to every agent's `[grpc] crl`: agents re-read it when it changes and refuse the certificate.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        /// A certificate name in DIR, or a serial number.
        target: String,
    },
    /// Renew DIR/NAME.pem: a new key and certificate, same identity and SANs (the old one stays valid until it
    /// expires; revoke it to end it sooner).
    Renew {
        #[arg(long)]
        dir: PathBuf,
        name: String,
        /// Validity in days (default: 90 for agents, 397 for admin and viewer).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        days: Option<u32>,
    },
}

/// `labctl … | head`: once the reader is gone `println!` panics on the broken pipe. Exit quietly instead, with the
/// status a shell gives a process killed by SIGPIPE (128 + 13); any other panic is reported as usual.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        // println! says "failed printing to stdout: Broken pipe"; clap_complete's writer panics with "BrokenPipe".
        if msg.contains("Broken pipe") || msg.contains("BrokenPipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = Cli::parse();
    agent_core::tls::install_crypto_provider();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Our messages already carry their cause inline: print each part of the chain once.
            eprintln!("error: {}", agent_core::tls::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Pki(PkiCmd::Init { dir, domain, force }) => {
            let f = pki::init(&dir, &domain, force)?;
            println!("created ca for domain {}: {} {}", f.domain, f.cert.display(), f.key.display());
        }
        Cmd::Pki(PkiCmd::Issue { dir, role, name, sans, days, force }) => {
            let days = days.unwrap_or_else(|| pki::default_days(role));
            let f = pki::issue(&dir, &pki::IssueSpec::days(role, &name, &sans, days), force)?;
            println!("issued {}: {} {} (valid {days} days)", f.identity, f.cert.display(), f.key.display());
        }
        Cmd::Pki(PkiCmd::Revoke { dir, target }) => {
            let r = pki::revoke(&dir, &target)?;
            let who = r.identity.map(|i| format!(" ({i})")).unwrap_or_default();
            let state = if r.newly { "revoked" } else { "already revoked" };
            println!(
                "{state}: serial {}{who}; {} lists {} certificate(s): copy it to every agent's [grpc] crl",
                r.serial,
                r.crl.display(),
                r.listed
            );
        }
        Cmd::Pki(PkiCmd::Renew { dir, name, days }) => {
            let f = pki::renew(&dir, &name, days)?;
            println!("renewed {}: {} {}", f.identity, f.cert.display(), f.key.display());
        }
        Cmd::Pki(PkiCmd::Show { file }) => {
            let info = pki::show(&file)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("identity:   {}", info.identity.as_deref().unwrap_or("-"));
                println!("subject:    {}\nissuer:     {}", info.subject, info.issuer);
                println!("dns sans:   {}\nip sans:    {}", info.dns_sans.join(", "), info.ip_sans.join(", "));
                println!(
                    "valid:      {} .. {}{}",
                    date(info.not_before),
                    date(info.not_after),
                    if info.is_ca { " (ca)" } else { "" }
                );
                println!("serial:     {}", info.serial);
            }
        }
        Cmd::Status => return status_cmd(cli.config, cli.json, Duration::from_secs(cli.timeout)),
        Cmd::Services(cmd) => {
            let (inv, tls) = connect_material(cli.config)?;
            return runtime()?.block_on(labctl::services::run(cmd, &inv, &tls, cli.json));
        }
        Cmd::Vm(cmd) => {
            let (inv, tls) = connect_material(cli.config)?;
            return runtime()?.block_on(labctl::vm::run(cmd, &inv, &tls, cli.json));
        }
        Cmd::Dns(cmd) => {
            let (inv, tls) = connect_material(cli.config)?;
            return runtime()?.block_on(labctl::dns::run(cmd, &inv, &tls, cli.json));
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "labctl", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Unix seconds as an RFC 3339 UTC date-time.
fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// The inventory and the operator's TLS material it names, verified (key, chain to the inventory's `ca`, validity):
/// a wrong file is named here rather than as a handshake failure per agent.
fn connect_material(config: Option<PathBuf>) -> Result<(Inventory, TlsMaterial)> {
    let path = Inventory::locate(config.as_deref());
    let inv = Inventory::load(&path)?;
    let context = || format!("inventory {}", path.display());
    let tls = TlsMaterial::load(&inv.ca, &inv.cert, &inv.key).with_context(context)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for w in tls.verify(None, None, now).with_context(context)? {
        eprintln!("warning: {w}");
    }
    Ok((inv, tls))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn status_cmd(config: Option<PathBuf>, json: bool, timeout: Duration) -> Result<ExitCode> {
    let (inv, tls) = connect_material(config)?;
    let rows = runtime()?.block_on(status::collect(&inv, &tls, timeout));
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        print!("{}", status::render(&rows, now));
    }
    let (code, lines) = status::verdict(&rows);
    for l in lines {
        eprintln!("{l}");
    }
    Ok(ExitCode::from(code))
}
