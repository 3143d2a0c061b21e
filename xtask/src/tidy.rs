//! The project's conventions as tests (rust-analyzer's tidy): each rule is a pure function over a file's text, shown
//! firing on a scratch violation, and `the_tree_keeps_the_conventions` applies them all to the workspace and reports
//! every violation at once. Owns the rules and their exemptions; must not know what any module does.
//!
//! Rules: every `.rs` file opens with a `//!` line; no `#[ignore]`, no `#[should_panic]`; `Command::new` only in
//! `agent_core::runner` (exempt: xtask, the tests crate, test-only code; clippy's `disallowed-methods` in
//! `clippy.toml` says the same to the compiler); proto and tonic types only in each crate's edge modules
//! ([`EDGES`]); no source file over [`MAX_LINES`] lines; no import cycle between sibling modules of a crate; every
//! example config rejects an unknown key in every table (hickory's TableMutator test).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may be (generated code excepted).
const MAX_LINES: usize = 1000;

/// Per crate directory, the modules allowed to name `strata_proto` or `tonic` (a path relative to `src/`; a folder
/// name covers the files under it).
const EDGES: &[(&str, &[&str])] = &[
    // The shared gRPC runtime: server, mTLS connections and channels, authorization of callers.
    ("agent-core", &["grpc.rs", "conn.rs", "tls.rs", "authz.rs"]),
    ("dns-agent", &["grpc.rs"]),
    ("host-agent", &["grpc.rs"]),
    ("services-agent", &["grpc.rs", "grpc"]),
    // The client and one module per agent's commands (the renderer of streamed progress converts nothing).
    ("labctl", &["client.rs", "dns.rs", "services.rs", "vm.rs"]),
];

/// Crates where any code may run programs directly (automation and the integration harness).
const COMMAND_EXEMPT_CRATES: &[&str] = &["xtask", "tests"];

/// The one module that runs external programs in the agents and labctl.
const RUNNER: &str = "agent-core/src/runner.rs";

/// The value inserted into every table of an example config.
const UNKNOWN_KEY: &str = "strata_tidy_unknown_key";

/// A module of a crate as its path from the crate root (`[]` is the root, `["install", "systemd"]`).
type Module = Vec<String>;

/// What each module of a crate refers to (full paths, possibly to items).
type Refs = BTreeMap<Module, Vec<Module>>;

/// A program's config parser: the file's path (for messages) and its text; the error message on refusal.
type ConfigParser = Box<dyn Fn(&Path, &str) -> Result<(), String>>;

/// One broken rule: the file (relative to the workspace), its 1-based line (0: the whole file) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: String,
    line: usize,
    message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Whether the file opens with a `//!` line.
fn opens_with_module_doc(text: &str) -> bool {
    text.lines().next().is_some_and(|l| l.starts_with("//!"))
}

/// Lines (1-based) with an `#[ignore]` or `#[should_panic]` attribute, and which.
fn forbidden_test_attributes(text: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        for attr in ["#[ignore", "#[should_panic"] {
            if t.starts_with(attr) {
                found.push((i + 1, attr.trim_start_matches("#[")));
            }
        }
    }
    found
}

/// The 1-based line where test-only code starts: a `#[cfg(test)]` line followed by a `mod` line (the convention of
/// this workspace: test modules come last). `None` when the file has none.
fn test_code_start(text: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    lines.iter().enumerate().find_map(|(i, l)| {
        let next = lines.get(i + 1).map(|n| n.trim_start()).unwrap_or("");
        (l.trim() == "#[cfg(test)]" && (next.starts_with("mod ") || next.starts_with("pub(crate) mod ")))
            .then_some(i + 1)
    })
}

/// The code of a line without its `//` comment (a `//` inside a string literal is left alone).
fn code_of(line: &str) -> &str {
    let mut in_string = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => in_string = !in_string,
            '/' if !in_string && prev == '/' => return &line[..i - 1],
            _ => {}
        }
        prev = if prev == '\\' && c == '\\' { ' ' } else { c };
    }
    line
}

/// Lines (1-based) of non-test code that call `Command::new` (std's or tokio's).
fn command_new_lines(text: &str) -> Vec<usize> {
    let end = test_code_start(text).unwrap_or(usize::MAX);
    text.lines()
        .enumerate()
        .filter(|(i, l)| i + 1 < end && code_of(l).contains("Command::new("))
        .map(|(i, _)| i + 1)
        .collect()
}

