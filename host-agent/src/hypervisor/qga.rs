//! The QEMU guest agent (`qemu-ga`) protocol over the unix socket of the VM's virtio-serial channel: resync with
//! `guest-sync-delimited` (a 0xFF byte each way), then one command (`guest-ping`, `guest-fsfreeze-freeze`,
//! `guest-fsfreeze-thaw`); one connection per exchange, every exchange under a timeout.
//! The answers are parsed by pure functions. Knows the qemu-ga wire protocol; must not know QMP, backups or when to
//! freeze.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The byte qemu-ga treats as "reset your parser" and puts before its `guest-sync-delimited` answer.
pub(super) const DELIMITER: u8 = 0xFF;

/// The longest answer read from the agent (a freeze/thaw/ping answer is a few dozen bytes; stale answers of an
/// earlier client may come first).
const MAX_ANSWER: usize = 64 * 1024;

/// How one exchange with the guest agent failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QgaError {
    /// Nothing listens on the socket: QEMU is not running (or was started without the channel).
    #[error("no guest agent socket {} ({message})", socket.display())]
    NoSocket { socket: PathBuf, message: String },
    #[error("the guest agent did not answer {command} within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    /// The agent answered with an error object.
    #[error("the guest agent refused {command}: {desc} ({class})")]
    Refused { command: String, class: String, desc: String },
    #[error("guest agent {command}: {message}")]
    Protocol { command: String, message: String },
}

/// A client of one VM's guest agent socket.
#[derive(Debug, Clone)]
pub(crate) struct Qga {
    socket: PathBuf,
}

impl Qga {
    pub(crate) fn new(socket: &Path) -> Qga {
        Qga { socket: socket.to_path_buf() }
    }

    /// `guest-ping`: whether an agent answers within `timeout`.
    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), QgaError> {
        self.execute("guest-ping", timeout).await.map(drop)
    }

    /// `guest-fsfreeze-freeze`: how many file systems the agent froze.
    pub(crate) async fn freeze(&self, timeout: Duration) -> Result<u64, QgaError> {
        let v = self.execute("guest-fsfreeze-freeze", timeout).await?;
        parse_count("guest-fsfreeze-freeze", &v)
    }

    /// `guest-fsfreeze-thaw`: how many file systems the agent thawed (0 when none was frozen).
    pub(crate) async fn thaw(&self, timeout: Duration) -> Result<u64, QgaError> {
        let v = self.execute("guest-fsfreeze-thaw", timeout).await?;
        parse_count("guest-fsfreeze-thaw", &v)
    }

    /// One exchange: connect, resync, `command`; its `return` value. The whole exchange is under `timeout`.
    async fn execute(&self, command: &str, timeout: Duration) -> Result<Value, QgaError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| QgaError::NoSocket { socket: self.socket.clone(), message: e.to_string() })?;
        let sync_id = sync_id();
        match tokio::time::timeout(timeout, exchange(stream, command, sync_id)).await {
            Ok(r) => r,
            Err(_) => Err(QgaError::Timeout { command: command.to_string(), timeout }),
        }
    }
}

/// A resync id that differs from run to run (an earlier client's stale answer never matches it).
fn sync_id() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (u64::from(std::process::id()) << 32 | u64::from(nanos)) & ((1 << 53) - 1)
}

async fn exchange(mut stream: UnixStream, command: &str, sync_id: u64) -> Result<Value, QgaError> {
    let proto = |message: String| QgaError::Protocol { command: command.to_string(), message };
    stream.write_all(&sync_request(sync_id)).await.map_err(|e| proto(format!("send guest-sync-delimited: {e}")))?;
    let mut buf = Vec::new();
    // Everything before our delimited sync answer is stale (an earlier client's answers, the error for the 0xFF).
    let rest = loop {
        match find_sync(&buf, sync_id) {
            Sync::Found(rest) => break rest,
            Sync::Refused(e) => return Err(proto(e)),
            Sync::More => read_more(&mut stream, &mut buf).await.map_err(&proto)?,
        }
    };
    let line = format!("{}\n", json!({ "execute": command }));
    stream.write_all(line.as_bytes()).await.map_err(|e| proto(format!("send: {e}")))?;
    let mut buf = rest;
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            return parse_reply(command, &buf[..end]);
        }
        read_more(&mut stream, &mut buf).await.map_err(&proto)?;
    }
}

