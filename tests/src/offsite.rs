//! The off-site host of issue 13: a real OpenSSH server (Debian's `sshd`, started here with its own config and
//! host key) in its own network namespace, reached from the root namespace over a shaped WAN link (20 ms each way,
//! so 40 ms round trip, and 50 Mbit/s each way: see [`Shape::OFFSITE`]). Root login by key only, and only with a
//! forced command: the agent's key runs `borg serve --append-only --restrict-to-path DISK`, where DISK (a temp dir
//! of this machine) is the off-site host's disk. The same repositories are reachable from the trusted side by
//! their local path. Also: Borg clients for both sides, and borg's documented append-only recovery
//! ([`rollback_to_transaction`], [`forget_client_state`]).
//! Knows `sshd`, `ssh`, `ssh-keygen` and borg 1.2's CLI and repository layout; nothing about the agents, their
//! config or gRPC API. Asserts nothing itself (tests do).

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::fixtures::cmd;
use crate::fixtures::netns::Netns;
use crate::fixtures::require_root;
use crate::fixtures::wanlink::{Shape, WanLink};

/// The off-site host. Dropping it kills every process in its namespace (sshd, its sessions, `borg serve`), then
/// removes the link, the namespace and the temp dir; sshd's log is printed when the test panicked.
pub struct OffsiteHost {
    sshd: Option<Child>,
    link: WanLink,
    ns: Netns,
    disk: PathBuf,
    agent_key: ClientKey,
    dir: TempDir,
}

/// A client key pair authorised on the off-site host with a forced command.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// The private key file (mode 0600).
    pub private: PathBuf,
    /// The `authorized_keys` line that admits it.
    pub authorized: String,
}

impl OffsiteHost {
    /// Starts the host: namespace, shaped link, host key, the agent's append-only key, `known_hosts`, sshd; returns
    /// once sshd answers on `10.213.X.2:22` from the root namespace.
    pub fn start() -> Result<OffsiteHost> {
        require_root("the off-site host (network namespace, sshd as root)")?;
        cmd::require("sshd", "openssh-server")?;
        cmd::require("ssh", "openssh-client")?;
        cmd::require("ssh-keygen", "openssh-client")?;
        cmd::require("borg", "borgbackup")?;
        let ns = Netns::new("offsite")?;
        let link = WanLink::new(&ns, Shape::OFFSITE)?;
        let dir = tempfile::Builder::new().prefix("strata-offsite-").tempdir()?;
        let disk = dir.path().join("remote-disk");
        fs::create_dir(&disk)?;
        // borg serve compares resolved paths with --restrict-to-path: hand out the resolved one.
        let disk = disk.canonicalize()?;
        for d in ["host", "keys", "clients"] {
            fs::create_dir(dir.path().join(d))?;
        }
        fs::write(dir.path().join("authorized_keys"), "")?;
        fs::write(dir.path().join("empty_known_hosts"), "")?;
        let agent_key = generate_key(&dir.path().join("keys"), "agent")?;
        let mut host = OffsiteHost { sshd: None, link, ns, disk, agent_key: agent_key.clone(), dir };
        host.agent_key = host.authorize(agent_key, &host.append_only_command())?;
        host.new_host_key()?;
        host.write_known_hosts()?;
        host.write_sshd_config()?;
        host.start_sshd()?;
        Ok(host)
    }

    /// The off-site host's address, `10.213.X.2` (sshd listens on port 22 there).
    pub fn addr(&self) -> Ipv4Addr {
        self.link.remote_addr()
    }

    /// The shaped link (byte counters, cut/restore).
    pub fn link(&self) -> &WanLink {
        &self.link
    }

