//! The git CLI: cloning and fetching the stacks repository into the checkout directory, and reading which commit and
//! which directory trees it holds. Builds commands run through `agent_core::runner`; parses their output in pure
//! functions. Must not know compose, Docker or what a stack means beyond "a directory of the repo".
//!
//! Credentials of an http(s) repository come from a file (`[stacks] credentials_file`, `USER:PASSWORD` on its
//! first line) and reach git only through `GIT_ASKPASS`: git runs this agent's own binary with the prompt, which
//! prints the answer from the file ([`askpass`]). They never appear in argv (`/proc/PID/cmdline`), in
//! `.git/config`, in logs or in errors; every userinfo of a URL is masked in what this module reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::runner::{self, Cmd, RunError};

/// Clone and fetch may cross a slow network.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(300);
const LOCAL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git clone of the stacks repository failed: {0}")]
    Clone(RunError),
    #[error("git fetch of branch {branch} failed: {source}")]
    Fetch { branch: String, source: RunError },
    #[error("git: {0}")]
    Run(#[from] RunError),
    #[error("{dir}: exists and is not a git checkout; move it away or choose another stacks.checkout_dir")]
    NotACheckout { dir: PathBuf },
    #[error("git printed unexpected output: {0}")]
    Parse(String),
    #[error("credentials file {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
}

/// The environment variable naming the credentials file for [`askpass`]: set only for the git we run.
pub const ASKPASS_ENV: &str = "STRATA_GIT_CREDENTIALS_FILE";

/// A `USER:PASSWORD` pair read from a credentials file.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// Reads `USER:PASSWORD` from the first non-empty line of `path`, which must be a regular file that neither group
/// nor others can read. The reason never quotes the file's content.
pub fn read_credentials(path: &Path) -> Result<Credentials, String> {
    let bytes = crate::secrets::read_private_file(path)?;
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).ok_or("is empty")?;
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok(Credentials { user: user.to_string(), password: password.to_string() })
        }
        _ => Err("the first line must be USER:PASSWORD (a token: x-access-token:TOKEN on GitHub, oauth2:TOKEN on \
                  GitLab, USER:TOKEN on Gitea)"
            .into()),
    }
}

/// What git's `GIT_ASKPASS` program prints for `prompt` (`Username for '…': ` or `Password for '…': `).
pub fn askpass(file: &Path, prompt: &str) -> Result<String, String> {
    let c = read_credentials(file).map_err(|reason| format!("credentials file {}: {reason}", file.display()))?;
    if prompt.starts_with("Username") {
        Ok(c.user)
    } else if prompt.starts_with("Password") {
        Ok(c.password)
    } else {
        Err(format!("unexpected git prompt {:?}", prompt.chars().take(80).collect::<String>()))
    }
}

/// The stacks repository and where it is checked out.
#[derive(Debug, Clone)]
pub struct Repo {
    pub url: String,
    pub branch: String,
    pub dir: PathBuf,
    /// `[stacks] credentials_file`: `USER:PASSWORD` handed to git through `GIT_ASKPASS`.
    pub credentials: Option<PathBuf>,
}

impl Repo {
    fn git(&self) -> Cmd {
        let mut cmd = base_git().timeout(LOCAL_TIMEOUT).arg("-C").arg(&self.dir);
        if let Some(secret) = url_secret(&self.url) {
            cmd = cmd.redact(secret);
        }
        cmd
    }

    /// A network command (clone, fetch): the credentials file, when given, reaches git through `GIT_ASKPASS` (this
    /// binary) and its content is masked in every message, in case git or a server echoes it.
    fn with_credentials(&self, mut cmd: Cmd) -> Result<Cmd, GitError> {
        let Some(file) = &self.credentials else { return Ok(cmd) };
        let bad = |reason: String| GitError::Credentials { path: file.clone(), reason };
        let c = read_credentials(file).map_err(bad)?;
        let exe = std::env::current_exe().map_err(|e| bad(format!("cannot find this program for GIT_ASKPASS: {e}")))?;
        cmd = cmd.env("GIT_ASKPASS", exe).env(ASKPASS_ENV, file);
        Ok(cmd.redact(c.password.clone()).redact(format!("{}:{}", c.user, c.password)))
    }

