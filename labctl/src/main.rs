//! The labctl binary: parses the command line (`labctl::cli`) and glues the labctl library together. Owns which
//! failure gets which exit code, and where errors are printed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agent_core::tls::TlsMaterial;
use anyhow::{Context, Result};
use clap::Parser;
use labctl::cli::{Cli, Cmd, PkiCmd, EXIT_CONFIG, EXIT_ERROR};
use labctl::inventory::Inventory;
use labctl::output::{self, Opts};
use labctl::{pki, status};

/// labctl's own configuration is missing or invalid (exit 78): the inventory, or the TLS files it names.
#[derive(Debug)]
struct BadConfig(anyhow::Error);

impl std::fmt::Display for BadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", agent_core::tls::error_chain(self.0.as_ref()))
    }
}

impl std::error::Error for BadConfig {}

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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version exit 0; a usage error exits 1 (2 is reserved for a degraded lab), as a JSON
            // document too when `--json` was asked for.
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if std::env::args_os().skip(1).any(|a| a == "--json") {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or_default();
                println!("{}", output::error_document(first.trim_start_matches("error: ")));
            }
            let _ = e.print();
            return ExitCode::from(EXIT_ERROR);
        }
    };
    agent_core::tls::install_crypto_provider();
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = if e.downcast_ref::<BadConfig>().is_some()
                || e.downcast_ref::<agent_core::config::ConfigError>().is_some()
            {
                EXIT_CONFIG
            } else {
                EXIT_ERROR
            };
            // Our messages already carry their cause inline: print each part of the chain once, on one line.
            let message = agent_core::tls::error_chain(e.as_ref()).replace('\n', " ");
            if json {
                println!("{}", output::error_document(&message));
            }
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let opts = Opts { json: cli.json, verbose: cli.verbose, timeout: cli.timeout.map(Duration::from_secs) };
    let path = |p: &std::path::Path| p.display().to_string();
    match cli.cmd {
        Cmd::Pki(PkiCmd::Init { dir, domain, force }) => {
            let f = pki::init(&dir, &domain, force)?;
            let value = serde_json::json!({ "domain": f.domain, "cert": path(&f.cert), "key": path(&f.key) });
            let text = format!("created ca for domain {}: {} {}", f.domain, f.cert.display(), f.key.display());
            output::result(&opts, &value, text)?;
        }
        Cmd::Pki(PkiCmd::Issue { dir, role, name, sans, days, force }) => {
            let days = days.unwrap_or_else(|| pki::default_days(role));
            let f = pki::issue(&dir, &pki::IssueSpec::days(role, &name, &sans, days), force)?;
            let value = serde_json::json!({
                "identity": f.identity.to_string(), "cert": path(&f.cert), "key": path(&f.key), "days": days,
            });
            let text = format!("issued {}: {} {} (valid {days} days)", f.identity, f.cert.display(), f.key.display());
            output::result(&opts, &value, text)?;
        }
        Cmd::Pki(PkiCmd::Revoke { dir, target }) => {
            let r = pki::revoke(&dir, &target)?;
            let value = serde_json::json!({
                "serial": r.serial, "identity": r.identity, "newly": r.newly, "crl": path(&r.crl), "listed": r.listed,
            });
            let who = r.identity.map(|i| format!(" ({i})")).unwrap_or_default();
            let state = if r.newly { "revoked" } else { "already revoked" };
            let text = format!(
                "{state}: serial {}{who}; {} lists {} certificate(s): copy it to every agent's [grpc] crl",
                r.serial,
                r.crl.display(),
                r.listed
            );
            output::result(&opts, &value, text)?;
        }
        Cmd::Pki(PkiCmd::Renew { dir, name, days }) => {
            let f = pki::renew(&dir, &name, days)?;
            let value =
                serde_json::json!({ "identity": f.identity.to_string(), "cert": path(&f.cert), "key": path(&f.key) });
            output::result(&opts, &value, format!("renewed {}: {} {}", f.identity, f.cert.display(), f.key.display()))?;
        }
        Cmd::Pki(PkiCmd::Show { file }) => {
            let info = pki::show(&file)?;
            if opts.json {
                output::json(&info)?;
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
        Cmd::Status => {
            let timeout = opts.timeout.unwrap_or(labctl::client::DEFAULT_CONNECT);
            return status_cmd(cli.config, cli.json, timeout);
        }
        Cmd::Services(cmd) => {
            let (inv, tls) = connect_material(cli.config)?;
            return runtime()?.block_on(labctl::services::run(cmd, &inv, &tls, &opts));
        }
        Cmd::Vm(cmd) => {
            let (inv, tls) = connect_material(cli.config)?;
            return runtime()?.block_on(labctl::vm::run(cmd, &inv, &tls, &opts));
        }
        Cmd::Dns(cmd) => {
            let (inv, tls) = connect_material(cli.config)?;
            return runtime()?.block_on(labctl::dns::run(cmd, &inv, &tls, &opts));
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut labctl::cli::command(), "labctl", &mut std::io::stdout());
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
/// a wrong file is named here rather than as a handshake failure per agent. Any failure here is a [`BadConfig`].
fn connect_material(config: Option<PathBuf>) -> Result<(Inventory, TlsMaterial)> {
    let load = || -> Result<(Inventory, TlsMaterial)> {
        let path = Inventory::locate(config.as_deref());
        let inv = Inventory::load(&path)?;
        let context = || format!("inventory {}", path.display());
        let tls = TlsMaterial::load(&inv.ca, &inv.cert, &inv.key).with_context(context)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for w in tls.verify(None, None, now).with_context(context)? {
            eprintln!("warning: {w}");
        }
        Ok((inv, tls))
    };
    load().map_err(|e| BadConfig(e).into())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn status_cmd(config: Option<PathBuf>, json: bool, timeout: Duration) -> Result<ExitCode> {
    let (inv, tls) = connect_material(config)?;
    let rows = runtime()?.block_on(status::collect(&inv, &tls, timeout));
    if json {
        output::json(&rows)?;
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