    /// The namespace the host lives in.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The off-site host's disk: every repository lives under it, and the agent's key is restricted to it.
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// The repository `name` seen from the trusted side: its local path.
    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.disk.join(name)
    }

    /// `ssh://root@10.213.X.2:22/DISK/NAME`, borg's URL of the repository over SSH.
    pub fn url(&self, name: &str) -> String {
        format!("ssh://root@{}:22{}", self.addr(), self.repo_path(name).display())
    }

    /// `root@10.213.X.2:/DISK/NAME`, the scp-style form of [`OffsiteHost::url`].
    pub fn scp_url(&self, name: &str) -> String {
        format!("root@{}:{}", self.addr(), self.repo_path(name).display())
    }

    /// The agent's private key (ed25519, mode 0600), admitted only with the append-only forced command.
    pub fn key_path(&self) -> &Path {
        &self.agent_key.private
    }

    /// A `known_hosts` file holding the host's current key (`10.213.X.2 ssh-ed25519 …`: port 22 takes the plain
    /// host form, other ports `[host]:port`). Not rewritten by [`OffsiteHost::rotate_host_key`].
    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// An empty `known_hosts` file (the "unknown host" case).
    pub fn empty_known_hosts_path(&self) -> PathBuf {
        self.dir.path().join("empty_known_hosts")
    }

    /// The forced command of the agent's key.
    pub fn append_only_command(&self) -> String {
        format!("borg serve --append-only --restrict-to-path {}", self.disk.display())
    }

    /// The ssh command line for `BORG_RSH` with the agent's key and [`OffsiteHost::known_hosts_path`].
    pub fn ssh_command(&self) -> String {
        ssh_command_with(self.key_path(), &self.known_hosts_path())
    }

    /// Admits a new key whose only use is `forced_command` (e.g. a trusted, non-append-only `borg serve`, or `cat`
    /// for a raw transfer). Takes effect at once (sshd reads `authorized_keys` at each login).
    pub fn authorize_key(&self, label: &str, forced_command: &str) -> Result<ClientKey> {
        let key = generate_key(&self.dir.path().join("keys"), label)?;
        self.authorize(key, forced_command)
    }

    /// A key admitted with `borg serve --restrict-to-path DISK`: full borg access, no append-only.
    pub fn authorize_full_borg_key(&self) -> Result<ClientKey> {
        self.authorize_key("full-borg", &format!("borg serve --restrict-to-path {}", self.disk.display()))
    }

    /// Gives the host a new host key and restarts sshd: [`OffsiteHost::known_hosts_path`] no longer matches (what a
    /// client sees after a reinstall of the host, or from a man in the middle). Existing sessions live on.
    pub fn rotate_host_key(&mut self) -> Result<()> {
        self.stop_sshd();
        self.new_host_key()?;
        self.start_sshd()
    }

    /// Cuts the link (every packet lost, both ways; no carrier change on either end). See [`WanLink::cut`].
    pub fn link_down(&self) {
        self.link.cut();
    }

    /// Restores the link after [`OffsiteHost::link_down`].
    pub fn link_up(&self) {
        self.link.restore();
    }

    /// `borg init --encryption=repokey` of repository `name` from the trusted side (local path); returns the
    /// trusted side's client (its own base dir, no SSH).
    pub fn trusted_init(&self, name: &str, passphrase: &str) -> Result<BorgClient> {
        let client = self.client(&format!("trusted-{name}"), passphrase, None)?;
        cmd::run(client.command().args(["init", "--encryption=repokey"]).arg(self.repo_path(name)))
            .with_context(|| format!("borg init of the off-site repository {name} (trusted side)"))?;
        Ok(client)
    }

    /// A Borg client playing the agent: its own base dir, `BORG_RSH` = [`OffsiteHost::ssh_command`].
    pub fn agent_client(&self, label: &str, passphrase: &str) -> Result<BorgClient> {
        self.client(&format!("agent-{label}"), passphrase, Some(self.ssh_command()))
    }

    /// A Borg client with its own base dir and the given `BORG_RSH` (`None`: local repositories only).
    pub fn client(&self, label: &str, passphrase: &str, rsh: Option<String>) -> Result<BorgClient> {
        BorgClient::new(&self.dir.path().join("clients").join(label), passphrase, rsh)
    }

    /// sshd's log so far (`-e`: everything it would send to syslog).
    pub fn sshd_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn authorize(&self, key: ClientKey, forced_command: &str) -> Result<ClientKey> {
        ensure!(!forced_command.contains('"'), "a forced command may not contain a double quote: {forced_command}");
        let public = fs::read_to_string(key.private.with_extension("pub"))?;
        let line = format!("command=\"{forced_command}\",restrict {}", public.trim());
        let path = self.dir.path().join("authorized_keys");
        let mut text = fs::read_to_string(&path)?;
        text.push_str(&line);
        text.push('\n');
        fs::write(&path, text)?;
        Ok(ClientKey { authorized: line, ..key })
    }

    fn host_key_path(&self) -> PathBuf {
        self.dir.path().join("host").join("ssh_host_ed25519_key")
    }

    fn new_host_key(&self) -> Result<()> {
        let key = self.host_key_path();
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(key.with_extension("pub"));
        cmd::run(
            Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "offsite-host", "-f"]).arg(&key),
        )
        .context("generating the off-site host's key")?;
        Ok(())
    }

    fn write_known_hosts(&self) -> Result<()> {
        self.write_known_hosts_to(&self.known_hosts_path())
    }

    /// Writes a `known_hosts` file at `path` trusting the host's current key (what an operator does after
    /// checking a changed key).
    pub fn write_known_hosts_to(&self, path: &Path) -> Result<()> {
        let public = fs::read_to_string(self.host_key_path().with_extension("pub"))?;
        let mut fields = public.split_whitespace();
        let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
            bail!("unexpected host public key: {public}")
        };
        fs::write(path, format!("{} {kind} {blob}\n", self.addr()))?;
        Ok(())
    }

    fn write_sshd_config(&self) -> Result<()> {
        // ClientAlive 2 s × 3: the host drops a session whose client went silent within about 8 s, so a cut link
        // does not leave `borg serve` holding the repository's lock for long. With 5 s × 3 the session outlived
        // the client's own keepalive timeout (15 to 20 s) and the lock stayed until the host's TCP retransmission
        // met the client's reset, about 20 s after the link came back.
        let config = format!(
            "ListenAddress {addr}:22\n\
             HostKey {host_key}\n\
             PidFile none\n\
             AuthorizedKeysFile {authorized}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin forced-commands-only\n\
             UsePAM no\n\
             StrictModes no\n\
             ClientAliveInterval 2\n\
             ClientAliveCountMax 3\n\
             LogLevel VERBOSE\n",
            addr = self.addr(),
            host_key = self.host_key_path().display(),
            authorized = self.dir.path().join("authorized_keys").display(),
        );
        fs::write(self.dir.path().join("sshd_config"), config)?;
        Ok(())
    }

    fn start_sshd(&mut self) -> Result<()> {
        // sshd refuses to start without its privilege separation directory (systemd creates it for the system
        // service; nothing does here).
        fs::create_dir_all("/run/sshd")?;
        let sshd = cmd::require("sshd", "openssh-server")?;
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("sshd.log"))?;
        let mut c = self.ns.command(&sshd);
        c.args(["-D", "-e", "-f"]).arg(self.dir.path().join("sshd_config"));
        c.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = c.spawn().with_context(|| format!("starting `{}`", cmd::describe(&c)))?;
        self.sshd = Some(child);
        let addr = SocketAddr::from((self.addr(), 22));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.sshd.as_mut().map(Child::try_wait).transpose()?.flatten() {
                bail!("sshd exited ({status}) before answering:\n{}", self.sshd_log());
            }
            if answers_ssh(addr) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("sshd did not answer on {addr} within 15 s:\n{}", self.sshd_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_sshd(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OffsiteHost {
    fn drop(&mut self) {
        self.stop_sshd();
        // Everything else on the host: sshd's session processes and their `borg serve`, the link's socat.
        if let Ok(pids) = cmd::run_args("ip", ["netns", "pids", self.ns.name()]) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- off-site sshd log ----\n{}\n---- end ----", self.sshd_log());
        }
    }
}

/// Whether something speaking SSH answers at `addr` (it sends its `SSH-2.0-…` banner first).
fn answers_ssh(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = [0u8; 4];
    s.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

/// An ed25519 key pair `DIR/LABEL` (+ `.pub`) without passphrase, private key mode 0600.
fn generate_key(dir: &Path, label: &str) -> Result<ClientKey> {
    let private = dir.join(label);
    cmd::run(
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C"]).arg(label).arg("-f").arg(&private),
    )
    .with_context(|| format!("generating the client key {label}"))?;
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600))?;
    Ok(ClientKey { private, authorized: String::new() })
}

