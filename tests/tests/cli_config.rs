//! The agents' command lines on broken input: `run`/`check` on broken configs and broken TLS material (exit 78
//! before READY, naming the file, line and key), and `install`/`uninstall` under a temporary root.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use agent_core::identity::Role;
use anyhow::{ensure, Context, Result};
use strata_tests::binrun::{run, Ran, EXIT_CONFIG};
use strata_tests::harness::{base_config, bin, with_crl, AgentKind, Pki, DOMAIN};

/// One broken config: how to write it (None: the file does not exist) and what the error must say besides its path.
struct BadConfig {
    case: &'static str,
    text: fn(&str) -> Option<String>,
    want: &'static [&'static str],
}

const GRPC_LISTEN: &str = "listen = \"127.0.0.1:0\"";

const BAD_CONFIGS: &[BadConfig] = &[
    BadConfig {
        case: "unknown key",
        // base_config's first line is state_dir: `colour` lands on line 2, at top level.
        text: |good| Some(good.replacen('\n', "\ncolour = 1\n", 1)),
        want: &[":2:1:", "unknown field `colour`", "colour"],
    },
    BadConfig {
        case: "wrong type",
        text: |good| Some(good.replacen(GRPC_LISTEN, "listen = 5", 1)),
        want: &[":3:", "invalid type", "(key `listen`)"],
    },
    BadConfig { case: "missing file", text: |_| None, want: &["cannot read config"] },
    BadConfig {
        case: "missing [grpc]",
        text: |good| Some(good.lines().next().unwrap_or_default().to_string() + "\n"),
        want: &["missing field `grpc`"],
    },
    BadConfig {
        case: "bad [metrics] listen",
        text: |good| Some(good.replace("[metrics]\nlisten = \"127.0.0.1:0\"", "[metrics]\nlisten = \"nowhere\"")),
        want: &["metrics.listen", "nowhere"],
    },
];

/// `AGENT [--log-format human] SUBCOMMAND --config CONFIG`.
fn agent_cmd(kind: AgentKind, sub: &str, config: &Path) -> Result<Ran> {
    run(
        kind.binary(),
        [OsStr::new("--log-format"), OsStr::new("human"), OsStr::new(sub), OsStr::new("--config"), config.as_os_str()],
    )
}

#[test]
fn agents_refuse_bad_configs_with_exit_78_naming_file_line_and_key() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let mut failures = Vec::new();
    for kind in AgentKind::ALL {
        let (cert, key_file) = pki.issue(kind.role(), kind.cert_name())?;
        let good = base_config(&dir.path().join("state"), &pki.ca(), &cert, &key_file);
        for bad in BAD_CONFIGS {
            let path = dir.path().join(format!("{}-{}.toml", kind.binary(), bad.case.replace([' ', '[', ']'], "_")));
            if let Some(text) = (bad.text)(&good) {
                ensure!(text != good, "case {} did not change the config", bad.case);
                std::fs::write(&path, text)?;
            }
            for sub in ["check", "run"] {
                let ran = agent_cmd(kind, sub, &path)?;
                let path_text = path.display().to_string();
                let missing: Vec<&str> = std::iter::once(path_text.as_str())
                    .chain(bad.want.iter().copied())
                    .filter(|w| !ran.stderr.contains(w))
                    .collect();
                if ran.code != Some(EXIT_CONFIG) || !missing.is_empty() {
                    failures.push(format!("{} {sub} ({}): missing {missing:?}; {ran}", kind.binary(), bad.case));
                }
            }
        }
    }
    ensure!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

/// One `check`/`run` of an agent on a config naming `cert` and `key`: the exit code wanted (None: any failure) and
/// what stdout+stderr must contain.
struct CertCase<'a> {
    case: &'static str,
    sub: &'static str,
    cert: &'a Path,
    key: &'a Path,
    code: Option<i32>,
    want: Vec<&'a str>,
}

