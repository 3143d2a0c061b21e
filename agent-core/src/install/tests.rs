//! Tests of the installer: rendered units and plists (checked by systemd-analyze and the plist parser), installs
//! under a scratch root, the sandbox judge, the system commands an install would run.

use super::sandbox::lookup_user;
use super::systemd::{systemd_exec_arg, systemd_exec_path, systemd_value};
use super::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// The unit needs of the two root agents, as their `main` declares them.
const SERVICES_UNIT: UnitNeeds = UnitNeeds {
    after: &["docker.service", "zfs-mount.service", "zfs-fuse.service"],
    wants: &[],
    kill_mode: KillMode::Process { why: "job programs outlive a restart; the next start stops them" },
};
const HOST_UNIT: UnitNeeds = UnitNeeds {
    after: &["zfs-mount.service", "zfs-fuse.service"],
    wants: &[],
    kill_mode: KillMode::Process { why: "VMs started by the host agent outlive a restart of it." },
};
const ROOT: Privilege = Privilege::Root { why: "Root with host mounts and devices (50% of them).\nSecond line." };

/// The three agents, with privileges as their `main` declares them.
fn specs(exec: &Path, config: &Path) -> Vec<ServiceSpec> {
    let spec = |agent: &str, privilege, unit| ServiceSpec {
        agent: agent.to_owned(),
        description: format!("Strata {agent} (100% homelab)"),
        exec: exec.to_path_buf(),
        config: config.to_path_buf(),
        privilege,
        unit,
        credentials: vec![],
    };
    let key = config.with_extension("key");
    let dns = Privilege::SystemUser { name: "strata-dns", bind_privileged: true };
    vec![
        ServiceSpec {
            credentials: vec![Credential { name: "grpc.key".into(), path: key }],
            ..spec("dns-agent", dns, UnitNeeds::default())
        },
        spec("services-agent", ROOT, SERVICES_UNIT),
        spec("host-agent", ROOT, HOST_UNIT),
    ]
}

/// An executable and a config file whose paths need quoting and escaping (space, `%`, `$`; quotes and a
/// backslash in the config, where systemd allows them).
fn awkward_files(dir: &Path) -> (PathBuf, PathBuf) {
    let bin_dir = dir.join("bin dir %i $HOME");
    fs::create_dir_all(&bin_dir).unwrap();
    let exec = bin_dir.join("agent");
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &exec).unwrap();
    let config = dir.join("conf %n $USER \"it's\" \\.toml");
    fs::write(&config, "# test\n").unwrap();
    (exec, config)
}

fn unit_suffix(name: &str) -> bool {
    [".service", ".target", ".socket", ".mount", ".slice", ".timer", ".path", ".device", ".scope", ".swap"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// `systemd-analyze verify FILE`; `Err(complaints)` when it exits non-zero or says anything about our unit.
///
/// verify also loads the units ours references (network-online.target, multi-user.target) from the host and
/// reports problems in them, prefixed with *their* file or unit name; those lines are not about our unit and are
/// skipped (printed for the record). Every other line counts, including "Unknown key" warnings, which verify
/// prints without failing.
fn verify_unit(path: &Path) -> Result<(), String> {
    let unit = path.file_name().unwrap().to_str().unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(path)
        .output()
        .expect("systemd-analyze is required for this test (Debian: apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut complaints = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let subject = line.split_once(": ").map(|(s, _)| s.split(':').next().unwrap_or(s)).unwrap_or("");
        let other_file = subject.starts_with('/') && Path::new(subject) != path;
        let other_unit = !subject.contains('/') && unit_suffix(subject) && subject != unit;
        if other_file || other_unit {
            eprintln!("systemd-analyze, about another unit (ignored): {line}");
        } else {
            complaints.push(line.to_owned());
        }
    }
    if output.status.success() && complaints.is_empty() {
        Ok(())
    } else {
        Err(format!("{} {}", output.status, complaints.join("\n")))
    }
}

#[test]
#[cfg(target_os = "linux")]
fn generated_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, config) = awkward_files(dir.path());
    let root = dir.path().join("root");
    for spec in specs(&exec, &config) {
        let mut out = Vec::new();
        let path = install(&spec, Platform::Systemd, &root, false, &mut out).unwrap().unwrap();
        if let Err(complaints) = verify_unit(&path) {
            panic!("{}:\n{}\n{complaints}", spec.agent, systemd_unit(&spec));
        }
    }
}