/// The ssh command line for `BORG_RSH`: only this key, only this `known_hosts`, strict host key checking, never a
/// prompt, a 10 s connect timeout, and a dead link noticed within 15 s (keepalives every 5 s, 3 missed).
/// `-F /dev/null`: no user or system client config applies.
pub fn ssh_command_with(key: &Path, known_hosts: &Path) -> String {
    format!(
        "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o BatchMode=yes \
         -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -F /dev/null",
        key.display(),
        known_hosts.display()
    )
}

/// A Borg client: its own `BORG_BASE_DIR` (cache, security dir, keys), its passphrase by `BORG_PASSCOMMAND` from a
/// 0600 file (never on argv), and optionally `BORG_RSH`.
#[derive(Debug, Clone)]
pub struct BorgClient {
    base: PathBuf,
    passphrase_file: PathBuf,
    rsh: Option<String>,
}

impl BorgClient {
    /// Creates `dir` with `dir/base` and `dir/passphrase`.
    pub fn new(dir: &Path, passphrase: &str, rsh: Option<String>) -> Result<BorgClient> {
        let base = dir.join("base");
        fs::create_dir_all(&base)?;
        let passphrase_file = dir.join("passphrase");
        fs::write(&passphrase_file, passphrase)?;
        fs::set_permissions(&passphrase_file, fs::Permissions::from_mode(0o600))?;
        Ok(BorgClient { base, passphrase_file, rsh })
    }

