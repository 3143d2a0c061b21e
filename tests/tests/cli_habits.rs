//! Issue 18 item 4, one CLI habit set, on the real binaries: every labctl command takes `--json` and `--timeout` and
//! gives up on a hung agent, its JSON documents have their documented shape, every binary prints its name and version.

use std::path::Path;
use std::time::{Duration, Instant};

use agent_core::identity::Role;
use anyhow::{ensure, Context, Result};
use strata_tests::binrun::{run, Ran, EXIT_CONFIG};
use strata_tests::harness::{base_config, write_inventory, AgentKind, AgentProc, Pki};

// ---------------------------------------------------------------------------------------------------------------
// Issue 18 item 4: one CLI habit set.

/// Exit code of a failed labctl command (a failed call, an unreachable or timed-out agent, a usage error).
const EXIT_ERROR: i32 = 1;

/// Arguments that satisfy a leaf command's parser, derived from the clap tree: a value for every positional and
/// every required option (the first possible value when there is a list, a path under `tmp` for paths).
fn leaf_args(path: &[String], tmp: &Path) -> Result<Vec<String>> {
    let mut cmd = labctl::cli::command();
    for name in path {
        cmd = cmd.find_subcommand(name).cloned().with_context(|| format!("no subcommand {name} in {path:?}"))?;
    }
    let mut args: Vec<String> = path.to_vec();
    for a in cmd.get_arguments() {
        let id = a.get_id().as_str();
        if a.is_global_set() || matches!(id, "help" | "version") || !(a.is_positional() || a.is_required_set()) {
            continue;
        }
        let value = match (a.get_possible_values().first(), id) {
            (Some(v), _) => v.get_name().to_string(),
            (None, "dir" | "to" | "file") => tmp.join(id).display().to_string(),
            (None, "role") => Role::Admin.as_str().to_string(),
            (None, _) => "x".to_string(),
        };
        if let Some(long) = a.get_long() {
            args.push(format!("--{long}"));
        }
        args.push(value);
    }
    Ok(args)
}

/// A TCP listener that accepts connections and holds them without ever answering: a hung agent.
struct HungAgent {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl HungAgent {
    fn start() -> Result<HungAgent> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            held.len()
        });
        Ok(HungAgent { addr, stop, thread: Some(thread) })
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops accepting; the number of connections it held.
    fn stop(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for HungAgent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The inventory keys a leaf command talks to (none for the local ones: `pki …`, `completions`).
fn agents_of(path: &[String]) -> &'static [&'static str] {
    match path[0].as_str() {
        "dns" => &["dns"],
        "services" => &["services"],
        "vm" => &["host"],
        "status" => &["host", "dns", "services"],
        _ => &[],
    }
}