async fn read_more(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<(), String> {
    if buf.len() > MAX_ANSWER {
        return Err(format!("more than {MAX_ANSWER} bytes without an answer"));
    }
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) => Err("connection closed".into()),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read: {e}")),
    }
}

/// The resync request: a 0xFF byte (qemu-ga resets its parser on it) and `guest-sync-delimited` with `id`.
pub(super) fn sync_request(id: u64) -> Vec<u8> {
    let mut b = vec![DELIMITER];
    b.extend_from_slice(
        format!("{}\n", json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})).as_bytes(),
    );
    b
}

/// Where reading the resync answer stands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Sync {
    /// Our answer was read; the bytes after its line.
    Found(Vec<u8>),
    /// The agent refused the resync itself.
    Refused(String),
    /// Not yet: read more.
    More,
}

/// Looks in what was read so far for `0xFF{"return": ID}\n` with our id; anything before it (stale answers, the
/// parse error qemu-ga sends for the 0xFF byte, an earlier client's sync answer with another id) is skipped.
pub(super) fn find_sync(buf: &[u8], id: u64) -> Sync {
    let mut from = 0;
    while let Some(p) = buf[from..].iter().position(|&b| b == DELIMITER) {
        let start = from + p + 1;
        let Some(len) = buf[start..].iter().position(|&b| b == b'\n') else { return Sync::More };
        let line = &buf[start..start + len];
        match serde_json::from_slice::<Value>(line) {
            Ok(v) if v.get("return").and_then(Value::as_u64) == Some(id) => {
                return Sync::Found(buf[start + len + 1..].to_vec())
            }
            Ok(v) if v.get("error").is_some() => {
                if let Err(QgaError::Refused { desc, class, .. }) = parse_reply("guest-sync-delimited", line) {
                    return Sync::Refused(format!("guest-sync-delimited refused: {desc} ({class})"));
                }
            }
            _ => {}
        }
        from = start + len + 1;
    }
    Sync::More
}

/// One answer line: `{"return": …}` or `{"error": {"class", "desc"}}`.
pub(super) fn parse_reply(command: &str, line: &[u8]) -> Result<Value, QgaError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| QgaError::Protocol {
        command: command.to_string(),
        message: format!("bad answer {:?}: {e}", String::from_utf8_lossy(line)),
    })?;
    if let Some(r) = v.get("return") {
        return Ok(r.clone());
    }
    if let Some(e) = v.get("error") {
        let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        return Err(QgaError::Refused { command: command.to_string(), class: field("class"), desc: field("desc") });
    }
    Err(QgaError::Protocol { command: command.to_string(), message: format!("unexpected answer {v}") })
}

