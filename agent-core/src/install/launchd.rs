//! The launchd property list of an agent's service: rendering only. Must not know where plists are written or how
//! they are loaded (`install`'s `mod.rs`).

use std::fmt::Write as _;

use super::{ServiceSpec, LAUNCHD_ENV, LAUNCHD_THROTTLE_SECONDS};

/// The launchd property list for `spec` (an XML plist; every string escaped).
pub fn launchd_plist(spec: &ServiceSpec) -> String {
    let log = xml_escape(&spec.launchd_log_path());
    let mut p = String::new();
    p.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    p.push_str(
        "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n",
    );
    p.push_str("<plist version=\"1.0\">\n<dict>\n");
    // Writing to a String cannot fail.
    let _ = writeln!(p, "\t<key>Label</key>\n\t<string>{}</string>", xml_escape(&spec.launchd_label()));
    p.push_str("\t<key>ProgramArguments</key>\n\t<array>\n");
    for arg in [&*spec.exec.to_string_lossy(), "run", "--config", &*spec.config.to_string_lossy()] {
        let _ = writeln!(p, "\t\t<string>{}</string>", xml_escape(arg));
    }
    p.push_str("\t</array>\n");
    p.push_str("\t<key>RunAtLoad</key>\n\t<true/>\n");
    // Restarted only after a failure (a non-zero exit), at most every THROTTLE seconds; a refused config exits 0
    // under launchd and stays down.
    p.push_str("\t<key>KeepAlive</key>\n\t<dict>\n\t\t<key>SuccessfulExit</key>\n\t\t<false/>\n\t</dict>\n");
    let _ = writeln!(p, "\t<key>ThrottleInterval</key>\n\t<integer>{LAUNCHD_THROTTLE_SECONDS}</integer>");
    p.push_str("\t<key>EnvironmentVariables</key>\n\t<dict>\n\t\t<key>PATH</key>\n");
    p.push_str("\t\t<string>/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin</string>\n");
    let _ = writeln!(p, "\t\t<key>{LAUNCHD_ENV}</key>\n\t\t<string>launchd</string>\n\t</dict>");
    let _ = writeln!(p, "\t<key>StandardOutPath</key>\n\t<string>{log}</string>");
    let _ = writeln!(p, "\t<key>StandardErrorPath</key>\n\t<string>{log}</string>");
    p.push_str("</dict>\n</plist>\n");
    p
}

fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // Not representable in XML 1.0; `validate` rejects them, this keeps the document well-formed anyway.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => escaped.push('\u{FFFD}'),
            c => escaped.push(c),
        }
    }
    escaped
}