/// Lines (1-based) that name `strata_proto` or `tonic` (its crates `tonic_health`, `tonic_prost` too).
fn proto_or_tonic_lines(text: &str) -> Vec<usize> {
    let names = |code: &str| {
        ["strata_proto", "tonic::", "tonic_health::", "tonic_prost::", "use tonic"].iter().any(|n| {
            code.match_indices(n).any(|(at, _)| {
                at == 0 || !code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            })
        })
    };
    text.lines().enumerate().filter(|(_, l)| names(code_of(l))).map(|(i, _)| i + 1).collect()
}

/// The module paths a file's non-test code refers to through `crate::` or `super::` (`use` trees expanded),
/// resolved against `module` (the file's own path, e.g. `["install", "systemd"]`), as full segment lists.
fn referenced_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let end = test_code_start(text).unwrap_or(usize::MAX);
    let code: String = text.lines().take(end.saturating_sub(1)).map(code_of).collect::<Vec<_>>().join("\n");
    let mut paths = Vec::new();
    // `use` statements, with their brace groups expanded.
    let mut rest = code.as_str();
    while let Some(at) = rest.find("use ") {
        let before_ok = at == 0 || !rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        let stmt_end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        if before_ok {
            let tree: String = rest[at + 4..stmt_end].split_whitespace().collect::<Vec<_>>().join(" ");
            paths.extend(expand_use_tree(&tree));
        }
        rest = rest.get(stmt_end + 1..).unwrap_or("");
    }
    // Paths written in code: `crate::a::b`, `super::x`.
    for start in ["crate::", "super::"] {
        for (at, _) in code.match_indices(start) {
            if at > 0 && code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String =
                code[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
            paths.push(path.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect());
        }
    }
    paths.into_iter().filter_map(|p| resolve(&p, module)).collect()
}

/// `a::{b, c::{d as e, f}}` → `a::b`, `a::c::d`, `a::c::f`.
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    let split = |p: &str| -> Vec<String> {
        p.split("::").map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
    };
    let Some(open) = tree.find('{') else {
        return vec![split(tree.split(" as ").next().unwrap_or(tree))];
    };
    let prefix = split(&tree[..open]);
    let close = tree.rfind('}').filter(|c| *c > open).unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[from..]);
    let mut out = Vec::new();
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        for sub in expand_use_tree(part) {
            out.push(prefix.iter().cloned().chain(sub).collect());
        }
    }
    if out.is_empty() {
        out.push(prefix);
    }
    out
}

/// A `crate::…`/`super::…`/`self::…` path as a path from the crate root; `None` for other crates' paths.
fn resolve(path: &[String], module: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = module.to_vec();
    let mut segs = path.iter().peekable();
    match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            base.clear();
            segs.next();
        }
        Some("super") => {
            while segs.peek().is_some_and(|s| *s == "super") {
                segs.next();
                base.pop()?;
            }
        }
        Some("self") => {
            segs.next();
        }
        _ => return None,
    }
    base.extend(segs.filter(|s| *s != "self").cloned());
    Some(base)
}

/// Cycles between sibling modules: `modules` are a crate's module paths (e.g. `engine`, `engine::borg`), `refs` what
/// each refers to (full paths, possibly into items). Returns each cycle's members, sorted. A child using its parent
/// (or a parent its child) is not a sibling edge.
fn sibling_cycles(modules: &BTreeSet<Vec<String>>, refs: &BTreeMap<Vec<String>, Vec<Vec<String>>>) -> Vec<Vec<String>> {
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (from, targets) in refs {
        for target in targets {
            // The longest prefix of the target that is a module.
            let Some(to) = (1..=target.len()).rev().map(|n| target[..n].to_vec()).find(|p| modules.contains(p)) else {
                continue;
            };
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // parent and child
            }
            edges.entry(from[..=common].to_vec()).or_default().insert(to[..=common].to_vec());
        }
    }
    // Strongly connected components (Tarjan's algorithm, iterative enough for these sizes).
    let nodes: Vec<Vec<String>> =
        edges.keys().chain(edges.values().flatten()).cloned().collect::<BTreeSet<_>>().into_iter().collect();
    let mut reach: BTreeMap<&Vec<String>, BTreeSet<&Vec<String>>> = BTreeMap::new();
    for n in &nodes {
        let mut seen = BTreeSet::new();
        let mut stack = vec![n];
        while let Some(x) = stack.pop() {
            for y in edges.get(x).into_iter().flatten() {
                if seen.insert(y) {
                    stack.push(y);
                }
            }
        }
        reach.insert(n, seen);
    }
    let mut cycles: BTreeSet<Vec<String>> = BTreeSet::new();
    for n in &nodes {
        let members: Vec<String> =
            nodes.iter().filter(|m| reach[n].contains(m) && reach[m].contains(&n)).map(|m| m.join("::")).collect();
        if members.len() > 1 {
            cycles.insert(members);
        }
    }
    cycles.into_iter().collect()
}