    /// Clones the branch when the checkout does not exist yet, else fetches it; then moves the work tree to the tip
    /// of the branch (local changes in tracked files are discarded; untracked files such as bind-mounted data stay).
    /// Returns the commit checked out.
    ///
    /// The checkout belongs to the agent and the caller runs one sync at a time, so a git lock file present when a
    /// sync starts was left by a git that was killed (agent stopped or crashed mid-sync, or a runner timeout): it is
    /// removed, with a warning, instead of failing every later sync with "index.lock: File exists".
    pub async fn sync(&self) -> Result<String, GitError> {
        if self.dir.join(".git").is_dir() {
            for lock in self.remove_stale_locks() {
                tracing::warn!(lock = %lock.display(), "removed a git lock left by an interrupted sync");
            }
            runner::run_ok(self.git().args(["remote", "set-url", "origin"]).arg(&self.url)).await?;
            let refspec = format!("+refs/heads/{b}:refs/remotes/origin/{b}", b = self.branch);
            let fetch = self.git().args(["fetch", "--prune", "--quiet", "origin"]).arg(refspec);
            runner::run_ok(self.with_credentials(fetch.timeout(NETWORK_TIMEOUT))?)
                .await
                .map_err(|source| GitError::Fetch { branch: self.branch.clone(), source })?;
        } else {
            if is_non_empty_dir(&self.dir) {
                return Err(GitError::NotACheckout { dir: self.dir.clone() });
            }
            if let Some(parent) = self.dir.parent() {
                std::fs::create_dir_all(parent).map_err(|source| {
                    GitError::Run(RunError::Io { cmd: format!("mkdir -p {}", parent.display()), source })
                })?;
            }
            let mut clone = base_git()
                .timeout(NETWORK_TIMEOUT)
                .args(["clone", "--quiet", "--single-branch", "--branch"])
                .arg(&self.branch)
                .arg("--")
                .arg(&self.url)
                .arg(&self.dir);
            if let Some(secret) = url_secret(&self.url) {
                clone = clone.redact(secret);
            }
            if let Err(e) = runner::run_ok(self.with_credentials(clone)?).await {
                // A failed clone may leave a partial directory behind: the next attempt starts afresh.
                let _ = std::fs::remove_dir_all(&self.dir);
                return Err(GitError::Clone(e));
            }
        }
        let tip = format!("refs/remotes/origin/{}", self.branch);
        runner::run_ok(self.git().args(["reset", "--hard", "--quiet"]).arg(&tip)).await?;
        self.head().await
    }

    /// Removes the lock files a killed `git remote set-url`, `fetch` or `reset` leaves behind; returns them.
    fn remove_stale_locks(&self) -> Vec<PathBuf> {
        let git = self.dir.join(".git");
        let mut candidates = vec![git.join("index.lock"), git.join("HEAD.lock"), git.join("config.lock")];
        candidates.push(git.join("packed-refs.lock"));
        candidates.push(git.join("refs/remotes/origin").join(format!("{}.lock", self.branch)));
        candidates.push(git.join("refs/heads").join(format!("{}.lock", self.branch)));
        candidates.into_iter().filter(|p| std::fs::remove_file(p).is_ok()).collect()
    }

    /// The commit checked out.
    pub async fn head(&self) -> Result<String, GitError> {
        let out = runner::run_ok(self.git().args(["rev-parse", "--verify", "HEAD^{commit}"])).await?;
        parse_commit(&out.stdout)
    }

    /// The top-level directories of HEAD and their tree hashes: a stack changed exactly when its tree hash did.
    pub async fn trees(&self) -> Result<BTreeMap<String, String>, GitError> {
        let out = runner::run_ok(self.git().args(["ls-tree", "-z", "HEAD"])).await?;
        parse_ls_tree(&out.stdout)
    }
}

fn is_non_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false)
}

