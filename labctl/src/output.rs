//! labctl's output habits: one JSON document per command on stdout with `--json` (JSON Lines for streams), text
//! otherwise, and errors as `{"error": …}` in JSON mode. Knows nothing of agents or of what the values mean.

use std::fmt::Display;

use serde::Serialize;

/// The global flags every command honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opts {
    pub json: bool,
    pub verbose: bool,
    pub timeout: Option<std::time::Duration>,
}

/// One pretty-printed JSON document on stdout.
pub fn json(v: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The outcome of a command: `value` as JSON with `--json`, else `text` as one line.
pub fn result(opts: &Opts, value: &impl Serialize, text: impl Display) -> anyhow::Result<()> {
    if opts.json {
        json(value)
    } else {
        println!("{text}");
        Ok(())
    }
}

/// Prints an agent's answer to Reload (every agent's `reload` subcommand): its message, or `reloaded`/`unchanged`.
pub fn reloaded(opts: &Opts, changed: bool, message: &str) -> anyhow::Result<()> {
    let text = match (message.is_empty(), changed) {
        (false, _) => message.to_string(),
        (true, true) => "reloaded".to_string(),
        (true, false) => "unchanged".to_string(),
    };
    result(opts, &serde_json::json!({ "changed": changed, "message": message }), text)
}

/// The JSON document of a failed command: `{"error": "…"}` on one line.
pub fn error_document(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}