/// The dotted paths of every table in a parsed TOML document (`""` is the root; arrays of tables as `a[0]`).
fn table_paths(value: &toml::Value, at: &str, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => {
            out.push(at.to_owned());
            for (k, v) in t {
                let sub = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                table_paths(v, &sub, out);
            }
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                table_paths(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The document with `UNKNOWN_KEY = true` inserted into the table at `path` (as [`table_paths`] names it).
fn with_unknown_key(doc: &toml::Value, path: &str) -> toml::Value {
    let mut doc = doc.clone();
    let mut at = &mut doc;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = part.split_once('[').map_or((part, ""), |(k, i)| (k, i));
        at = at.get_mut(key).expect("a path from table_paths");
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            let i: usize = index.trim_end_matches(']').parse().expect("an index");
            at = at.get_mut(i).expect("a path from table_paths");
        }
    }
    at.as_table_mut().expect("a table").insert(UNKNOWN_KEY.to_owned(), toml::Value::Boolean(true));
    doc
}

/// The tables of `text` (a TOML document) in which an inserted unknown key is accepted by `parse`, or whose
/// rejection does not name the key. `parse` returns the error message of a rejected document.
fn tables_accepting_unknown_keys(text: &str, parse: &dyn Fn(&str) -> Result<(), String>) -> Vec<String> {
    let doc: toml::Value = toml::from_str(text).expect("the example is TOML");
    let mut paths = Vec::new();
    table_paths(&doc, "", &mut paths);
    let mut open = Vec::new();
    for path in paths {
        let mutated = toml::to_string(&with_unknown_key(&doc, &path)).expect("serializable");
        match parse(&mutated) {
            Err(message) if message.contains(UNKNOWN_KEY) => {}
            Err(message) => open.push(format!("[{path}]: rejected without naming the key: {message}")),
            Ok(()) => open.push(format!("[{path}]: accepts an unknown key")),
        }
    }
    open
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_path_buf()
}

/// Every `.rs` file of the tree, relative to `root`, outside `target`, `.git` and generated code.
fn rust_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name == "target" || name.starts_with('.') || rel == Path::new("proto/src/gen") {
                    continue;
                }
                walk(&path, root, out);
            } else if name.ends_with(".rs") {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The crate directory of a file (its first component) and its path under `src/`, if it is there.
fn crate_and_module_file(rel: &Path) -> (String, Option<PathBuf>) {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    let krate = parts.next().unwrap_or_default();
    let rest: PathBuf = parts.collect();
    let under_src = rest.strip_prefix("src").ok().map(Path::to_path_buf);
    (krate, under_src)
}

/// `install/systemd.rs` → `["install", "systemd"]`; `install/mod.rs` → `["install"]`; `lib.rs`/`main.rs` → `[]`.
fn module_path(under_src: &Path) -> Vec<String> {
    let mut segs: Vec<String> = under_src.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = segs.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    let top = segs.is_empty() && (stem == "lib" || stem == "main");
    if stem != "mod" && !top {
        segs.push(stem.to_owned());
    }
    segs
}

/// Every violation in the tree, sorted.
fn tree_violations(root: &Path) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut push = |file: &Path, line: usize, message: String| {
        v.push(Violation { file: file.display().to_string(), line, message })
    };
    let mut crates: BTreeMap<String, (BTreeSet<Module>, Refs)> = BTreeMap::new();
    for rel in rust_files(root) {
        let text = std::fs::read_to_string(root.join(&rel)).unwrap_or_default();
        if !opens_with_module_doc(&text) {
            push(&rel, 1, "does not open with a `//!` line saying what it owns and must not know".into());
        }
        for (line, attr) in forbidden_test_attributes(&text) {
            push(&rel, line, format!("#[{attr}]: a test either runs and asserts, or does not exist"));
        }
        let lines = text.lines().count();
        if lines > MAX_LINES {
            push(&rel, 0, format!("{lines} lines: split it (at most {MAX_LINES})"));
        }
        let (krate, under_src) = crate_and_module_file(&rel);
        let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A `tests.rs` module file is test-only code (declared under `#[cfg(test)]`).
        let test_only = file_name == "tests.rs" && under_src.is_some();
        if !COMMAND_EXEMPT_CRATES.contains(&krate.as_str()) && rel != Path::new(RUNNER) && !test_only {
            for line in command_new_lines(&text) {
                push(&rel, line, "Command::new outside agent_core::runner: run programs through runner::Cmd".into());
            }
        }
        if let Some((_, edges)) = EDGES.iter().find(|(c, _)| *c == krate) {
            let inside = under_src.as_ref().is_some_and(|p| {
                edges.iter().any(|e| if e.ends_with(".rs") { p == Path::new(e) } else { p.starts_with(e) })
            });
            if !inside && under_src.is_some() && !test_only {
                let end = test_code_start(&text).unwrap_or(usize::MAX);
                for line in proto_or_tonic_lines(&text).into_iter().filter(|l| *l < end) {
                    push(&rel, line, format!("proto/tonic outside the edge modules of {krate} ({})", edges.join(", ")));
                }
            }
        }
        if let Some(under_src) = under_src.filter(|p| !p.starts_with("bin")) {
            if root.join(&krate).join("Cargo.toml").exists() {
                let module = module_path(&under_src);
                let entry = crates.entry(krate.clone()).or_default();
                entry.0.insert(module.clone());
                entry.1.entry(module.clone()).or_default().extend(referenced_paths(&text, &module));
            }
        }
    }
    for (krate, (modules, refs)) in &crates {
        for cycle in sibling_cycles(modules, refs) {
            v.push(Violation {
                file: format!("{krate}/src"),
                line: 0,
                message: format!("import cycle between sibling modules: {}", cycle.join(" ↔ ")),
            });
        }
    }
    v.sort();
    v
}