/// Issue 18 item 4: `--timeout` reached only `status` (`labctl --timeout 2 dns records` against a hung agent waited
/// 30 s). Every leaf command of the clap tree (so a new one cannot be forgotten) accepts `--json` and `--timeout`;
/// each that talks to an agent gives up on a hung one (accepts, never answers) within the 2 s asked, with exit 1,
/// a one-line error naming the agent's address on stderr and a JSON document on stdout.
#[test]
fn every_labctl_command_takes_json_and_timeout_and_gives_up_on_a_hung_agent() -> Result<()> {
    let pki = Pki::new()?;
    let (cert, key_file) = pki.issue(Role::Admin, "alice")?;
    let hung = HungAgent::start()?;
    let dir = tempfile::tempdir()?;
    let inv = dir.path().join("inv.toml");
    let url = hung.url();
    std::fs::write(
        &inv,
        format!(
            "ca = {:?}\ncert = {:?}\nkey = {:?}\n[agents]\nhost = \"{url}\"\ndns = \"{url}\"\nservices = \"{url}\"\n",
            pki.ca(),
            cert,
            key_file
        ),
    )?;
    let leaves = labctl::cli::leaves();
    ensure!(leaves.len() >= 30, "only {} leaf commands: {leaves:?}", leaves.len());
    // Every command at once (each waits ~2 s on the hung agent); each timed from its own start.
    let runs: Vec<_> = leaves
        .iter()
        .map(|path| {
            let mut argv: Vec<String> =
                ["--config", &inv.display().to_string(), "--json", "--timeout", "2"].map(String::from).to_vec();
            argv.extend(leaf_args(path, &dir.path().join(path.join("-")))?);
            let path = path.clone();
            Ok(std::thread::spawn(move || {
                let started = Instant::now();
                let ran = run("labctl", &argv);
                (path, argv, ran, started.elapsed())
            }))
        })
        .collect::<Result<_>>()?;
    let mut failures = Vec::new();
    let mut against_agents = 0;
    for t in runs {
        let (path, argv, ran, took) = t.join().map_err(|_| anyhow::anyhow!("runner thread panicked"))?;
        let ran = ran?;
        let name = path.join(" ");
        let mut fail = |why: String| failures.push(format!("labctl {}: {why}; took {took:?}; {ran}", argv.join(" ")));
        if ran.stderr.contains("try '--help'") {
            fail("refused the arguments".into());
            continue;
        }
        let agents = agents_of(&path);
        if agents.is_empty() {
            // Local: accepts the flags; a JSON document (result or error) on stdout, except completions' script.
            if name == "completions" {
                if ran.code != Some(0) || ran.stdout.is_empty() {
                    fail("want exit 0 and a script".into());
                }
            } else if serde_json::from_str::<serde_json::Value>(&ran.stdout).is_err() {
                fail("stdout is not one JSON document".into());
            }
            continue;
        }
        against_agents += 1;
        if ran.code != Some(EXIT_ERROR) || took > Duration::from_secs(6) {
            fail("want exit 1 within 6 s".into());
            continue;
        }
        let errors: Vec<&str> = ran.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        if name == "status" {
            // One JSON row per agent, each with its error; the table's verdict on stderr.
            let rows: Vec<serde_json::Value> = serde_json::from_str(&ran.stdout).unwrap_or_default();
            if rows.len() != 3 || !rows.iter().all(|r| r["error"].as_str().is_some_and(|e| e.contains(&url))) {
                fail("want three JSON rows with an error naming the address".into());
            }
            continue;
        }
        let doc: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
        let error = doc["error"].as_str().unwrap_or_default();
        let want = format!("{} ({url}): no connection and tls handshake within 2s", agents[0]);
        if !error.contains(&want) || errors.len() != 1 || !errors[0].contains(&want) {
            fail(format!("want {want:?} as {{\"error\"}} on stdout and as the one error line on stderr"));
        }
    }
    ensure!(failures.is_empty(), "{} of {} commands failed:\n{}", failures.len(), leaves.len(), failures.join("\n"));
    ensure!(against_agents >= 25, "only {against_agents} commands talk to agents");
    ensure!(hung.stop() > 0, "no command ever connected to the hung agent");
    Ok(())
}

/// Why `ran` is not the JSON document wanted (exit `code`; an object, or an array of objects, each with `keys`).
fn json_shape_failure(what: &str, ran: &Ran, code: i32, keys: &[&str], array: bool) -> Option<String> {
    let doc: Option<serde_json::Value> = serde_json::from_str(&ran.stdout).ok();
    let objects: Vec<serde_json::Value> = match (doc, array) {
        (Some(serde_json::Value::Array(a)), true) => a,
        (Some(v @ serde_json::Value::Object(_)), false) => vec![v],
        _ => return Some(format!("{what}: not a JSON {}; {ran}", if array { "array" } else { "object" })),
    };
    let missing: Vec<&str> =
        objects.iter().flat_map(|o| keys.iter().copied().filter(|k| o.get(*k).is_none())).collect();
    (ran.code != Some(code) || !missing.is_empty())
        .then(|| format!("{what}: want exit {code}, missing keys {missing:?}; {ran}"))
}

/// One labctl command against real agents and what its `--json` document must hold.
struct JsonCase {
    args: &'static [&'static str],
    code: i32,
    /// Keys every object must have (the document, or each element of an array document).
    keys: &'static [&'static str],
    array: bool,
}