/// Every git we run: no prompts, C locale, and housekeeping (`gc --auto`, `maintenance --auto`) in the foreground, so
/// that no git of ours outlives its command: one sync at a time is then one git at a time in the checkout, which is
/// what makes a lock file found at the start of a sync a stale one.
///
/// `credential.helper=` (empty) turns off every credential helper of the user's and system's git config: none may
/// store our credentials (e.g. root's `credential.helper = store` writing them to `~/.git-credentials`), none may
/// answer in their place.
fn base_git() -> Cmd {
    Cmd::new("git").env("GIT_TERMINAL_PROMPT", "0").env("LC_ALL", "C").args([
        "-c",
        "gc.autoDetach=false",
        "-c",
        "maintenance.autoDetach=false",
        "-c",
        "credential.helper=",
    ])
}

/// `text` with the userinfo of every `SCHEME://USERINFO@HOST` in it replaced by `***` (the user name too: a token
/// is often written as the user, `https://TOKEN@host/…`).
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || "'\"`<>".contains(c));
        let authority = &tail[..end.unwrap_or(tail.len())];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(runner::MASK);
                out.push_str(&tail[at..authority.len()]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority.len()..];
    }
    out.push_str(rest);
    out
}

/// True when the URL carries a userinfo (`SCHEME://USER[:PASSWORD]@HOST…`).
pub fn has_userinfo(url: &str) -> bool {
    redact_userinfo(url) != url
}

/// The password of a URL like `https://user:secret@host/…`, to redact from logs and errors.
pub fn url_secret(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split('/').next()?.rsplit_once('@')?.0;
    let (_, pass) = userinfo.split_once(':')?;
    (!pass.is_empty()).then(|| pass.to_string())
}

/// A full hex object name from `git rev-parse`.
pub fn parse_commit(stdout: &[u8]) -> Result<String, GitError> {
    let s = String::from_utf8_lossy(stdout).trim().to_string();
    if (s.len() == 40 || s.len() == 64) && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(GitError::Parse(format!("not a commit id: {s:?}")))
    }
}

/// `git ls-tree -z` output (`MODE SP TYPE SP HASH TAB NAME NUL`…) → directory name → tree hash. Files are skipped.
pub fn parse_ls_tree(stdout: &[u8]) -> Result<BTreeMap<String, String>, GitError> {
    let mut trees = BTreeMap::new();
    for entry in stdout.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        let (meta, name) =
            entry.split_once('\t').ok_or_else(|| GitError::Parse(format!("ls-tree entry without a tab: {entry:?}")))?;
        let mut parts = meta.split(' ');
        let (_mode, kind, hash) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(k), Some(h)) => (m, k, h),
            _ => return Err(GitError::Parse(format!("ls-tree entry: {entry:?}"))),
        };
        if kind == "tree" {
            trees.insert(name.to_string(), hash.to_string());
        }
    }
    Ok(trees)
}