#[test]
fn a_file_must_open_with_a_module_doc_line() {
    assert!(opens_with_module_doc("//! The thing.\n\nfn x() {}\n"));
    assert!(!opens_with_module_doc("/// An item doc.\nfn x() {}\n"));
    assert!(!opens_with_module_doc("\n//! Too late.\n"));
    assert!(!opens_with_module_doc(""));
}

#[test]
fn ignore_and_should_panic_are_found() {
    let text = "//! t\n#[test]\n#[ignore]\nfn a() {}\n    #[should_panic(expected = \"x\")]\nfn b() {}\n// #[ignore] in a comment is prose\n";
    assert_eq!(forbidden_test_attributes(text), [(3, "ignore"), (5, "should_panic")]);
    assert!(forbidden_test_attributes("//! t\n#[test]\nfn a() {}\n").is_empty());
}

#[test]
fn command_new_is_found_outside_test_code_only() {
    let text = "//! t\nfn run() {\n    let c = std::process::Command::new(\"ls\"); // here\n    // Command::new(\"in a comment\")\n}\n#[cfg(test)]\nmod tests {\n    fn t() { std::process::Command::new(\"ls\"); }\n}\n";
    assert_eq!(command_new_lines(text), [3]);
    assert_eq!(command_new_lines("//! t\nlet c = tokio::process::Command::new(p);\n"), [2]);
    assert_eq!(test_code_start(text), Some(6));
}

#[test]
fn proto_and_tonic_names_are_found() {
    let text = "//! t\nuse tonic::Status;\nfn f(p: strata_proto::v1::Progress) {}\n#[tonic::async_trait]\nlet x = mytonic::y;\n// tonic::Status in prose\nuse tonic_health::pb;\n";
    assert_eq!(proto_or_tonic_lines(text), [2, 3, 4, 7]);
}

#[test]
fn use_trees_and_paths_resolve_to_modules() {
    let module = vec!["engine".to_owned(), "borg".to_owned()];
    let text = "//! t\nuse crate::config::{Retention, vm::{A, B}};\nuse super::{EngineError, Engine};\nuse std::fmt;\nfn f() { crate::journal::step(); }\n";
    let mut got = referenced_paths(text, &module);
    got.sort();
    got.dedup();
    // `crate::config::{…}` and `super::{…}` also name the modules themselves.
    let want: Vec<Vec<String>> = [
        "config",
        "config::Retention",
        "config::vm::A",
        "config::vm::B",
        "engine",
        "engine::Engine",
        "engine::EngineError",
        "journal::step",
    ]
    .iter()
    .map(|p| p.split("::").map(str::to_owned).collect())
    .collect();
    assert_eq!(got, want);
}