#[test]
fn check_validates_the_certificate_files() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let mut failures = Vec::new();
    for (i, kind) in AgentKind::ALL.into_iter().enumerate() {
        let (cert, key_file) = pki.issue(kind.role(), kind.cert_name())?;
        // The certificate of the next agent: valid, from the lab CA, but for the wrong role.
        let wrong = AgentKind::ALL[(i + 1) % 3];
        let (wrong_cert, wrong_key) = pki.issue(wrong.role(), wrong.cert_name())?;
        let missing_key = dir.path().join(format!("{}-missing.key", kind.binary()));
        let role = kind.role().as_str();
        let wrong_cert_text = wrong_cert.display().to_string();
        let missing_key_text = missing_key.display().to_string();
        let identity = format!("spiffe://{DOMAIN}/{role}/{}", kind.cert_name());

        let cases = [
            CertCase {
                case: "valid",
                sub: "check",
                cert: &cert,
                key: &key_file,
                code: Some(0),
                want: vec!["ok", &identity],
            },
            CertCase {
                case: "wrong-role cert",
                sub: "check",
                cert: &wrong_cert,
                key: &wrong_key,
                code: Some(EXIT_CONFIG),
                want: vec![&wrong_cert_text, role, wrong.role().as_str()],
            },
            CertCase {
                case: "missing key",
                sub: "check",
                cert: &cert,
                key: &missing_key,
                code: Some(EXIT_CONFIG),
                want: vec![&missing_key_text],
            },
            CertCase {
                case: "wrong-role cert",
                sub: "run",
                cert: &wrong_cert,
                key: &wrong_key,
                code: None,
                want: vec![&wrong_cert_text, role, wrong.role().as_str()],
            },
        ];
        for CertCase { case, sub, cert, key, code: want_code, want } in cases {
            let path = dir.path().join(format!("{}-{sub}-{}.toml", kind.binary(), case.replace(' ', "_")));
            let text = base_config(&state, &pki.ca(), cert, key);
            std::fs::write(&path, text)?;
            let ran = agent_cmd(kind, sub, &path)?;
            let code_ok = match want_code {
                Some(c) => ran.code == Some(c),
                None => ran.code.is_some_and(|c| c != 0),
            };
            let all = ran.both();
            let missing: Vec<&&str> = want.iter().filter(|w| !all.contains(**w)).collect();
            if !code_ok || !missing.is_empty() {
                failures.push(format!(
                    "{} {sub} ({case}): want exit {want_code:?}, missing {missing:?}; {ran}",
                    kind.binary()
                ));
            }
        }
    }
    ensure!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