    /// `BORG_BASE_DIR` of this client.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The same client with another `BORG_RSH`.
    pub fn with_rsh(&self, rsh: String) -> BorgClient {
        BorgClient { rsh: Some(rsh), ..self.clone() }
    }

    /// A `borg` command with this client's environment (inherited Borg variables removed).
    pub fn command(&self) -> Command {
        let mut c = Command::new("borg");
        for v in ["BORG_PASSPHRASE", "BORG_PASSPHRASE_FD", "BORG_REPO", "BORG_RSH", "BORG_REMOTE_PATH"] {
            c.env_remove(v);
        }
        c.env("BORG_BASE_DIR", &self.base)
            .env("BORG_PASSCOMMAND", format!("cat {}", self.passphrase_file.display()))
            .env("BORG_DISPLAY_PASSPHRASE", "no");
        if let Some(rsh) = &self.rsh {
            c.env("BORG_RSH", rsh);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Archive names, oldest first (`borg list --json REPO`: checkpoint archives are hidden).
    pub fn archives(&self, repo: &str) -> Result<Vec<String>> {
        self.list(repo, &[])
    }

    /// Archive names including checkpoint archives (`NAME.checkpoint`), oldest first.
    pub fn archives_with_checkpoints(&self, repo: &str) -> Result<Vec<String>> {
        self.list(repo, &["--consider-checkpoints"])
    }

    fn list(&self, repo: &str, extra: &[&str]) -> Result<Vec<String>> {
        let out = cmd::run(self.command().args(["list", "--lock-wait", "60", "--json"]).args(extra).arg(repo))?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parsing `borg list --json`")?;
        let list = v["archives"].as_array().context("`borg list --json` has no \"archives\" array")?;
        Ok(list.iter().filter_map(|a| a["name"].as_str().map(String::from)).collect())
    }
}

/// One line of a repository's `transactions` file (written by borg in append-only mode only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The transaction id: the number of the last segment file of the transaction.
    pub id: u64,
    /// The UTC time borg recorded, as written (`2016-03-31T15:53:27.383532`).
    pub utc: String,
}

/// Parses a `transactions` file: `transaction N, UTC time T` per line.
pub fn parse_transactions(text: &str) -> Result<Vec<Transaction>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (id, utc) = l
                .strip_prefix("transaction ")
                .and_then(|rest| rest.split_once(", UTC time "))
                .with_context(|| format!("not a borg transaction line: {l:?}"))?;
            let id = id.parse().with_context(|| format!("bad transaction id in {l:?}"))?;
            Ok(Transaction { id, utc: utc.trim().to_string() })
        })
        .collect()
}

/// The transactions of the repository at `repo` (empty when it has no `transactions` file: it was never written
/// in append-only mode).
pub fn transactions(repo: &Path) -> Result<Vec<Transaction>> {
    match fs::read_to_string(repo.join("transactions")) {
        Ok(text) => parse_transactions(&text).with_context(|| format!("{}/transactions", repo.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}/transactions", repo.display())),
    }
}

/// The numbers of the segment files of the repository at `repo` (`data/D/N`), ascending.
pub fn segments(repo: &Path) -> Result<Vec<u64>> {
    Ok(segment_files(repo)?.into_iter().map(|(n, _)| n).collect())
}

fn segment_files(repo: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let data = repo.join("data");
    let mut out = Vec::new();
    for d in fs::read_dir(&data).with_context(|| format!("reading {}", data.display()))? {
        let d = d?.path();
        if !d.is_dir() {
            continue;
        }
        for f in fs::read_dir(&d)? {
            let f = f?.path();
            if let Some(n) = f.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok()) {
                out.push((n, f));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What [`rollback_to_transaction`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// Segment files removed (the transactions after the kept one).
    pub segments: Vec<u64>,
    /// `index.N`, `hints.N` and `integrity.N` files removed (borg rebuilds them from the segments).
    pub files: Vec<String>,
}

/// Borg 1.2's documented recovery of an append-only repository ("Append-only mode" in borg's usage notes), run on
/// the trusted side with no borg process using the repository: keep transaction `txn` (a line of the
/// `transactions` file; its id is the number of its last segment file) and everything before it; remove the
/// `hints.N`, `index.N` and `integrity.N` files, then every segment file numbered above `txn`. Borg rebuilds the
/// index from the segments at the next open. Clients that used the repository since must then forget their cache
/// and the manifest timestamp they saw ([`forget_client_state`]). Keep a hard-link copy (`cp -al`) first when the
/// removed transactions are to be examined.
pub fn rollback_to_transaction(repo: &Path, txn: u64) -> Result<Rollback> {
    let log = transactions(repo)?;
    ensure!(
        log.iter().any(|t| t.id == txn),
        "transaction {txn} is not in {}/transactions (it lists {:?})",
        repo.display(),
        log.iter().map(|t| t.id).collect::<Vec<_>>()
    );
    let lock = repo.join("lock.exclusive");
    ensure!(
        !lock.exists(),
        "repository {} is locked ({} exists): stop every borg using it first",
        repo.display(),
        lock.display()
    );
    let mut files = Vec::new();
    for e in fs::read_dir(repo)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let expendable = ["index.", "hints.", "integrity."]
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(|n| n.parse::<u64>().is_ok()));
        if expendable {
            fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            files.push(name);
        }
    }
    files.sort();
    let mut removed = Vec::new();
    for (n, path) in segment_files(repo)? {
        if n > txn {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(n);
        }
    }
    Ok(Rollback { segments: removed, files })
}

/// The repository id (`id = …` in the repository's `config`).
pub fn repository_id(repo: &Path) -> Result<String> {
    let config =
        fs::read_to_string(repo.join("config")).with_context(|| format!("reading {}/config", repo.display()))?;
    config
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("id").map(str::trim).and_then(|r| r.strip_prefix('=')).map(|v| v.trim().to_string())
        })
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{}/config has no repository id", repo.display()))
}