#[test]
fn sibling_cycles_are_found_and_parent_child_use_is_not_one() {
    let p = |s: &str| -> Vec<String> { s.split("::").filter(|x| !x.is_empty()).map(str::to_owned).collect() };
    let modules: BTreeSet<Vec<String>> =
        ["", "engine", "engine::borg", "engine::rsync", "backup", "config"].iter().map(|s| p(s)).collect();
    let mut refs: BTreeMap<Vec<String>, Vec<Vec<String>>> = BTreeMap::new();
    // A child using its parent and the parent its child: fine. backup → engine → config: no cycle.
    refs.insert(p("engine::borg"), vec![p("engine::Engine"), p("config::Retention")]);
    refs.insert(p("engine"), vec![p("engine::borg::Borg")]);
    refs.insert(p("backup"), vec![p("engine::Engine")]);
    assert!(sibling_cycles(&modules, &refs).is_empty());
    // engine::borg → backup → engine: a cycle between the top-level siblings engine and backup.
    refs.insert(p("engine::borg"), vec![p("backup::Host")]);
    assert_eq!(sibling_cycles(&modules, &refs), [vec!["backup".to_owned(), "engine".to_owned()]]);
    // Two children of engine using each other.
    let mut refs = BTreeMap::new();
    refs.insert(p("engine::borg"), vec![p("engine::rsync::x")]);
    refs.insert(p("engine::rsync"), vec![p("engine::borg::y")]);
    assert_eq!(sibling_cycles(&modules, &refs), [vec!["engine::borg".to_owned(), "engine::rsync".to_owned()]]);
}

#[test]
fn the_table_mutator_finds_a_table_that_accepts_unknown_keys() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        a: u32,
        inner: Inner,
        items: Vec<Inner>,
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        b: u32,
    }
    let parse = |text: &str| toml::from_str::<Strict>(text).map(drop).map_err(|e| e.to_string());
    let text = "a = 1\n[inner]\nb = 2\n[[items]]\nb = 3\n";
    parse(text).unwrap();
    // `Inner` lacks deny_unknown_fields: its table and the array's table accept the key.
    assert_eq!(
        tables_accepting_unknown_keys(text, &parse),
        ["[inner]: accepts an unknown key", "[items[0]]: accepts an unknown key"]
    );
}

/// Each example config and the parser of the program that reads it.
fn example_parsers() -> Vec<(&'static str, ConfigParser)> {
    vec![
        (
            "examples/dns-agent.toml",
            Box::new(|p, t| dns_agent::Config::parse(p, t).map(drop).map_err(|e| e.to_string())),
        ),
        (
            "examples/services-agent.toml",
            Box::new(|p, t| services_agent::Config::parse(p, t).map(drop).map_err(|e| e.to_string())),
        ),
        (
            "examples/host-agent.toml",
            Box::new(|p, t| host_agent::Config::parse(p, t).map(drop).map_err(|e| e.to_string())),
        ),
        (
            "examples/labctl.toml",
            Box::new(|_, t| {
                // labctl reads its inventory from a file only.
                let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
                let path = dir.path().join("labctl.toml");
                std::fs::write(&path, t).map_err(|e| e.to_string())?;
                labctl::inventory::Inventory::load(&path).map(drop).map_err(|e| e.to_string())
            }),
        ),
    ]
}

#[test]
fn every_example_config_rejects_an_unknown_key_in_every_table() {
    let root = workspace_root();
    let mut examples: Vec<String> = std::fs::read_dir(root.join("examples"))
        .expect("examples/")
        .flatten()
        .map(|e| format!("examples/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".toml"))
        .collect();
    examples.sort();
    let parsers = example_parsers();
    let mut open = Vec::new();
    for example in &examples {
        let Some((_, parse)) = parsers.iter().find(|(n, _)| n == example) else {
            open.push(format!("{example}: no parser known to the tidy test: add it to example_parsers"));
            continue;
        };
        let path = root.join(example);
        let text = std::fs::read_to_string(&path).expect("readable");
        for table in tables_accepting_unknown_keys(&text, &|t| parse(&path, t)) {
            open.push(format!("{example} {table}"));
        }
    }
    assert!(open.is_empty(), "{} example table(s) do not refuse unknown keys:\n{}", open.len(), open.join("\n"));
}

#[test]
fn the_tree_keeps_the_conventions() {
    let violations = tree_violations(&workspace_root());
    let shown: Vec<String> = violations.iter().map(Violation::to_string).collect();
    assert!(violations.is_empty(), "{} violation(s) of the conventions:\n{}", violations.len(), shown.join("\n"));
}