#[test]
fn install_and_uninstall_under_a_root() -> Result<()> {
    let pki = Pki::new()?;
    let tmp = tempfile::tempdir()?;
    for kind in AgentKind::ALL {
        let (cert, key_file) = pki.issue(kind.role(), kind.cert_name())?;
        let config = tmp.path().join(format!("{}.toml", kind.binary()));
        std::fs::write(&config, base_config(&tmp.path().join("state"), &pki.ca(), &cert, &key_file))?;
        let root = tmp.path().join(format!("root-{}", kind.binary()));
        std::fs::create_dir(&root)?;
        let (c, r) = (config.as_os_str(), root.as_os_str());
        let name = kind.binary();
        // The dns-agent's unit sandbox hides /tmp (PrivateTmp=yes), where this config lies: install refuses, naming
        // the path and the directive, and --force installs with a warning. The other units have no sandbox.
        let force: &[&OsStr] = if kind == AgentKind::Dns {
            for dry in [&["--dry-run"][..], &[]] {
                let mut args = vec![OsStr::new("install")];
                args.extend(dry.iter().map(OsStr::new));
                args.extend([OsStr::new("--root"), r, OsStr::new("--config"), c]);
                let ran = run(name, &args)?;
                ensure!(ran.code == Some(EXIT_CONFIG), "{name} install {dry:?} of a config under /tmp: {ran}");
                let want = format!(
                    "{} (config) is hidden by PrivateTmp=yes (the service gets its own empty /tmp)",
                    config.display()
                );
                ensure!(ran.stderr.contains(&want), "{name} install lacks {want:?}: {ran}");
                ensure!(ran.stderr.contains("(state_dir) is hidden by PrivateTmp=yes"), "{ran}");
                ensure!(ran.stderr.contains("--force installs anyway") && ran.stdout.is_empty(), "{ran}");
                ensure!(std::fs::read_dir(&root)?.next().is_none(), "{name} refused install wrote under the root");
            }
            &[OsStr::new("--force")]
        } else {
            &[]
        };

        let mut args = vec![OsStr::new("install"), "--dry-run".as_ref(), "--root".as_ref(), r, "--config".as_ref(), c];
        args.extend(force);
        let ran = run(name, &args)?;
        ensure!(ran.code == Some(0), "{name} install --dry-run: {ran}");
        let exec = format!("ExecStart={} run --config {}", bin(name)?.display(), config.display());
        for want in [exec.as_str(), "Type=notify\n"] {
            ensure!(ran.stdout.contains(want), "{name} install --dry-run lacks {want:?}: {ran}");
        }
        ensure!(std::fs::read_dir(&root)?.next().is_none(), "{name} install --dry-run wrote under the root");

        let mut args = vec![OsStr::new("install"), "--root".as_ref(), r, "--config".as_ref(), c];
        args.extend(force);
        let ran = run(name, &args)?;
        ensure!(ran.code == Some(0), "{name} install: {ran}");
        let unit = root.join(format!("etc/systemd/system/strata-{name}.service"));
        let text = std::fs::read_to_string(&unit).with_context(|| format!("{name} install: {ran}"))?;
        ensure!(text.contains(&exec) && text.contains("Type=notify\n"), "{}:\n{text}", unit.display());
        if kind == AgentKind::Dns {
            ensure!(ran.stderr.contains("warning: installing anyway (--force)"), "{ran}");
            let credential = format!("LoadCredential=grpc.key:{}\n", key_file.display());
            for want in ["User=strata-dns\n", "Group=strata-dns\n", &credential] {
                ensure!(text.contains(want), "{} lacks {want:?}:\n{text}", unit.display());
            }
        } else {
            ensure!(!text.contains("User=") && !text.contains("LoadCredential="), "{}:\n{text}", unit.display());
        }

        let ran = run(name, [OsStr::new("uninstall"), "--root".as_ref(), r])?;
        ensure!(ran.code == Some(0), "{name} uninstall: {ran}");
        ensure!(!unit.exists(), "{name} uninstall left {}", unit.display());
    }
    Ok(())
}

#[test]
fn service_file_hands_the_dns_agent_key_over_and_asks_for_it() -> Result<()> {
    let base = ["service-file", "--exec", "/usr/bin/dns-agent", "--config", "/etc/strata/dns-agent.toml"];
    // The dns-agent cannot read a root-owned key: without --key there is no unit to print.
    let ran = run("dns-agent", base)?;
    ensure!(ran.code == Some(EXIT_CONFIG) && ran.stdout.is_empty(), "{ran}");
    ensure!(ran.stderr.contains("runs as strata-dns") && ran.stderr.contains("--key"), "{ran}");
    let ran = run("dns-agent", base.iter().copied().chain(["--key", "etc/key"]))?;
    ensure!(ran.code == Some(EXIT_CONFIG) && ran.stderr.contains("must be absolute"), "{ran}");
    let ran = run("dns-agent", base.iter().copied().chain(["--key", "/etc/strata/pki/dns1.key"]))?;
    ensure!(ran.code == Some(0), "{ran}");
    for want in ["User=strata-dns\n", "Group=strata-dns\n", "LoadCredential=grpc.key:/etc/strata/pki/dns1.key\n"] {
        ensure!(ran.stdout.contains(want), "service-file lacks {want:?}: {ran}");
    }
    // Agents that run as root need no key and hand none over.
    let ran = run("services-agent", ["service-file", "--exec", "/usr/bin/services-agent", "--config", "/etc/s.toml"])?;
    ensure!(ran.code == Some(0) && !ran.stdout.contains("LoadCredential") && !ran.stdout.contains("User="), "{ran}");
    Ok(())
}

/// One broken set of TLS files: the config's ca, cert, key and crl, and what the refusal must name.
struct BrokenPki {
    case: &'static str,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    crl: Option<PathBuf>,
    want: Vec<String>,
}

