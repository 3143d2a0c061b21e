//! File-level restore on the real services-agent, zfs-fuse, borg and dockerd: an archive's file list paged, a single
//! file and a directory restored from an archive and from a local snapshot, in place and to a path, byte-identical,
//! with the rest of the dataset untouched (by hash); bad paths refused naming them before anything runs.
//! Knows the agent's config format and gRPC API; nothing of its internals.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use strata_proto::v1::{ListFilesRequest, ListFilesResponse, RestoreRequest};
use strata_tests::backuplab::{archive_of, Lab};

/// Every regular file and symlink under `root` (relative path → bytes, or `-> target`), skipping `skip` prefixes.
fn tree(root: &Path, skip: &[&str]) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let p = e?.path();
            let rel = p.strip_prefix(root)?.to_string_lossy().to_string();
            if skip.iter().any(|s| rel == *s || rel.starts_with(&format!("{s}/"))) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p)?;
            if m.file_type().is_symlink() {
                out.insert(rel, format!("-> {}", std::fs::read_link(&p)?.display()).into_bytes());
            } else if m.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                todo.push(p);
            } else {
                out.insert(rel, std::fs::read(&p)?);
            }
        }
    }
    Ok(out)
}

/// The writer container's own files (it runs before and after an in-place restore).
const WRITER_FILES: [&str; 2] = ["counter", "d"];

fn write(root: &Path, rel: &str, bytes: &[u8]) -> Result<()> {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().context("parent")?)?;
    std::fs::write(&p, bytes)?;
    Ok(())
}

async fn files(lab: &Lab, req: ListFilesRequest) -> std::result::Result<ListFilesResponse, tonic::Status> {
    let mut c = lab.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(c.list_files(ListFilesRequest { name: lab.service.clone(), ..req }).await?.into_inner())
}

async fn restore(lab: &Lab, req: RestoreRequest) -> std::result::Result<String, tonic::Status> {
    let mut c = lab.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let req = RestoreRequest { name: lab.service.clone(), ..req };
    Lab::drain(c.restore(req).await?.into_inner()).await
}