/// The client side of the rollback, for a client whose `BORG_BASE_DIR` is `base_dir`: drops its cache of
/// repository `repo_id` (what `borg delete --cache-only` removes) and the manifest timestamp its security dir
/// remembers, both newer than the rolled-back repository. Returns the paths removed.
pub fn forget_client_state(base_dir: &Path, repo_id: &str) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let cache = base_dir.join(".cache/borg").join(repo_id);
    if cache.exists() {
        fs::remove_dir_all(&cache).with_context(|| format!("removing {}", cache.display()))?;
        removed.push(cache);
    }
    let stamp = base_dir.join(".config/borg/security").join(repo_id).join("manifest-timestamp");
    if stamp.exists() {
        fs::remove_file(&stamp).with_context(|| format!("removing {}", stamp.display()))?;
        removed.push(stamp);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_parse_as_borg_writes_them() {
        let text = "transaction 1, UTC time 2016-03-31T15:53:27.383532\n\
                    transaction 5, UTC time 2016-03-31T15:53:52.588922\n";
        let t = parse_transactions(text).unwrap();
        assert_eq!(t.iter().map(|t| t.id).collect::<Vec<_>>(), vec![1, 5]);
        assert_eq!(t[1].utc, "2016-03-31T15:53:52.588922");
        assert!(parse_transactions("transaction x, UTC time y\n").is_err());
        assert!(parse_transactions("hello\n").is_err());
        assert!(parse_transactions("").unwrap().is_empty());
    }

    #[test]
    fn rollback_removes_later_segments_and_the_expendable_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        fs::create_dir_all(repo.join("data/0")).unwrap();
        for n in [1, 2, 3, 5, 6, 7, 9] {
            fs::write(repo.join(format!("data/0/{n}")), "x").unwrap();
        }
        for f in ["config", "README", "index.9", "hints.9", "integrity.9", "nonce"] {
            fs::write(repo.join(f), "x").unwrap();
        }
        fs::write(
            repo.join("transactions"),
            "transaction 3, UTC time a\ntransaction 6, UTC time b\ntransaction 9, UTC time c\n",
        )
        .unwrap();
        assert!(rollback_to_transaction(repo, 4).is_err(), "4 is not a transaction");
        let r = rollback_to_transaction(repo, 6).unwrap();
        assert_eq!(r.segments, vec![7, 9]);
        assert_eq!(r.files, vec!["hints.9", "index.9", "integrity.9"]);
        assert_eq!(segments(repo).unwrap(), vec![1, 2, 3, 5, 6]);
        for f in ["config", "README", "nonce", "transactions"] {
            assert!(repo.join(f).exists(), "{f} kept");
        }
    }

    #[test]
    fn repository_id_is_read_from_the_config() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config"), "[repository]\nversion = 1\nid = 57d6c1d5\nappend_only = 0\n").unwrap();
        assert_eq!(repository_id(dir.path()).unwrap(), "57d6c1d5");
    }
}