// Tests run programs directly.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests {
    use super::*;

    /// `git ls-tree -z HEAD` captured from git 2.x on a repository with a README and two stack directories.
    const LS_TREE: &[u8] = b"100644 blob 45b983be36b73c0788dc9cbcb76cbb80fc7bb057\tREADME\0\
040000 tree 96049031bdab453f6864bcdf8f09302a75e8cb50\tphotos\0\
040000 tree 1cff14b569ee26090d4b59fe658195df80141bb6\tproxy\0";

    #[test]
    fn ls_tree_keeps_directories() {
        let t = parse_ls_tree(LS_TREE).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t["photos"], "96049031bdab453f6864bcdf8f09302a75e8cb50");
        assert_eq!(t["proxy"], "1cff14b569ee26090d4b59fe658195df80141bb6");
        assert!(parse_ls_tree(b"").unwrap().is_empty());
        assert!(parse_ls_tree(b"garbage\0").is_err());
    }

    #[test]
    fn commits_and_secrets() {
        assert_eq!(
            parse_commit(b"9e117e48d2eb54e7898359e3a6253513928c8330\n").unwrap(),
            "9e117e48d2eb54e7898359e3a6253513928c8330"
        );
        assert!(parse_commit(b"fatal: bad revision\n").is_err());
        assert_eq!(url_secret("https://bot:s3cret@git.example/lab/stacks.git").as_deref(), Some("s3cret"));
        assert_eq!(url_secret("https://git.example/lab/stacks.git"), None);
        assert_eq!(url_secret("/srv/repo"), None);
        assert_eq!(url_secret("ssh://git@host/x"), None);
    }

    #[test]
    fn userinfo_is_masked_in_any_form() {
        let cases = [
            ("https://TOKEN@h.example/x.git", "https://***@h.example/x.git"),
            ("https://u:p@h.example/x@y", "https://***@h.example/x@y"),
            (
                "fatal: unable to access 'http://u:TOKEN@127.0.0.1:9/s.git/': refused",
                "fatal: unable to access 'http://***@127.0.0.1:9/s.git/': refused",
            ),
            ("a ssh://git@h/x and https://h/y?u=a@b", "a ssh://***@h/x and https://h/y?u=a@b"),
            ("no url here", "no url here"),
            ("https://h.example", "https://h.example"),
        ];
        for (text, want) in cases {
            assert_eq!(redact_userinfo(text), want, "{text}");
        }
        assert!(has_userinfo("https://TOKEN@h/x") && !has_userinfo("https://h/x") && !has_userinfo("git@h:x"));
    }

    #[test]
    fn askpass_answers_from_the_file_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("creds");
        std::fs::write(&f, "\n  bot:s3:cret  \n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(askpass(&f, "Username for 'https://h': ").unwrap(), "bot");
        assert_eq!(askpass(&f, "Password for 'https://bot@h': ").unwrap(), "s3:cret");
        assert!(askpass(&f, "Are you sure?").is_err());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = askpass(&f, "Password for 'https://bot@h': ").unwrap_err();
        assert!(e.contains("chmod 600") && !e.contains("s3:cret"), "{e}");
        assert!(format!("{:?}", Credentials { user: "u".into(), password: "p".into() }) == "Credentials(***)");
    }

    fn git(dir: &Path, args: &[&str]) {
        let st = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(dir)
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    }

    #[tokio::test]
    async fn clone_then_fetch_follow_the_branch() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("origin");
        std::fs::create_dir_all(origin.join("photos")).unwrap();
        git(&origin, &["init", "-q", "-b", "main"]);
        std::fs::write(origin.join("photos/docker-compose.yml"), "one\n").unwrap();
        git(&origin, &["add", "."]);
        git(&origin, &["commit", "-qm", "one"]);
        let repo = Repo {
            url: origin.display().to_string(),
            branch: "main".into(),
            dir: tmp.path().join("checkout/stacks"),
            credentials: None,
        };
        let first = repo.sync().await.unwrap();
        let trees1 = repo.trees().await.unwrap();
        assert!(trees1.contains_key("photos"));
        std::fs::write(origin.join("photos/docker-compose.yml"), "two\n").unwrap();
        git(&origin, &["commit", "-qam", "two"]);
        let second = repo.sync().await.unwrap();
        assert_ne!(first, second);
        assert_ne!(trees1["photos"], repo.trees().await.unwrap()["photos"]);
        assert_eq!(std::fs::read_to_string(repo.dir.join("photos/docker-compose.yml")).unwrap(), "two\n");

        // A git killed mid-sync (the agent was stopped, or a timeout) leaves its lock files: the next sync goes on.
        std::fs::write(origin.join("photos/docker-compose.yml"), "three\n").unwrap();
        git(&origin, &["commit", "-qam", "three"]);
        for lock in ["index.lock", "config.lock", "refs/remotes/origin/main.lock"] {
            std::fs::write(repo.dir.join(".git").join(lock), "").unwrap();
        }
        let third = repo.sync().await.unwrap();
        assert_ne!(second, third);
        assert_eq!(std::fs::read_to_string(repo.dir.join("photos/docker-compose.yml")).unwrap(), "three\n");
        assert!(!repo.dir.join(".git/index.lock").exists());

        let missing = Repo { url: tmp.path().join("nope").display().to_string(), ..repo.clone() };
        let missing = Repo { dir: tmp.path().join("other"), ..missing };
        let err = missing.sync().await.unwrap_err().to_string();
        assert!(err.starts_with("git clone of the stacks repository failed"), "{err}");
        assert!(!missing.dir.exists());
        let branch = Repo { branch: "nope".into(), ..repo };
        let err = branch.sync().await.unwrap_err().to_string();
        assert!(err.starts_with("git fetch of branch nope failed"), "{err}");
    }
}