fn sub(t: &BTreeMap<String, Vec<u8>>, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    t.iter()
        .filter(|(k, _)| k.as_str() == prefix || k.starts_with(&format!("{prefix}/")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn single_files_and_directories_come_back_from_archives_and_snapshots_in_place_and_to_a_path() -> Result<()> {
    let mut lab = Lab::new("")?;
    lab.start(&[], "")?;
    let m = lab.mount();
    write(&m, "docs/a.txt", b"the original a\n")?;
    write(&m, "docs/sp ace \u{fc}.txt", b"spaced\n")?;
    write(&m, "tree/x/one.bin", &[7u8; 70_000])?;
    write(&m, "tree/x/deeper/two", b"two\n")?;
    write(&m, "tree/three", b"three\n")?;
    std::os::unix::fs::symlink("three", m.join("tree/link"))?;
    write(&m, "other/keep.txt", b"other data\n")?;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}\n{}", lab.agent().logs()))?;
    let archive = archive_of(&summary)?;
    let snapshot = lab
        .snapshots()?
        .into_iter()
        .find(|s| !s.starts_with("strata-prerestore-"))
        .context("the backup's local snapshot")?;
    let orig = tree(&m, &WRITER_FILES)?;

    // The list: paged, every page bounded, the pages together the whole archive; a prefix lists only it.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = files(&lab, ListFilesRequest { limit: 3, page_token: token.clone(), ..Default::default() })
            .await
            .map_err(|s| anyhow::anyhow!("list files: {s}"))?;
        ensure!(r.entries.len() <= 3 && r.archive == archive, "{r:?}");
        seen.extend(r.entries);
        pages += 1;
        if r.next_page_token.is_empty() {
            ensure!(seen.len() as u64 == r.total, "{} entries over {pages} pages, total {}", seen.len(), r.total);
            break;
        }
        token = r.next_page_token;
    }
    ensure!(pages > 2, "{pages} pages");
    let a = seen.iter().find(|e| e.path == "docs/a.txt").context("docs/a.txt listed")?;
    ensure!(a.r#type == "file" && a.size == 15 && a.mode == "-rw-r--r--" && a.mtime_unix > 1_700_000_000, "{a:?}");
    ensure!(seen.iter().any(|e| e.path == "tree/link" && e.r#type == "symlink" && e.link_target == "three"));
    ensure!(seen.iter().any(|e| e.path == "tree/x" && e.r#type == "dir"));
    let r = files(&lab, ListFilesRequest { path: "tree/x".into(), archive: archive.clone(), ..Default::default() })
        .await
        .map_err(|s| anyhow::anyhow!("list tree/x: {s}"))?;
    let paths: Vec<&str> = r.entries.iter().map(|e| e.path.as_str()).collect();
    ensure!(paths.len() == 4 && paths.iter().all(|p| p.starts_with("tree/x")), "{paths:?}");

    // The same through the real labctl: a bounded table page ending with the command for the next one, and JSON.
    let (cert, key) = lab.pki.issue(agent_core::identity::Role::Admin, "alice")?;
    let inventory = lab.dir.path().join("labctl.toml");
    strata_tests::harness::write_inventory(&inventory, &lab.pki.ca(), &cert, &key, &[lab.agent()])?;
    let labctl = strata_tests::harness::bin("labctl")?;
    let run = |args: &[&str]| -> Result<(String, String)> {
        let out = std::process::Command::new(&labctl).arg("--config").arg(&inventory).args(args).output()?;
        let (o, e) =
            (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
        ensure!(out.status.success(), "labctl {args:?}: {o}{e}");
        Ok((o, e))
    };
    let (table, more) = run(&["services", "files", &lab.service, "tree", "--limit", "2"])?;
    ensure!(table.contains(&format!("archive {archive} in repository")) && table.contains("MODIFIED"), "{table}");
    ensure!(table.lines().filter(|l| l.contains("tree")).count() == 2, "{table}");
    let next = format!("next page: labctl services files {} tree --page-token 2:{archive}", lab.service);
    ensure!(more.contains(&next), "{more}");
    let (json, _) =
        run(&["--json", "services", "files", &lab.service, "tree", "--page-token", &format!("2:{archive}")])?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    ensure!(v["source"] == archive.as_str() && v["entries"].as_array().is_some_and(|e| !e.is_empty()), "{json}");

    // The live data moves on after the backup.
    write(&m, "docs/a.txt", b"changed since the backup\n")?;
    std::fs::remove_file(m.join("tree/x/deeper/two"))?;
    write(&m, "tree/x/new-since", b"new\n")?;
    write(&m, "other/keep.txt", b"other data, changed after the backup: must stay\n")?;
    write(&m, "other/added.txt", b"added after the backup: must stay\n")?;

    // To a path: only that file or directory, at its relative path, byte-identical.
    let base = lab.dir.path().to_path_buf();
    for (from, p, dir) in [
        (("archive", archive.as_str()), "docs/a.txt", "to-file-a"),
        (("archive", archive.as_str()), "tree", "to-dir-a"),
        (("snapshot", snapshot.as_str()), "docs/sp ace \u{fc}.txt", "to-file-s"),
        (("snapshot", snapshot.as_str()), "tree/x", "to-dir-s"),
    ] {
        let to = base.join(dir);
        let mut req = RestoreRequest { path: p.into(), to: to.display().to_string(), ..Default::default() };
        if from.0 == "archive" {
            req.archive = from.1.into();
        } else {
            req.snapshot = from.1.into();
        }
        let msg = restore(&lab, req).await.map_err(|s| anyhow::anyhow!("{from:?} {p} to {dir}: {s}"))?;
        ensure!(msg.contains("not touched"), "{msg}");
        let got = tree(&to, &[])?;
        let want = sub(&orig, p);
        let mut want_with_parents = want.clone();
        let mut parent = Path::new(p).parent();
        while let Some(pp) = parent.filter(|pp| !pp.as_os_str().is_empty()) {
            want_with_parents.insert(format!("{}/", pp.display()), Vec::new());
            parent = pp.parent();
        }
        if want.keys().any(|k| k == &format!("{p}/")) || want.keys().any(|k| k.starts_with(&format!("{p}/"))) {
            want_with_parents.insert(format!("{p}/"), Vec::new());
        }
        ensure!(got == want_with_parents, "{from:?} {p}: got {:?}, want {:?}", got.keys(), want_with_parents.keys());
    }

    // In place: only the path is replaced, the rest (changed since the backup) stays as it is, byte for byte.
    for (from, p) in [
        (("archive", archive.as_str()), "docs/a.txt"),
        (("archive", archive.as_str()), "tree/x"),
        (("snapshot", snapshot.as_str()), "tree"),
        (("snapshot", snapshot.as_str()), "docs/a.txt"),
    ] {
        // Each safety snapshot gets its own second (they are named to the second).
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        // Changed again before each restore.
        write(&m, "docs/a.txt", b"changed again\n")?;
        write(&m, "tree/x/new-since", b"new\n")?;
        let _ = std::fs::remove_file(m.join("tree/three"));
        let before = tree(&m, &WRITER_FILES)?;
        let snaps_before = lab.snapshots()?.len();
        let mut req = RestoreRequest { path: p.into(), ..Default::default() };
        if from.0 == "archive" {
            req.archive = from.1.into();
        } else {
            req.snapshot = from.1.into();
        }
        let msg = restore(&lab, req).await.map_err(|s| anyhow::anyhow!("{from:?} {p} in place: {s}"))?;
        ensure!(msg.contains("in place") && msg.contains("safety snapshot"), "{msg}");
        ensure!(lab.snapshots()?.len() == snaps_before + 1, "one safety snapshot per in-place restore");
        ensure!(lab.writer_running()?, "the service runs again");
        let after = tree(&m, &WRITER_FILES)?;
        ensure!(
            sub(&after, p) == sub(&orig, p),
            "{from:?} {p}: {:?} != {:?}",
            sub(&after, p).keys(),
            sub(&orig, p).keys()
        );
        let rest = |t: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
            t.iter()
                .filter(|(k, _)| !(k.as_str() == p || k.starts_with(&format!("{p}/"))))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        ensure!(rest(&after) == rest(&before), "{from:?} {p}: the rest of the dataset changed");
    }
    ensure!(std::fs::read(m.join("other/added.txt"))? == b"added after the backup: must stay\n");

    // Bad paths: refused naming them, before anything runs (no safety snapshot, the service untouched).
    let snaps = lab.snapshots()?;
    let live = tree(&m, &WRITER_FILES)?;
    for (p, code, why) in [
        ("-rf", tonic::Code::InvalidArgument, "path: `-rf` starts with `-`"),
        ("docs/../../etc", tonic::Code::InvalidArgument, "path: `docs/../../etc` has a `..` component"),
        ("/etc/passwd", tonic::Code::InvalidArgument, "path: `/etc/passwd` is absolute"),
        ("docs\0x", tonic::Code::InvalidArgument, "path: contains a NUL byte"),
        ("nosuch/file", tonic::Code::FailedPrecondition, "--path nosuch/file is not in archive"),
    ] {
        let req = RestoreRequest { path: p.into(), archive: archive.clone(), ..Default::default() };
        let e = restore(&lab, req).await.err().context("a bad path was accepted")?;
        ensure!(e.code() == code && e.message().contains(why), "{p:?}: {e:?}");
        let l = ListFilesRequest { path: p.into(), ..Default::default() };
        let e = files(&lab, l).await.err().context("a bad path was listed")?;
        ensure!(e.code() == code, "{p:?}: {e:?}");
    }
    let req = RestoreRequest { path: "nosuch".into(), snapshot: snapshot.clone(), ..Default::default() };
    let e = restore(&lab, req).await.err().context("a missing path in a snapshot was accepted")?;
    ensure!(e.message().contains("--path nosuch is not in snapshot"), "{e:?}");
    ensure!(lab.snapshots()? == snaps, "a refused restore takes no safety snapshot");
    ensure!(tree(&m, &WRITER_FILES)? == live, "a refused restore touches nothing");
    ensure!(lab.writer_running()?, "a refused restore leaves the service running");
    ensure!(lab.leftovers()?.is_empty(), "leftovers: {:?}", lab.leftovers()?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_single_path_restore_resumes_that_path_only() -> Result<()> {
    let mut lab = Lab::new("")?;
    lab.start(&[], "")?;
    let m = lab.mount();
    write(&m, "docs/a.txt", b"in the archive\n")?;
    let summary = lab.backup().await.map_err(|s| anyhow::anyhow!("backup: {s}\n{}", lab.agent().logs()))?;
    let archive = archive_of(&summary)?;
    write(&m, "docs/a.txt", b"changed since\n")?;
    write(&m, "after-backup", b"precious\n")?;
    // The agent dies while writing the path back; another tool snapshots the dataset and writes to it, so that
    // recovery cannot prove a rollback safe and holds the restore.
    let req = RestoreRequest {
        name: lab.service.clone(),
        archive: archive.clone(),
        path: "docs/a.txt".into(),
        ..Default::default()
    };
    lab.crash_restore_at("extract", req).await?;
    let other = format!("{}@othertool-1", lab.dataset);
    strata_tests::fixtures::cmd::run_args("zfs", ["snapshot", other.as_str()])?;
    write(&m, "second-new", b"written after the other snapshot\n")?;
    lab.start(&[], "")?;
    let h = lab.history().await?;
    let logs = || lab.agent().logs();
    ensure!(
        h.iter().any(|e| e.kind == "restore" && e.result == "failed" && e.error.contains("--resume")),
        "not held: {h:?}\n{}",
        logs()
    );
    tokio::time::sleep(std::time::Duration::from_secs(1)).await; // the resume's safety snapshot gets its own second
    let msg = lab.decide(true).await.map_err(|s| anyhow::anyhow!("resume: {s}\n{}", logs()))?;
    ensure!(msg.contains("resumed the interrupted restore") && msg.contains("docs/a.txt"), "{msg}");
    ensure!(std::fs::read(m.join("docs/a.txt"))? == b"in the archive\n", "the path was restored");
    ensure!(std::fs::read(m.join("after-backup"))? == b"precious\n", "the resume restored more than the path");
    ensure!(m.join("second-new").exists(), "the resume restored more than the path");
    ensure!(lab.writer_running()?, "resume starts the service");
    Ok(())
}