/// Issue 18: `check` accepted a key of another certificate, a certificate of another CA, an expired one and a leaf as
/// the CA; `run` then bound, signalled READY and died with exit 1. Now both exit 78 naming the file and the reason,
/// and `run` does so before it binds anything (no `listening on` line).
#[test]
fn broken_tls_material_exits_78_before_listening() -> Result<()> {
    let pki = Pki::new()?;
    let other = Pki::new()?; // same domain and CA name, another key
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let mut failures = Vec::new();
    let text = |p: &Path| p.display().to_string();
    for kind in AgentKind::ALL {
        let role = kind.role();
        let name = kind.cert_name();
        let (cert, key_file) = pki.issue(role, name)?;
        let (_, stranger_key) = pki.issue(role, &format!("{name}-b"))?;
        let (foreign, foreign_key) = other.issue(role, name)?;
        let (expired, expired_key) = pki.issue_expired(role, &format!("{name}-old"))?;
        let (leaf, _) = pki.issue(Role::Admin, "alice")?;
        let (revoked, revoked_key) = pki.issue(role, &format!("{name}-gone"))?;
        labctl::pki::revoke(pki.dir(), &format!("{name}-gone"))?;
        let missing = dir.path().join("nope").join("ca.pem");
        let ok = |case, ca: &Path, cert: &Path, key: &Path, crl: Option<PathBuf>, want: &[&str]| BrokenPki {
            case,
            ca: ca.to_path_buf(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            crl,
            want: want.iter().map(|w| w.to_string()).collect(),
        };
        let cases = [
            ok(
                "mismatched key",
                &pki.ca(),
                &cert,
                &stranger_key,
                None,
                &[&text(&stranger_key), "does not belong to the certificate"],
            ),
            ok(
                "foreign ca",
                &pki.ca(),
                &foreign,
                &foreign_key,
                None,
                &[&text(&foreign), "not signed by a ca in", "labctl pki show"],
            ),
            ok("expired", &pki.ca(), &expired, &expired_key, None, &[&text(&expired), "expired on"]),
            ok("leaf as ca", &leaf, &cert, &key_file, None, &[&text(&leaf), "is not a ca certificate"]),
            ok("missing file", &missing, &cert, &key_file, None, &[&text(&missing), "cannot read"]),
            ok(
                "revoked",
                &pki.ca(),
                &revoked,
                &revoked_key,
                Some(pki.crl()),
                &[&text(&revoked), "is revoked by", &text(&pki.crl())],
            ),
            ok("crl of another ca", &pki.ca(), &cert, &key_file, Some(other.crl()), &[&text(&other.crl())]),
        ];
        for c in cases {
            let mut config = base_config(&state, &c.ca, &c.cert, &c.key);
            if let Some(crl) = &c.crl {
                config = with_crl(&config, crl);
            }
            let path = dir.path().join(format!("{}-{}.toml", kind.binary(), c.case.replace(' ', "_")));
            std::fs::write(&path, config)?;
            for sub in ["check", "run"] {
                let ran = agent_cmd(kind, sub, &path)?;
                let missing: Vec<&String> = c.want.iter().filter(|w| !ran.stderr.contains(w.as_str())).collect();
                let listened = ran.both().contains("listening on");
                if ran.code != Some(EXIT_CONFIG) || !missing.is_empty() || listened {
                    failures.push(format!(
                        "{} {sub} ({}): want exit 78, missing {missing:?}, listened {listened}; {ran}",
                        kind.binary(),
                        c.case
                    ));
                }
            }
        }
    }
    // A certificate that expires soon is accepted with a warning.
    let (soon, soon_key) = pki.issue_days(Role::DnsAgent, "dns-soon", 10)?;
    let path = dir.path().join("soon.toml");
    std::fs::write(&path, base_config(&state, &pki.ca(), &soon, &soon_key))?;
    let ran = agent_cmd(AgentKind::Dns, "check", &path)?;
    if ran.code != Some(0) || !ran.stderr.contains("warning") || !ran.stderr.contains("expires in ") {
        failures.push(format!("dns-agent check (expires in 10 days): want exit 0 and a warning; {ran}"));
    }
    ensure!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}