#[test]
#[cfg(target_os = "linux")]
fn the_verify_check_catches_a_broken_unit() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, config) = awkward_files(dir.path());
    let spec = &specs(&exec, &config)[0];
    let path = dir.path().join(spec.unit_name());
    // An unknown key: verify only warns (exit 0), the check must still fail.
    fs::write(&path, systemd_unit(spec).replace("Type=notify\n", "Type=notify\nBogusKey=1\n")).unwrap();
    assert!(verify_unit(&path).unwrap_err().contains("BogusKey"));
    // A missing executable: verify fails.
    let missing = ServiceSpec { exec: dir.path().join("no-such-agent"), ..spec.clone() };
    fs::write(&path, systemd_unit(&missing)).unwrap();
    assert!(verify_unit(&path).is_err());
}

#[test]
fn units_carry_the_hardening_for_their_agent() {
    let specs = specs(Path::new("/usr/local/bin/x"), Path::new("/etc/strata/x.toml"));
    let dns = systemd_unit(&specs[0]);
    for want in [
        "Type=notify\n",
        "ExecStart=/usr/local/bin/x run --config /etc/strata/x.toml\n",
        "ExecReload=/bin/kill -HUP $MAINPID\n",
        "Restart=on-failure\n",
        "RestartSec=2s\n",
        "StateDirectory=strata/dns\n",
        "RestartPreventExitStatus=78\n",
        "LimitNOFILE=16384\n",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        "ProtectSystem=strict\n",
        "ProtectHome=yes\n",
        "PrivateTmp=yes\n",
        "PrivateDevices=yes\n",
        "NoNewPrivileges=yes\n",
        "After=network-online.target\n",
        "Wants=network-online.target\n",
        "WantedBy=multi-user.target\n",
        "Description=Strata dns-agent (100%% homelab)\n",
        "User=strata-dns\n",
        "Group=strata-dns\n",
        "LoadCredential=grpc.key:/etc/strata/x.key\n",
    ] {
        assert!(dns.contains(want), "dns-agent unit lacks {want:?}:\n{dns}");
    }
    let services = systemd_unit(&specs[1]);
    assert!(services.contains("StateDirectory=strata/services\n"));
    assert!(services.contains("NoNewPrivileges=yes\n") && services.contains("LimitNOFILE=16384\n"));
    assert!(services.contains("KillMode=process\n") && !dns.contains("KillMode"));
    assert!(!dns.contains("DynamicUser"), "the dns-agent runs as a static system user");
    for absent in [
        "DynamicUser",
        "CapabilityBoundingSet",
        "ProtectSystem",
        "PrivateDevices",
        "ProtectClock",
        "Private",
        "User=",
        "LoadCredential",
    ] {
        assert!(!services.contains(&format!("\n{absent}")), "services-agent unit has {absent}:\n{services}");
    }
    for unit in [&dns, &services] {
        assert!(!unit.contains("WatchdogSec"));
    }
    assert_eq!(specs[2].state_directory(), "strata/host");
}

#[test]
fn units_carry_the_privilege_ordering_and_kill_mode_their_agent_declares() {
    let specs = specs(Path::new("/usr/local/bin/x"), Path::new("/etc/strata/x.toml"));
    let services = systemd_unit(&specs[1]);
    let host = systemd_unit(&specs[2]);
    for (unit, after) in [
        (&services, "After=network-online.target docker.service zfs-mount.service zfs-fuse.service\n"),
        (&host, "After=network-online.target zfs-mount.service zfs-fuse.service\n"),
    ] {
        assert!(unit.contains(&format!("{after}Wants=network-online.target\n")), "{unit}");
    }
    assert!(
        services.contains(
            "# Root with host mounts and devices (50%% of them).\n# Second line.\nUMask=0027\n\
             # job programs outlive a restart; the next start stops them\nKillMode=process\n"
        ),
        "{services}"
    );
    assert!(host.contains("# VMs started by the host agent outlive a restart of it.\nKillMode=process\n"), "{host}");
    // A dynamic user gets the sandbox and its credentials, and no User=.
    let dynamic = ServiceSpec {
        privilege: Privilege::DynamicUser { bind_privileged: false },
        unit: UnitNeeds { wants: &["x.service"], ..UnitNeeds::default() },
        ..specs[0].clone()
    };
    dynamic.validate().unwrap();
    let unit = systemd_unit(&dynamic);
    for want in [
        "DynamicUser=yes\n",
        "LoadCredential=grpc.key:/etc/strata/x.key\n",
        "CapabilityBoundingSet=\n",
        "ProtectSystem=strict\n",
        "Wants=network-online.target x.service\n",
    ] {
        assert!(unit.contains(want), "{want:?}:\n{unit}");
    }
    assert!(!unit.contains("\nUser=") && !unit.contains("KillMode") && !unit.contains("UMask=0027"), "{unit}");
}

