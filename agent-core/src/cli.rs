//! The command line every agent shares (`run`, `check`, `install`, `service-file`, `uninstall`, `--version`) and the run loop around an agent:
//! logging, binding the listeners, readiness, signals and graceful drain. Knows no agent's domain.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{CommonConfig, ConfigError, EXIT_CONFIG};
use crate::conn::LoadedCrl;
use crate::credentials;
use crate::identity::Role;
use crate::install::{self, Platform, Privilege, ServiceSpec, UnitNeeds};
use crate::telemetry::{self, LogFormat};
use crate::tls::{TlsError, TlsMaterial};

#[derive(Debug, Parser)]
#[command(version)]
pub struct AgentCli {
    /// Log format.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub cmd: AgentCmd,
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Run the agent in the foreground.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config and exit: 0 when valid, 78 when not.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Install the agent as a service (systemd unit, or LaunchDaemon on macOS).
    Install {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the service file instead of writing it.
        #[arg(long)]
        dry_run: bool,
        /// Write under this directory instead of / (nothing is activated then).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Install even when the unit's sandbox hides the binary, config or state dir from the service (warns).
        #[arg(long)]
        force: bool,
    },
    /// Print the service file for a binary installed at `--exec` reading `--config`, without reading either (for
    /// packagers: `cargo xtask dist` ships its output). Example: `dns-agent service-file --exec /usr/bin/dns-agent
    /// --config /etc/strata/dns-agent.toml`.
    ServiceFile {
        /// Absolute path the service will run the agent binary from.
        #[arg(long)]
        exec: PathBuf,
        /// Absolute path of the config file the service will pass to `run`.
        #[arg(long)]
        config: PathBuf,
        /// Which service manager's file: systemd (a unit) or launchd (a plist).
        #[arg(long, value_parser = ["systemd", "launchd"], default_value = "systemd")]
        platform: String,
        /// The `[grpc] key` the unit hands over with `LoadCredential=` (required for agents that run as their own
        /// user: dns-agent).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Stop and remove the installed service.
    Uninstall {
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

/// What an agent starts with, prepared before the agent library runs: its listeners, and its TLS material and CRL,
/// each read once and verified before anything was bound.
pub struct Listeners {
    pub grpc: tokio::net::TcpListener,
    pub metrics: tokio::net::TcpListener,
    pub tls: TlsMaterial,
    /// `[grpc] crl`, when configured (the server re-reads it only when the file changes).
    pub crl: Option<LoadedCrl>,
}

/// Resolves when the process is asked to stop (SIGTERM or SIGINT). Cheap to clone.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// A shutdown that fires when `trigger` is sent `true` (for tests and embedding).
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Shutdown(rx))
    }

    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

pub type RunFuture = Pin<Box<dyn Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send>>;

/// One agent, as the shared command line sees it.
pub struct AgentDef<C> {
    /// Binary name, e.g. `dns-agent`.
    pub agent: &'static str,
    pub role: Role,
    pub description: &'static str,
    /// Port of `[metrics] listen` when only an address is given.
    pub default_metrics_port: u16,
    /// Who the service runs as: root, its own system user (its `[grpc] key` and `secrets` are then handed over with
    /// `LoadCredential=`), or a dynamic user.
    pub privilege: Privilege,
    /// Its unit's ordering after other units and its kill mode (what the agent drives, the installer does not know).
    pub unit: UnitNeeds,
    /// Files the agent reads beyond the common ones (config key and path), for `install`'s sandbox check.
    pub reads: fn(&C) -> Vec<(&'static str, PathBuf)>,
    /// Root-only files beyond the `[grpc] key` (credential name, configured path): handed over with
    /// `LoadCredential=` too when the agent runs as its own user; the agent reads them through `credentials`.
    pub secrets: fn(&C) -> Vec<(&'static str, PathBuf)>,
    /// The agent re-reads its config on SIGHUP itself; otherwise SIGHUP is logged and ignored (never fatal).
    pub reloads_on_sighup: bool,
    pub load: fn(&Path) -> Result<C, ConfigError>,
    pub common: fn(&C) -> &CommonConfig,
    pub run: fn(C, Listeners, Shutdown) -> RunFuture,
}

/// The whole `main` of an agent.
pub fn main<C: Send + 'static>(def: AgentDef<C>) -> ExitCode {
    // `--version` and `--help` name the agent's binary, not this crate.
    let matches = <AgentCli as clap::CommandFactory>::command()
        .name(def.agent)
        .bin_name(def.agent)
        .about(def.description)
        .get_matches();
    let cli = <AgentCli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    telemetry::init_logging(cli.log_format);
    crate::tls::install_crypto_provider();
    match cli.cmd {
        AgentCmd::Check { config } => match (def.load)(&config) {
            Ok(cfg) => match verify_tls((def.common)(&cfg), def.role) {
                Ok((tls, _, warnings)) => {
                    for w in warnings {
                        eprintln!("warning: {w}");
                    }
                    println!("{}: ok (serving as {})", config.display(), tls.identity);
                    ExitCode::SUCCESS
                }
                Err(e) => tls_error(&config, &e),
            },
            Err(e) => config_error(&e),
        },
        AgentCmd::Run { config } => match (def.load)(&config) {
            // The certificate files are part of the config: a bad one is refused before anything is bound or
            // READY is sent, with the same exit code as `check`, so systemd does not restart-loop on it.
            Ok(cfg) => match verify_tls((def.common)(&cfg), def.role) {
                Ok((tls, crl, warnings)) => {
                    for w in warnings {
                        tracing::warn!("{w}");
                    }
                    run(def, cfg, tls, crl)
                }
                Err(e) => refused_run(tls_error(&config, &e)),
            },
            Err(e) => refused_run(config_error(&e)),
        },
        AgentCmd::Install { config, dry_run, root, force } => {
            let cfg = match (def.load)(&config) {
                Ok(cfg) => cfg,
                Err(e) => return config_error(&e),
            };
            let config = std::path::absolute(&config).unwrap_or(config);
            let common = (def.common)(&cfg);
            let mut secrets = vec![(credentials::GRPC_KEY, common.grpc.key.clone())];
            secrets.extend((def.secrets)(&cfg));
            let spec = spec(&def, config.clone(), secrets);
            let platform = Platform::current();
            let hidden = install::check_paths(
                &spec,
                platform,
                needed_paths(&spec, common, (def.reads)(&cfg), (def.secrets)(&cfg)),
            );
            for h in &hidden {
                let verdict = if force { "warning" } else { "error" };
                eprintln!("{verdict}: {}: {h}", spec.unit_name());
            }
            if !hidden.is_empty() {
                if !force {
                    eprintln!("error: not installing: the service could not start (--force installs anyway)");
                    return ExitCode::from(EXIT_CONFIG);
                }
                eprintln!("warning: installing anyway (--force)");
            }
            report(install::install(&spec, platform, &root, dry_run, &mut std::io::stdout()).map(drop))
        }
        AgentCmd::ServiceFile { exec, config, platform, key } => {
            if !exec.is_absolute() || !config.is_absolute() || key.as_ref().is_some_and(|k| !k.is_absolute()) {
                eprintln!("error: service-file: --exec, --config and --key must be absolute paths");
                return ExitCode::from(EXIT_CONFIG);
            }
            if def.privilege.unprivileged() && key.is_none() {
                let user = def.privilege.system_user().unwrap_or("a dynamic user");
                eprintln!(
                    "error: service-file: {} runs as {user} and cannot read its root-owned key: --key names the \
                     [grpc] key its unit hands over with LoadCredential=",
                    def.agent
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            let secrets = key.map(|k| (credentials::GRPC_KEY, k)).into_iter().collect();
            let spec = ServiceSpec { exec, ..spec(&def, config, secrets) };
            if let Err(e) = spec.validate() {
                eprintln!("error: service-file: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            let text = match platform.as_str() {
                "launchd" => install::launchd_plist(&spec),
                _ => install::systemd_unit(&spec),
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        AgentCmd::Uninstall { dry_run, root } => report(install::uninstall(
            &spec(&def, PathBuf::new(), vec![]),
            Platform::current(),
            &root,
            dry_run,
            &mut std::io::stdout(),
        )),
    }
}

/// The mTLS files named by the config, loaded once and verified the way peers will see them (key, chain, validity,
/// CA flags, role, the CRL). Returns the material, the CRL and the warnings.
fn verify_tls(common: &CommonConfig, role: Role) -> Result<(TlsMaterial, Option<LoadedCrl>, Vec<String>), TlsError> {
    let g = &common.grpc;
    let (key, handed_over) = credentials::resolve(credentials::GRPC_KEY, &g.key)?;
    if handed_over {
        tracing::info!(
            "[grpc] key: reading credential {} ({} is set) instead of {}",
            key.display(),
            credentials::DIRECTORY_ENV,
            g.key.display()
        );
    }
    let tls = TlsMaterial::load(&g.ca, &g.cert, &key)?;
    let crl = g.crl.as_deref().map(|p| LoadedCrl::load(p, &tls)).transpose()?;
    let warnings = tls.verify(Some(role), crl.as_ref().map(|c| &c.crls), crate::clock::now_unix())?;
    Ok((tls, crl, warnings))
}

fn tls_error(config: &Path, e: &TlsError) -> ExitCode {
    eprintln!("error: {}: {e}", config.display());
    ExitCode::from(EXIT_CONFIG)
}

/// The exit of `run` on a refused config: 78 (systemd's unit does not restart it), but 0 under the launchd plist,
/// whose `KeepAlive` restarts every non-zero exit and has no per-status exception.
fn refused_run(code: ExitCode) -> ExitCode {
    if std::env::var(crate::install::LAUNCHD_ENV).is_ok_and(|v| v == "launchd") {
        eprintln!("not restarting: fix the config, then `launchctl kickstart -k system/dev.strata.AGENT`");
        return ExitCode::SUCCESS;
    }
    code
}

/// The service of `def` reading `config`; `secrets` (credential name, path: the `[grpc] key` and the agent's own)
/// become credentials when the agent does not run as root.
fn spec<C>(def: &AgentDef<C>, config: PathBuf, secrets: Vec<(&'static str, PathBuf)>) -> ServiceSpec {
    let credentials = if def.privilege.unprivileged() {
        secrets.into_iter().map(|(name, path)| install::Credential { name: name.into(), path }).collect()
    } else {
        vec![]
    };
    ServiceSpec {
        agent: def.agent.to_string(),
        description: def.description.to_string(),
        exec: std::env::current_exe().unwrap_or_else(|_| PathBuf::from(format!("/usr/local/bin/{}", def.agent))),
        config,
        privilege: def.privilege,
        unit: def.unit,
        credentials,
    }
}

/// What the service must reach: its binary, config, state dir and TLS files (a key handed over as a credential is
/// read by systemd, outside the sandbox, and is left out), and the agent's own `reads`.
fn needed_paths(
    spec: &ServiceSpec,
    common: &CommonConfig,
    reads: Vec<(&'static str, PathBuf)>,
    secrets: Vec<(&'static str, PathBuf)>,
) -> Vec<(String, PathBuf, install::Access)> {
    use install::Access;
    let g = &common.grpc;
    let mut needed = vec![
        ("executable".to_owned(), spec.exec.clone(), Access::Execute),
        ("config".to_owned(), spec.config.clone(), Access::Read),
        ("state_dir".to_owned(), common.state_dir.clone(), Access::Write),
        ("[grpc] ca".to_owned(), g.ca.clone(), Access::Read),
        ("[grpc] cert".to_owned(), g.cert.clone(), Access::Read),
    ];
    if !spec.credentials.iter().any(|c| c.path == g.key) {
        needed.push(("[grpc] key".to_owned(), g.key.clone(), Access::Read));
    }
    for (what, path) in secrets {
        if !spec.credentials.iter().any(|c| c.path == path) {
            needed.push((what.to_owned(), path, Access::Read));
        }
    }
    if let Some(crl) = &g.crl {
        needed.push(("[grpc] crl".to_owned(), crl.clone(), Access::Read));
    }
    needed.extend(reads.into_iter().map(|(what, path)| (what.to_owned(), path, Access::Read)));
    needed
}

fn report(r: Result<(), install::InstallError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: invalid config: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn run<C: Send + 'static>(def: AgentDef<C>, cfg: C, tls: TlsMaterial, crl: Option<LoadedCrl>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = rt.block_on(async move {
        let common = (def.common)(&cfg);
        let grpc = telemetry::bind("grpc", common.grpc.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (grpc.listen): {e}", common.grpc.listen))?;
        let metrics = telemetry::bind("metrics", common.metrics_listen)
            .await
            .map_err(|e| format!("cannot listen on {} (metrics.listen): {e}", common.metrics_listen))?;
        let (stop_tx, shutdown) = Shutdown::new();
        let reloads = def.reloads_on_sighup;
        tokio::spawn(async move {
            wait_for_signal(reloads).await;
            tracing::info!("shutdown requested: draining");
            let _ = stop_tx.send(true);
        });
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        tracing::info!(agent = def.agent, version = env!("CARGO_PKG_VERSION"), "started");
        (def.run)(cfg, Listeners { grpc, metrics, tls, crl }, shutdown).await
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("fatal: {e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Calls `reload` on every SIGHUP (systemd's `reload`, `launchctl kill HUP`) until `shutdown`: the one way an agent
/// that sets `reloads_on_sighup` reloads on the signal. `reload` logs its own outcome (applied, or refused with the
/// running config kept); it runs on the runtime, so it may spawn.
pub fn reload_on_sighup<F>(shutdown: Shutdown, reload: F)
where
    F: Fn() + Send + 'static,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP: reload only over gRPC");
            return;
        }
    };
    tokio::spawn(async move {
        let mut stop = std::pin::pin!(shutdown.wait());
        loop {
            tokio::select! {
                _ = &mut stop => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the config");
                    reload();
                }
            }
        }
    });
}

/// Waits for SIGTERM or SIGINT. SIGHUP (systemd's `reload`) must never kill an agent: agents that reload handle it
/// themselves; for the others it is logged and ignored.
async fn wait_for_signal(reloads: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) {
        (Ok(mut term), Ok(mut int), Ok(mut hup)) => loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => if !reloads {
                    tracing::warn!("SIGHUP received: this agent does not reload its config; restart it to apply changes")
                },
            }
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