/// The count `guest-fsfreeze-freeze`/`-thaw` return.
pub(super) fn parse_count(command: &str, v: &Value) -> Result<u64, QgaError> {
    v.as_u64().ok_or_else(|| QgaError::Protocol {
        command: command.to_string(),
        message: format!("expected a count of file systems, got {v}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// Captured from Debian's qemu-ga 7.2.22 in a guest (Linux 6.1, one ext4 file system), over QEMU 7.2's
    /// virtio-serial chardev socket, each answer to: 0xFF + guest-sync-delimited(4242), guest-ping,
    /// guest-fsfreeze-status, guest-fsfreeze-freeze, guest-fsfreeze-status, guest-fsfreeze-freeze (again),
    /// guest-fsfreeze-thaw, guest-fsfreeze-status, guest-fsfreeze-thaw (again), an unknown command.
    const CAPTURED: &[u8] = b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n\
        \xff{\"return\": 4242}\n\
        {\"return\": {}}\n\
        {\"return\": \"thawed\"}\n\
        {\"return\": 1}\n\
        {\"return\": \"frozen\"}\n\
        {\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state\"}}\n\
        {\"return\": 1}\n\
        {\"return\": \"thawed\"}\n\
        {\"return\": 0}\n\
        {\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command guest-nope has not been found\"}}\n";

    fn lines(b: &[u8]) -> Vec<&[u8]> {
        b.split(|&c| c == b'\n').filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn the_captured_session_parses() {
        let Sync::Found(rest) = find_sync(CAPTURED, 4242) else { panic!("no sync answer found") };
        let l = lines(&rest);
        assert_eq!(parse_reply("guest-ping", l[0]).unwrap(), json!({}));
        assert_eq!(parse_reply("s", l[1]).unwrap(), json!("thawed"));
        assert_eq!(parse_count("f", &parse_reply("f", l[2]).unwrap()).unwrap(), 1);
        assert_eq!(parse_reply("s", l[3]).unwrap(), json!("frozen"));
        let e = parse_reply("guest-fsfreeze-freeze", l[4]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the guest agent refused guest-fsfreeze-freeze: Command guest-fsfreeze-freeze has been disabled: the \
             agent is in frozen state (CommandNotFound)"
        );
        assert_eq!(parse_count("t", &parse_reply("t", l[5]).unwrap()).unwrap(), 1);
        assert_eq!(parse_reply("s", l[6]).unwrap(), json!("thawed"));
        assert_eq!(parse_count("t", &parse_reply("t", l[7]).unwrap()).unwrap(), 0);
        assert!(
            matches!(parse_reply("guest-nope", l[8]), Err(QgaError::Refused { class, .. }) if class == "CommandNotFound")
        );
        assert!(parse_count("t", &json!("x")).is_err());
        assert!(matches!(parse_reply("x", b"{\"QMP\": 1}"), Err(QgaError::Protocol { .. })));
    }

    #[test]
    fn only_our_sync_answer_counts() {
        // An earlier client's sync answer (another id), then ours split across reads.
        let stale = b"{\"return\": 1}\n\xff{\"return\": 7}\n\xff{\"return\": 4242}";
        assert_eq!(find_sync(stale, 4242), Sync::More, "our line is not complete yet");
        let mut all = stale.to_vec();
        all.extend_from_slice(b"\n{\"return\": {}}\n");
        assert_eq!(find_sync(&all, 4242), Sync::Found(b"{\"return\": {}}\n".to_vec()));
        assert_eq!(find_sync(b"garbage without a delimiter\n", 1), Sync::More);
        let refused = b"\xff{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n";
        assert_eq!(find_sync(refused, 1), Sync::Refused("guest-sync-delimited refused: no (GenericError)".into()));
        let req = sync_request(9);
        assert_eq!(req[0], DELIMITER);
        assert_eq!(&req[1..], b"{\"arguments\":{\"id\":9},\"execute\":\"guest-sync-delimited\"}\n");
    }

    /// A stand-in agent on a unix socket: answers the resync (after a stale line and the parse error qemu-ga sends
    /// for the 0xFF), then `answer` for the command, or nothing when `answer` is None.
    async fn fake_agent(sock: PathBuf, answer: Option<&'static str>) {
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let (r, mut w) = s.into_split();
                let mut r = tokio::io::BufReader::new(r);
                let mut sync = Vec::new();
                if r.read_until(b'\n', &mut sync).await.unwrap_or(0) == 0 {
                    continue;
                }
                let v: Value = serde_json::from_slice(sync.strip_prefix(&[DELIMITER]).unwrap()).unwrap();
                let id = v["arguments"]["id"].as_u64().unwrap();
                let mut out =
                    b"{\"return\": 0}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"stray\"}}\n".to_vec();
                out.push(DELIMITER);
                out.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
                w.write_all(&out).await.unwrap();
                let _cmd = r.read_until(b'\n', &mut Vec::new()).await;
                match answer {
                    Some(a) => w.write_all(format!("{a}\n").as_bytes()).await.unwrap(),
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            }
        });
    }

    #[tokio::test]
    async fn exchanges_resync_and_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let q = Qga::new(&dir.path().join("none.qga"));
        assert!(matches!(q.ping(Duration::from_secs(1)).await, Err(QgaError::NoSocket { .. })));

        let ok = dir.path().join("ok.qga");
        fake_agent(ok.clone(), Some("{\"return\": 2}")).await;
        assert_eq!(Qga::new(&ok).freeze(Duration::from_secs(5)).await.unwrap(), 2);

        let silent = dir.path().join("silent.qga");
        fake_agent(silent.clone(), None).await;
        let t0 = std::time::Instant::now();
        let e = Qga::new(&silent).freeze(Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(e.to_string(), "the guest agent did not answer guest-fsfreeze-freeze within 300ms");
        assert!(t0.elapsed() < Duration::from_secs(2));

        // A socket nobody answers at all (QEMU's chardev with no agent in the guest): the resync times out.
        let mute = dir.path().join("mute.qga");
        let _l = tokio::net::UnixListener::bind(&mute).unwrap();
        let e = Qga::new(&mute).ping(Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(e, QgaError::Timeout { .. }), "{e}");
    }
}