#[test]
fn exec_words_are_quoted_and_escaped() {
    assert_eq!(systemd_exec_arg("/usr/bin/x"), "/usr/bin/x");
    assert_eq!(systemd_exec_arg("/a b/%i $HOME \"q\" \\"), r#""/a b/%%i $$HOME \"q\" \\""#);
    assert_eq!(systemd_exec_path("/a b/%i $HOME"), r#""/a b/%%i $HOME""#);
    assert_eq!(systemd_exec_arg("line\nbreak"), "\"line break\"");
    assert_eq!(systemd_value("50% \\"), "50%% ");
}

#[test]
fn plists_parse_with_the_expected_keys() {
    let exec = Path::new("/Applications/Strata & Co/<bin>/host-agent");
    let config = Path::new("/Library/Application Support/Strata/it's \"here\".toml");
    for spec in specs(exec, config) {
        let xml = launchd_plist(&spec);
        let value = plist::Value::from_reader_xml(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}:\n{xml}"));
        let dict = value.as_dictionary().expect("a dictionary");
        assert_eq!(dict.get("Label").and_then(|v| v.as_string()), Some(&*format!("dev.strata.{}", spec.agent)));
        let args: Vec<&str> = dict
            .get("ProgramArguments")
            .and_then(|v| v.as_array())
            .expect("ProgramArguments")
            .iter()
            .map(|v| v.as_string().expect("a string"))
            .collect();
        assert_eq!(args, [exec.to_str().unwrap(), "run", "--config", config.to_str().unwrap()]);
        assert_eq!(dict.get("RunAtLoad").and_then(|v| v.as_boolean()), Some(true));
        let keep = dict.get("KeepAlive").and_then(|v| v.as_dictionary()).expect("KeepAlive dict");
        assert_eq!(keep.get("SuccessfulExit").and_then(|v| v.as_boolean()), Some(false));
        assert_eq!(keep.len(), 1);
        assert_eq!(dict.get("ThrottleInterval").and_then(|v| v.as_signed_integer()), Some(30));
        let log = format!("/Library/Logs/Strata/{}.log", spec.agent);
        assert_eq!(dict.get("StandardOutPath").and_then(|v| v.as_string()), Some(&*log));
        assert_eq!(dict.get("StandardErrorPath").and_then(|v| v.as_string()), Some(&*log));
        let env = dict.get("EnvironmentVariables").and_then(|v| v.as_dictionary()).expect("EnvironmentVariables");
        assert!(env.get("PATH").and_then(|v| v.as_string()).is_some_and(|p| p.contains("/opt/homebrew/bin")));
        assert_eq!(env.get(LAUNCHD_ENV).and_then(|v| v.as_string()), Some("launchd"));
        assert_eq!(dict.len(), 8, "{xml}");
    }
}

fn no_commands() -> impl FnMut(Cmd) -> Result<Output, RunError> {
    |cmd: Cmd| panic!("no system command may run with --root, got `{}`", cmd.display())
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_with_a_root_writes_the_file_and_runs_nothing() {
    for platform in [Platform::Systemd, Platform::Launchd] {
        for spec in specs(Path::new("/usr/local/bin/agent"), Path::new("/etc/strata/agent.toml")) {
            let root = tempfile::tempdir().unwrap();
            let mut out = Vec::new();
            let written = install_with(&spec, platform, root.path(), false, &mut out, &mut no_commands())
                .unwrap()
                .expect("a path");
            let path = unit_path(&spec, platform, root.path());
            assert_eq!(written, path);
            assert_eq!(fs::read_to_string(&path).unwrap(), render(&spec, platform));
            assert_eq!(mode(&path), 0o644);
            let printed = String::from_utf8(out).unwrap();
            assert_eq!(printed, format!("wrote {} (not activated: --root given)\n", path.display()));
            // Only the service file (and launchd's log directory): no temp file left behind.
            let siblings: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
            assert_eq!(siblings.len(), 1);

            // Reinstalling over a different file replaces it and says so.
            fs::write(&path, "stale").unwrap();
            let mut out = Vec::new();
            install_with(&spec, platform, root.path(), false, &mut out, &mut no_commands()).unwrap();
            assert!(String::from_utf8(out).unwrap().starts_with("replacing "));
            assert_eq!(fs::read_to_string(&path).unwrap(), render(&spec, platform));
        }
    }
    let root = tempfile::tempdir().unwrap();
    let spec = &specs(Path::new("/a"), Path::new("/b"))[0];
    install(spec, Platform::Launchd, root.path(), false, &mut Vec::new()).unwrap();
    assert!(root.path().join("Library/Logs/Strata").is_dir());
    assert_eq!(
        unit_path(spec, Platform::Launchd, root.path()),
        root.path().join("Library/LaunchDaemons/dev.strata.dns-agent.plist")
    );
    assert_eq!(
        unit_path(spec, Platform::Systemd, Path::new("/")),
        Path::new("/etc/systemd/system/strata-dns-agent.service")
    );
}

#[test]
fn dry_run_prints_the_file_and_writes_nothing() {
    for platform in [Platform::Systemd, Platform::Launchd] {
        for spec in specs(Path::new("/usr/local/bin/agent"), Path::new("/etc/strata/agent.toml")) {
            let root = tempfile::tempdir().unwrap();
            let mut out = Vec::new();
            let written = install(&spec, platform, root.path(), true, &mut out).unwrap();
            assert_eq!(written, None);
            assert_eq!(String::from_utf8(out).unwrap(), render(&spec, platform));
            assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0, "dry run wrote something");
        }
    }
}

#[test]
fn uninstall_removes_the_file_and_tolerates_a_missing_one() {
    for platform in [Platform::Systemd, Platform::Launchd] {
        let root = tempfile::tempdir().unwrap();
        let spec = specs(Path::new("/usr/local/bin/agent"), Path::new("/etc/strata/agent.toml")).remove(1);
        let path = install(&spec, platform, root.path(), false, &mut Vec::new()).unwrap().unwrap();

        // As the CLI calls it: no config path.
        let bare = ServiceSpec { config: PathBuf::new(), exec: PathBuf::new(), ..spec };
        let mut out = Vec::new();
        uninstall_with(&bare, platform, root.path(), true, &mut out, &mut no_commands()).unwrap();
        assert!(path.exists(), "dry run removed the file");
        assert_eq!(String::from_utf8(out).unwrap(), format!("would remove {}\n", path.display()));

        let mut out = Vec::new();
        uninstall_with(&bare, platform, root.path(), false, &mut out, &mut no_commands()).unwrap();
        assert!(!path.exists());
        assert_eq!(String::from_utf8(out).unwrap(), format!("removed {}\n", path.display()));

        let mut out = Vec::new();
        uninstall(&bare, platform, root.path(), false, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("is not installed: nothing to remove"));
    }
}

#[test]
fn system_root_runs_the_service_manager_commands() {
    let spec = &specs(Path::new("/usr/local/bin/agent"), Path::new("/etc/strata/agent.toml"))[0];
    let shown = |steps: Vec<Step>| steps.iter().map(|s| (s.cmd.display(), s.required)).collect::<Vec<_>>();
    let path = unit_path(spec, Platform::Launchd, Path::new("/"));
    assert_eq!(
        shown(activation_steps(spec, Platform::Systemd, Path::new("/x"))),
        [
            ("systemctl daemon-reload".to_owned(), true),
            ("systemctl enable --now strata-dns-agent.service".to_owned(), true)
        ]
    );
    assert_eq!(
        shown(activation_steps(spec, Platform::Launchd, &path)),
        [
            ("launchctl bootout system/dev.strata.dns-agent".to_owned(), false),
            ("launchctl bootstrap system /Library/LaunchDaemons/dev.strata.dns-agent.plist".to_owned(), true)
        ]
    );
    let (before, after) = deactivation_steps(spec, Platform::Systemd);
    assert_eq!(shown(before), [("systemctl disable --now strata-dns-agent.service".to_owned(), true)]);
    assert_eq!(shown(after), [("systemctl daemon-reload".to_owned(), true)]);

    // An optional step may fail; a required one stops the install with a message naming the service.
    let fail = |cmd: Cmd| -> Result<Output, RunError> {
        Err(RunError::Failed { cmd: cmd.display(), code: Some(5), stderr: "nope".into() })
    };
    let mut out = Vec::new();
    let steps = vec![Step::optional(Cmd::new("a")), Step::required(Cmd::new("b")), Step::required(Cmd::new("c"))];
    let err = run_steps(spec, steps, &mut out, &mut { fail }).unwrap_err();
    assert_eq!(err.to_string(), "service strata-dns-agent.service: `b` failed with exit code 5: nope");
    let printed = String::from_utf8(out).unwrap();
    assert_eq!(printed, "running: a\nignored: `a` failed with exit code 5: nope\nrunning: b\n");
}

#[test]
fn bad_specs_are_errors_not_panics() {
    let good = specs(Path::new("/usr/local/bin/agent"), Path::new("/etc/strata/agent.toml")).remove(0);
    let root = tempfile::tempdir().unwrap();
    let cases = [
        ServiceSpec { agent: "../../etc/passwd".into(), ..good.clone() },
        ServiceSpec { agent: String::new(), ..good.clone() },
        ServiceSpec { agent: "Dns".into(), ..good.clone() },
        ServiceSpec { exec: "bin/agent".into(), ..good.clone() },
        ServiceSpec { exec: "/opt/it's/agent".into(), ..good.clone() },
        ServiceSpec { config: PathBuf::new(), ..good.clone() },
        ServiceSpec { description: "two\nlines".into(), ..good.clone() },
        ServiceSpec { description: "trailing \\".into(), ..good.clone() },
        ServiceSpec { privilege: Privilege::SystemUser { name: "Root", bind_privileged: false }, ..good.clone() },
        ServiceSpec {
            privilege: Privilege::SystemUser { name: "x\nUser=root", bind_privileged: false },
            ..good.clone()
        },
        // Root reads its own keys: handing them over is a mistake.
        ServiceSpec { privilege: ROOT, ..good.clone() },
        ServiceSpec { privilege: Privilege::Root { why: "x\rUser=root" }, credentials: vec![], ..good.clone() },
        ServiceSpec { privilege: Privilege::Root { why: " " }, credentials: vec![], ..good.clone() },
        ServiceSpec {
            unit: UnitNeeds { kill_mode: KillMode::Process { why: "a\u{0}" }, ..UnitNeeds::default() },
            ..good.clone()
        },
        ServiceSpec { unit: UnitNeeds { after: &["x.service\nUser=root"], ..UnitNeeds::default() }, ..good.clone() },
        ServiceSpec { unit: UnitNeeds { wants: &["a b.service"], ..UnitNeeds::default() }, ..good.clone() },
        ServiceSpec { credentials: vec![Credential { name: "../k".into(), path: "/k".into() }], ..good.clone() },
        ServiceSpec { credentials: vec![Credential { name: "k".into(), path: "k".into() }], ..good.clone() },
        ServiceSpec {
            credentials: vec![Credential { name: "k".into(), path: "/k\nUser=root".into() }],
            ..good.clone()
        },
    ];
    for spec in cases {
        let err = install(&spec, Platform::Systemd, root.path(), false, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, InstallError::InvalidSpec { .. }), "{spec:?}: {err}");
        assert!(err.to_string().starts_with("invalid service spec for agent "), "{err}");
        // Rendering never panics and never lets a value break out of its line.
        let unit = systemd_unit(&spec);
        assert!(unit.lines().all(|l| !l.starts_with("lines") && l != "User=root"), "{unit}");
    }
    assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    let err =
        uninstall(&ServiceSpec { agent: "a/b".into(), ..good }, Platform::Systemd, root.path(), false, &mut Vec::new())
            .unwrap_err();
    assert!(matches!(err, InstallError::InvalidSpec { .. }));
}

fn needed(what: &str, path: &str, access: Access) -> NeededPath {
    NeededPath { what: what.into(), path: path.into(), real: None, access }
}

#[test]
fn hidden_paths_name_the_path_and_the_directive() {
    let dns = &specs(Path::new("/usr/bin/dns-agent"), Path::new("/etc/strata/dns-agent.toml"))[0];
    let services = &specs(Path::new("/usr/bin/x"), Path::new("/etc/strata/x.toml"))[1];
    let dns_box = sandbox(dns, Platform::Systemd);
    // The unit writes exactly what the sandbox says.
    let unit = systemd_unit(dns);
    for (on, directive) in [
        (dns_box.protect_system_strict, "ProtectSystem=strict\n"),
        (dns_box.protect_home, "ProtectHome=yes\n"),
        (dns_box.private_tmp, "PrivateTmp=yes\n"),
    ] {
        assert!(on && unit.contains(directive), "{directive}");
    }
    assert_eq!(dns_box.writable, [(PathBuf::from("/var/lib/strata/dns"), "StateDirectory=strata/dns".to_owned())]);
    assert_eq!(sandbox(services, Platform::Systemd), Sandbox::default());
    assert_eq!(sandbox(dns, Platform::Launchd), Sandbox::default());

    // Everything world-readable and searchable unless a case says otherwise.
    let open = FileInfo { uid: 0, gid: 0, mode: 0o755 };
    let key = FileInfo { uid: 0, gid: 0, mode: 0o600 };
    let group_key = FileInfo { uid: 0, gid: 120, mode: 0o640 };
    let locked_dir = FileInfo { uid: 0, gid: 0, mode: 0o700 };
    let stat = |p: &Path| -> Option<FileInfo> {
        match p.to_str()? {
            "/etc/strata/pki/dns1.key" | "/etc/strata/secret.toml" => Some(key),
            "/etc/strata/pki/group.key" => Some(group_key),
            "/srv/locked" => Some(locked_dir),
            "/nowhere" => None,
            _ => Some(open),
        }
    };
    let user = UserIds { uid: 120, gids: vec![120] };
    let cases: [(NeededPath, Option<&UserIds>, Option<&str>); 16] = [
        (needed("config", "/etc/strata/dns-agent.toml", Access::Read), Some(&user), None),
        (needed("config", "/home/x/config.toml", Access::Read), Some(&user), Some("is hidden by ProtectHome=yes (the service sees /home empty)")),
        (needed("config", "/root/dns.toml", Access::Read), None, Some("is hidden by ProtectHome=yes (the service sees /root empty)")),
        (needed("executable", "/run/user/0/dns-agent", Access::Execute), None, Some("is hidden by ProtectHome=yes (the service sees /run/user empty)")),
        (needed("config", "/tmp/a/dns.toml", Access::Read), None, Some("is hidden by PrivateTmp=yes (the service gets its own empty /tmp)")),
        (needed("state_dir", "/var/tmp/s", Access::Write), None, Some("is hidden by PrivateTmp=yes (the service gets its own empty /var/tmp)")),
        // `/tmpfoo` is not under /tmp, `/homes` not under /home.
        (needed("config", "/tmpfoo/dns.toml", Access::Read), Some(&user), None),
        (needed("config", "/homes/dns.toml", Access::Read), Some(&user), None),
        (needed("state_dir", "/var/lib/strata/dns", Access::Write), Some(&user), None),
        (needed("state_dir", "/var/lib/strata/dns/sub", Access::Write), Some(&user), None),
        (needed("state_dir", "/var/lib/dns", Access::Write), Some(&user), Some("is read-only under ProtectSystem=strict: only /var/lib/strata/dns (StateDirectory=strata/dns) is writable (use it; a drop-in adding ReadWritePaths= is not seen here: --force)")),
        (needed("[grpc] key", "/etc/strata/pki/dns1.key", Access::Read), Some(&user), Some("is not readable by User=strata-dns (mode 0600, owner uid 0 gid 0); the unit runs as that user")),
        // Group-readable by the user's group: fine; by another group, or for a user not created yet: not.
        (needed("dns.tls_key", "/etc/strata/pki/group.key", Access::Read), Some(&user), None),
        (needed("dns.tls_key", "/etc/strata/pki/group.key", Access::Read), None, Some("is not readable by User=strata-dns (mode 0640, owner uid 0 gid 120); the unit runs as that user")),
        (needed("[grpc] ca", "/srv/locked/ca.pem", Access::Read), Some(&user), Some("is under /srv/locked, which User=strata-dns cannot search (mode 0700, owner uid 0 gid 0)")),
        (needed("[grpc] crl", "/nowhere/crl.pem", Access::Read), Some(&user), None),
    ];
    for (n, ids, want) in cases {
        let got = hidden_paths(&dns_box, ids, std::slice::from_ref(&n), &stat);
        let got: Vec<String> = got.iter().map(|h| h.reason.clone()).collect();
        assert_eq!(got, want.into_iter().map(str::to_owned).collect::<Vec<_>>(), "{n:?} as {ids:?}");
    }
    // A symlink into a hidden place is judged where it leads; the message names both.
    let link =
        NeededPath { real: Some("/home/me/dns.toml".into()), ..needed("config", "/etc/strata/dns.toml", Access::Read) };
    let got = hidden_paths(&dns_box, Some(&user), &[link], &stat);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].to_string(),
        "/etc/strata/dns.toml (config) is hidden by ProtectHome=yes (the service sees /home empty) (it resolves to /home/me/dns.toml)"
    );
    // Root agents have no sandbox: nothing is hidden from them; root (uid 0) reads everything.
    let all = [needed("config", "/tmp/x.toml", Access::Read), needed("state_dir", "/root/s", Access::Write)];
    assert!(hidden_paths(&sandbox(services, Platform::Systemd), None, &all, &stat).is_empty());
    let root = UserIds { uid: 0, gids: vec![0] };
    assert!(
        hidden_paths(&dns_box, Some(&root), &[needed("k", "/etc/strata/pki/dns1.key", Access::Read)], &stat).is_empty()
    );
}