/// Issue 18 item 4: `--json` gives one JSON document per command, writes included, with the documented shape
/// (README, "JSON output"); a failed call gives `{"error": …}` on stdout. Against a real dns-agent, host-agent and
/// services-agent, and the local `pki` commands.
#[test]
fn labctl_json_documents_have_their_documented_shape() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let (dns_cert, dns_key) = pki.issue(Role::DnsAgent, "dns1")?;
    let dns_config = dir.path().join("dns-agent.toml");
    std::fs::write(
        &dns_config,
        format!(
            "{}[dns]\nlisten = [\"127.0.0.1:0\"]\nquery_log = true\n[[zones]]\nname = \"lab.test\"\nrecords = [{{ name = \"nas\", type = \"A\", value = \"10.0.0.10\" }}]\n",
            base_config(&dir.path().join("dns-state"), &pki.ca(), &dns_cert, &dns_key)
        ),
    )?;
    let dns = AgentProc::start_with_config(AgentKind::Dns, &dns_config)?;
    let host = AgentProc::start(AgentKind::Host, &pki)?;
    let services = AgentProc::start(AgentKind::Services, &pki)?;
    let (cert, key_file) = pki.issue(Role::Admin, "alice")?;
    let inv = dir.path().join("inv.toml");
    write_inventory(&inv, &pki.ca(), &cert, &key_file, &[&dns, &host, &services])?;

    let record: &[&str] = &["name", "type", "value", "ttl", "owner"];
    let cases = [
        JsonCase { args: &["status"], code: 0, keys: &["agent", "address", "role", "health"], array: true },
        JsonCase { args: &["dns", "add", "t1.lab.test", "A", "10.0.0.9"], code: 0, keys: record, array: false },
        JsonCase { args: &["dns", "records"], code: 0, keys: record, array: true },
        JsonCase { args: &["dns", "rm", "t1.lab.test", "A"], code: 0, keys: &["deleted"], array: false },
        JsonCase { args: &["dns", "rm", "t1.lab.test", "A"], code: 1, keys: &["deleted"], array: false },
        JsonCase {
            args: &["dns", "stats"],
            code: 0,
            keys: &["queries_by_outcome", "cache_entries", "blocklist_entries"],
            array: false,
        },
        JsonCase { args: &["dns", "blocklist", "--refresh"], code: 0, keys: &["entries", "sources"], array: false },
        JsonCase { args: &["dns", "reload"], code: 0, keys: &["changed", "message"], array: false },
        JsonCase { args: &["dns", "log"], code: 0, keys: &[], array: true },
        JsonCase {
            args: &["dns", "zones"],
            code: 0,
            keys: &["agent", "zone", "role", "serial", "records", "last_transfer_kind", "lag_seconds", "serving"],
            array: true,
        },
        JsonCase { args: &["vm", "ls"], code: 0, keys: &[], array: true },
        JsonCase { args: &["vm", "start", "nosuch"], code: 1, keys: &["error"], array: false },
        JsonCase { args: &["services", "ls"], code: 0, keys: &[], array: true },
        JsonCase { args: &["services", "history"], code: 0, keys: &[], array: true },
        JsonCase { args: &["services", "up", "nosuch"], code: 1, keys: &["error"], array: false },
        JsonCase { args: &["services", "backup", "nosuch"], code: 1, keys: &["error"], array: false },
    ];
    let mut failures = Vec::new();
    let mut check = |what: String, ran: &Ran, code: i32, keys: &[&str], array: bool| {
        failures.extend(json_shape_failure(&what, ran, code, keys, array));
    };
    for c in &cases {
        let mut argv = vec!["--config".to_string(), inv.display().to_string(), "--json".to_string()];
        argv.extend(c.args.iter().map(|a| a.to_string()));
        let ran = run("labctl", &argv)?;
        check(format!("labctl {}", c.args.join(" ")), &ran, c.code, c.keys, c.array);
    }
    // The local pki commands, in order (each uses the files of the one before).
    let p = dir.path().join("pki");
    let ps = p.display().to_string();
    let pem = p.join("bob.pem").display().to_string();
    let files: &[&str] = &["identity", "cert", "key"];
    let pki_cases: [(Vec<&str>, &[&str]); 5] = [
        (vec!["init", "--dir", &ps, "--domain", "lab.test"], &["domain", "cert", "key"]),
        (vec!["issue", "--dir", &ps, "--role", "admin", "--name", "bob"], &["identity", "cert", "key", "days"]),
        (vec!["show", &pem], &["identity", "subject", "issuer", "not_after", "serial", "is_ca"]),
        (vec!["renew", "--dir", &ps, "bob"], files),
        (vec!["revoke", "--dir", &ps, "bob"], &["serial", "identity", "newly", "crl", "listed"]),
    ];
    for (args, keys) in pki_cases {
        let argv: Vec<&str> = ["--json", "pki"].into_iter().chain(args.iter().copied()).collect();
        let ran = run("labctl", &argv)?;
        check(format!("labctl {}", argv.join(" ")), &ran, 0, keys, false);
    }
    // A usage error is exit 1 (2 is reserved for a degraded lab) and a bad inventory is exit 78, as JSON too.
    let ran = run("labctl", ["--json", "dns", "records", "--no-such-flag"])?;
    check("labctl dns records --no-such-flag".into(), &ran, EXIT_ERROR, &["error"], false);
    let missing = dir.path().join("missing.toml");
    let ran = run("labctl", ["--json", "--config", &missing.display().to_string(), "vm", "ls"])?;
    check("labctl vm ls with a missing inventory".into(), &ran, EXIT_CONFIG, &["error"], false);
    ensure!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

/// Issue 18 item 4: `--version` on all four binaries, naming the binary (the agents said `agent-core 0.1.0`).
#[test]
fn every_binary_prints_its_own_name_and_version() -> Result<()> {
    let mut failures = Vec::new();
    for name in ["labctl", "host-agent", "dns-agent", "services-agent"] {
        let ran = run(name, ["--version"])?;
        let want = format!("{name} {}\n", env!("CARGO_PKG_VERSION"));
        if ran.code != Some(0) || ran.stdout != want {
            failures.push(format!("{name} --version: want {want:?}; {ran}"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
