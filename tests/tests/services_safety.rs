//! The services-agent's safety end to end: Git credentials read from a file that never show in argv, logs or RPC
//! answers (a real Git HTTP server with basic auth), and a commit mounting the host's /etc refused before anything
//! stops. Knows the agent's config format and gRPC API; nothing of its internals.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use agent_core::identity::Role;
use anyhow::{ensure, Context, Result};
use strata_tests::fixtures::cmd;
use strata_tests::fixtures::docker::DockerEngine;
use strata_tests::harness::base_config;
use strata_tests::serviceslab::{hub_compose, ids, running, spoke_compose, Lab, DOMAIN, HUB_ADDRESS};

/// A git smart-HTTP server on loopback for one test: Basic authentication against one `USER:PASSWORD`, then
/// `git http-backend` (the real CGI program) serving the repositories under `root`. It records every
/// Authorization header it was sent, so the test sees the credentials reach the server.
struct GitHttp {
    addr: SocketAddr,
    authorizations: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { A[(n >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
        }
    }
    out
}

impl GitHttp {
    fn start(root: PathBuf, user_pass: &str) -> Result<GitHttp> {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let want = format!("Basic {}", base64(user_pass.as_bytes()));
        let authorizations = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, stopping) = (authorizations.clone(), stop.clone());
        let serve = move |stream: std::net::TcpStream| -> Result<()> {
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut request = String::new();
            reader.read_line(&mut request)?;
            let mut headers = BTreeMap::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line)?;
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let mut parts = request.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let mut body = Vec::new();
            if let Some(n) = headers.get("content-length") {
                body.resize(n.parse()?, 0);
                reader.read_exact(&mut body)?;
            } else if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size)?;
                    let n = usize::from_str_radix(size.trim(), 16)?;
                    let mut chunk = vec![0; n + 2];
                    reader.read_exact(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            }
            let mut out = stream;
            let auth = headers.get("authorization").cloned().unwrap_or_default();
            seen.lock().unwrap().push(auth.clone());
            if auth != want {
                out.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"stacks\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                return Ok(());
            }
            let mut cgi = Command::new("git")
                .arg("http-backend")
                .env("GIT_PROJECT_ROOT", &root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("GATEWAY_INTERFACE", "CGI/1.1")
                .env("REQUEST_METHOD", method)
                .env("PATH_INFO", path)
                .env("QUERY_STRING", query)
                .env("CONTENT_TYPE", headers.get("content-type").map_or("", String::as_str))
                .env("CONTENT_LENGTH", body.len().to_string())
                .env("HTTP_CONTENT_ENCODING", headers.get("content-encoding").map_or("", String::as_str))
                .env("REMOTE_USER", "bot")
                .env("REMOTE_ADDR", "127.0.0.1")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            cgi.stdin.take().context("stdin")?.write_all(&body)?;
            let reply = cgi.wait_with_output()?.stdout;
            let split = reply.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
            let split = split.or_else(|| reply.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
            let (head_len, sep) = split.context("CGI reply without headers")?;
            let head = String::from_utf8_lossy(&reply[..head_len]).to_string();
            let content = &reply[head_len + sep..];
            let mut status = "200 OK".to_string();
            let mut response = String::new();
            for line in head.lines() {
                match line.split_once(':') {
                    Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
                    Some(_) => response.push_str(&format!("{}\r\n", line.trim_end())),
                    None => {}
                }
            }
            out.write_all(
                format!(
                    "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    content.len()
                )
                .as_bytes(),
            )?;
            out.write_all(content)?;
            Ok(())
        };
        let thread = std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = serve(stream) {
                            eprintln!("git http test server: {e:#}");
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(GitHttp { addr, authorizations, stop, thread: Some(thread) })
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Watches every process's argv (`/proc/*/cmdline`) until stopped; returns the command lines containing `needle`
/// and how many git processes it saw (so that a watch that saw nothing is not taken for a clean one).
struct ArgvWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, usize)>,
}

impl ArgvWatch {
    fn start(needle: &'static str, git_marker: String) -> ArgvWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut leaks, mut gits) = (Vec::new(), std::collections::BTreeSet::new());
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(raw) = std::fs::read(p.path().join("cmdline")) else { continue };
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    if line.contains(needle) {
                        leaks.push(line.clone());
                    }
                    if line.contains("git") && line.contains(&git_marker) {
                        gits.insert(p.file_name().to_string_lossy().to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (leaks, gits.len())
        });
        ArgvWatch { stop, thread }
    }

    fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Git credentials over http: from `credentials_file` through GIT_ASKPASS, they reach the server (a real git
/// smart-HTTP server, `git http-backend` behind Basic authentication) and never appear in any process's argv during
/// the sync, in `.git/config`, in the agent's log (at debug level, where every argv is logged) or in ListServices,
/// also when the server refuses them. A token in the `repo` URL itself is refused by `check` and `run`, naming the
/// key and `credentials_file`, without printing the token.
#[tokio::test(flavor = "multi_thread")]
async fn git_credentials_come_from_a_file_and_never_show_in_argv_logs_or_rpc_answers() -> Result<()> {
    const TOKEN: &str = "ghp_Str4taT0kenNeverShown";
    const WRONG: &str = "ghp_Wr0ngT0kenNeverShown";
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    let first = lab.origin.commit("hub")?;
    let root = lab.dir.path().join("served");
    std::fs::create_dir(&root)?;
    cmd::run(
        Command::new("git").arg("clone").arg("-q").arg("--bare").arg(&lab.origin.dir).arg(root.join("stacks.git")),
    )?;
    let server = GitHttp::start(root, &format!("bot:{TOKEN}"))?;
    let url = format!("http://{}/stacks.git", server.addr);

    // A token in the URL: refused by `check` (exit 78) and by `run`, naming the key, never showing the token.
    let (cert, key) = lab.pki.issue(Role::ServicesAgent, "services1")?;
    let mut text = base_config(&lab.dir.path().join("state-refused"), &lab.pki.ca(), &cert, &key);
    text.push_str(&format!(
        "[stacks]\nrepo = \"http://bot:{TOKEN}@{}/stacks.git\"\ncheckout_dir = \"co\"\n[hub]\nstack = \"p\"\n\
         network = \"hub\"\ndomain = \"{DOMAIN}\"\naddress = \"{HUB_ADDRESS}\"\n",
        server.addr
    ));
    let refused = lab.dir.path().join("refused.toml");
    std::fs::write(&refused, text)?;
    for sub in ["check", "run"] {
        let out = Command::new(strata_tests::harness::bin("services-agent")?)
            .args([sub, "--config"])
            .arg(&refused)
            .output()?;
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(78), "{sub}: {all}");
        assert!(all.contains("key `stacks.repo`") && all.contains("stacks.credentials_file"), "{sub}: {all}");
        assert!(!all.contains(TOKEN), "{sub} printed the token: {all}");
    }

    // The token in a 0600 file; the agent logs every argv it runs (debug).
    let creds = lab.dir.path().join("git-credentials");
    std::fs::write(&creds, format!("bot:{TOKEN}\n"))?;
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    lab.repo = Some((url.clone(), Some(creds.clone())));
    lab.env = vec![("RUST_LOG", "debug")];
    let watch = ArgvWatch::start(TOKEN, server.addr.to_string());
    lab.start(&[])?;
    let r = lab.sync().await?;
    let proxy = lab.wait_service("proxy", Duration::from_secs(20), running).await?;
    let (leaks, gits) = watch.finish();
    ensure!(r.errors.is_empty(), "{r:?}\n{}", lab.agent().logs());
    assert_eq!((r.commit.as_str(), proxy.deployed_commit.as_str()), (first.as_str(), first.as_str()));
    assert!(leaks.is_empty(), "the token showed in argv: {leaks:?}");
    assert!(gits > 0, "the watch saw no git process talking to {}", server.addr);
    let sent = server.authorizations.lock().unwrap().clone();
    let want = format!("Basic {}", base64(format!("bot:{TOKEN}").as_bytes()));
    assert!(sent.contains(&want), "the server never got the credentials: {sent:?}");
    let git_config = std::fs::read_to_string(lab.dir.path().join("checkout/.git/config"))?;
    assert!(git_config.contains(&url) && !git_config.contains(TOKEN), "{git_config}");

    // The server refuses the credentials now: the error reaches ListServices and the log, neither shows a token.
    std::fs::write(&creds, format!("bot:{WRONG}\n"))?;
    let watch = ArgvWatch::start(WRONG, server.addr.to_string());
    let r = lab.sync().await?;
    let (leaks, gits) = watch.finish();
    let err = r.errors.get(&lab.name("proxy")).context("a refused fetch is an error")?.clone();
    assert!(err.contains("git fetch of branch main failed") && err.contains("Authentication failed"), "{err}");
    assert!(leaks.is_empty() && gits > 0, "argv: {leaks:?} ({gits} git processes seen)");
    let listed = format!("{:?}", lab.services().await?);
    assert!(listed.contains("Authentication failed"), "{listed}");
    let logs = lab.agent().logs();
    assert!(logs.contains("GIT_ASKPASS") || logs.contains("fetch"), "the debug log shows the git commands: {logs}");
    for secret in [TOKEN, WRONG] {
        for (what, text) in
            [("ListServices", &listed), ("the agent log", &logs), ("the sync answer", &format!("{r:?}"))]
        {
            assert!(!text.contains(secret), "{what} shows a token: {text}");
        }
    }
    Ok(())
}

/// Mounts of a running container, `SOURCE:DESTINATION` (from `docker inspect`).
fn mounts(engine: &DockerEngine, container: &str) -> Result<Vec<String>> {
    let out = engine.docker(["inspect", "-f", "{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}", container])?;
    Ok(out.split_whitespace().map(String::from).collect())
}

/// Write access to the stacks repo is not root on the VM: a commit bind-mounting `/etc` (as written, and through a
/// symlink committed in the stack's directory) is refused by the deploy gate before anything stops: the running
/// stack keeps its containers, the refusal shows in ListServices and `labctl services ls` like a broken commit.
/// The operator permits it by naming the rule in the service's `allow`.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_mounting_host_etc_is_refused_before_anything_stops() -> Result<()> {
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    let data = "    volumes: [\"./data:/data\"]\n";
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &spoke_compose(&hub, data))?;
    lab.origin.write(&format!("{}/data/hello", lab.name("a")), "hi\n")?;
    let first = lab.origin.commit("a spoke with its own data directory")?;
    lab.start(&[("a", &[], &[])])?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty(), "a bind of the stack's own directory passes the gate: {:?}", r.errors);
    let a = lab.wait_service("a", Duration::from_secs(10), running).await?;
    let a_ids = ids(&a);
    let started = lab.engine.docker(["inspect", "-f", "{{.State.StartedAt}}", &a.containers[0].name])?;

    // /etc as written, then through a symlink in the stack's directory: each refused before `up`.
    let etc = spoke_compose(&hub, "    volumes: [\"/etc:/host-etc:ro\"]\n");
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &etc)?;
    lab.origin.commit("a: mount the host's /etc")?;
    let link = lab.origin.dir.join(lab.name("a")).join("innocent");
    std::os::unix::fs::symlink("/etc", &link)?;
    let mut refusals = Vec::new();
    for (what, compose) in [
        ("as written", etc.clone()),
        ("through a symlink", spoke_compose(&hub, "    volumes: [\"./innocent:/host-etc:ro\"]\n")),
    ] {
        lab.origin.write(&format!("{}/docker-compose.yml", lab.name("a")), &compose)?;
        lab.origin.commit(&format!("a: /etc {what}"))?;
        let r = lab.sync().await?;
        assert!(r.redeployed.is_empty(), "{what}: {r:?}");
        let err = r.errors.get(&lab.name("a")).with_context(|| format!("{what}: no refusal in {r:?}"))?.clone();
        assert!(
            err.contains("refused before deploy") && err.contains("host-mount") && err.contains("/etc"),
            "{what}: {err}"
        );
        assert!(err.contains("the running stack was left as it was") && err.contains("allow"), "{what}: {err}");
        let a = lab.service("a").await?;
        assert!(running(&a) && ids(&a) == a_ids, "{what}: the running stack was touched: {a:?}");
        assert_eq!(a.deployed_commit, first, "{what}");
        assert!(a.error.contains("refused before deploy"), "{what}: {a:?}");
        let now = lab.engine.docker(["inspect", "-f", "{{.State.StartedAt}}", &a.containers[0].name])?;
        assert_eq!(now, started, "{what}: the container was restarted");
        assert!(!mounts(&lab.engine, &a.containers[0].name)?.iter().any(|m| m.starts_with("/etc")), "{what}");
        refusals.push(err);
    }
    assert!(refusals[1].contains("(really /etc)"), "{}", refusals[1]);

    // The operator sees it in `labctl services ls`.
    let (cert, key) = lab.pki.issue(Role::Admin, "alice")?;
    let inventory = lab.dir.path().join("labctl.toml");
    strata_tests::harness::write_inventory(&inventory, &lab.pki.ca(), &cert, &key, &[lab.agent()])?;
    let out = Command::new(strata_tests::harness::bin("labctl")?)
        .arg("--config")
        .arg(&inventory)
        .args(["services", "ls"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&lab.name("a")) && text.contains("refused before deploy"), "{text}");

    // The operator says so: `allow = ["host-mount"]`, and the same commit (the symlink) deploys.
    lab.start(&[("a", &[], &["host-mount"])])?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty(), "{:?}", r.errors);
    let a = lab.wait_service("a", Duration::from_secs(20), |s| running(s) && ids(s) != a_ids).await?;
    assert!(mounts(&lab.engine, &a.containers[0].name)?.iter().any(|m| m.ends_with(":/host-etc")), "allowed: {a:?}");
    Ok(())
}