#[test]
fn a_missing_system_user_is_created_and_an_existing_one_is_left_alone() {
    let spec = &specs(Path::new("/usr/bin/dns-agent"), Path::new("/etc/strata/dns-agent.toml"))[0];
    let answer = |code: Option<i32>| {
        move |cmd: Cmd| -> Result<Output, RunError> {
            assert_eq!(cmd.display(), "getent passwd strata-dns");
            match code {
                None => Ok(Output {
                    status: Default::default(),
                    stdout: vec![],
                    stderr: String::new(),
                    elapsed: Duration::ZERO,
                }),
                Some(code) => Err(RunError::Failed { cmd: cmd.display(), code: Some(code), stderr: String::new() }),
            }
        }
    };
    let shown = |steps: Vec<Step>| steps.iter().map(|s| (s.cmd.display(), s.required)).collect::<Vec<_>>();
    assert_eq!(
        shown(user_steps(spec, &mut answer(Some(2)))),
        [(
            "useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
             --comment 'Strata dns-agent' strata-dns"
                .to_owned(),
            true
        )]
    );
    assert!(user_steps(spec, &mut answer(None)).is_empty());
    assert!(user_steps(spec, &mut answer(Some(1))).is_empty());
    let services = &specs(Path::new("/usr/bin/x"), Path::new("/etc/x.toml"))[1];
    assert!(user_steps(services, &mut no_commands()).is_empty());
}

#[test]
#[cfg(target_os = "linux")]
fn user_ids_come_from_id() {
    assert_eq!(lookup_user("root", &mut runner::run_ok_blocking), Some(UserIds { uid: 0, gids: vec![0] }));
    let nobody = lookup_user("nobody", &mut runner::run_ok_blocking).expect("nobody exists on Debian");
    assert_eq!(nobody.uid, 65534);
    assert_eq!(lookup_user("strata-no-such-user", &mut runner::run_ok_blocking), None);
}
