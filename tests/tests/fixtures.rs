//! Proves each fixture against the real component: Docker engine + test image, a zfs-fuse pool, a Borg repository,
//! a QEMU VM over QMP. A missing component fails here (with "run `cargo xtask deps`"); nothing is skipped.
//! Knows the fixtures' public API only; nothing about the agents.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use strata_tests::fixtures::borg::BorgRepo;
use strata_tests::fixtures::docker::{Container, DockerEngine, TestImage, TEST_IMAGE_TAG};
use strata_tests::fixtures::qemu::QemuVm;
use strata_tests::fixtures::zfs::ZfsPool;
use strata_tests::fixtures::{cmd, wait_until};

#[test]
fn docker_image_runs_and_serves_http() -> Result<()> {
    let engine = DockerEngine::ensure()?;
    ensure!(!engine.server_version().is_empty());
    let image = TestImage::build(&engine, TEST_IMAGE_TAG)?;
    // Building again is a no-op.
    let again = TestImage::build(&engine, TEST_IMAGE_TAG)?;
    assert_eq!(again.tag(), image.tag());

    let out = engine.docker(["run", "--rm", image.tag(), "echo", "hello"])?;
    assert_eq!(out.trim(), "hello");

    let name;
    {
        let c = Container::run(&engine, image.tag(), &[], &[])?;
        name = c.name().to_string();
        assert_eq!(c.inspect("{{.State.Running}}")?, "true");
        let mut body = String::new();
        let answered =
            wait_until(Duration::from_secs(10), || match c.exec(&["wget", "-qO-", "http://127.0.0.1:8080/"]) {
                Ok(b) => {
                    body = b;
                    true
                }
                Err(_) => false,
            });
        ensure!(answered, "httpd in {} never answered on 8080", c.name());
        assert_eq!(body.trim(), "strata-test");
    }
    // Dropped: the container is gone.
    let ps = engine.docker(["ps", "-a", "--filter", &format!("name=^{name}$"), "--format", "{{.Names}}"])?;
    assert_eq!(ps.trim(), "", "container {name} survived its Drop");
    Ok(())
}

#[test]
fn zfs_pool_dataset_and_snapshot() -> Result<()> {
    let pool = ZfsPool::create()?;
    let (name, vdev) = (pool.name().to_string(), pool.vdev_path().to_path_buf());
    assert!(name.starts_with("strata_t"));
    let dataset = pool.create_dataset("data/app")?;
    assert_eq!(dataset, format!("{name}/data/app"));
    let dir = pool.dataset_mountpoint("data/app");
    assert_eq!(
        cmd::run_args("zfs", ["get", "-H", "-o", "value", "mountpoint", &dataset])?.trim(),
        dir.to_str().unwrap()
    );
    fs::write(dir.join("hello.txt"), "hello zfs").context("writing into the dataset")?;
    cmd::run_args("zfs", ["snapshot", &format!("{dataset}@s1")])?;
    let listed = cmd::run_args("zfs", ["list", "-H", "-o", "name", "-t", "snapshot", "-r", &name])?;
    assert!(listed.lines().any(|l| l == format!("{dataset}@s1")), "snapshot not listed: {listed:?}");
    assert_eq!(pool.list_snapshots()?, vec![format!("{dataset}@s1")]);

    drop(pool);
    let pools = cmd::run_args("zpool", ["list", "-H", "-o", "name"])?;
    assert!(!pools.lines().any(|l| l == name), "pool {name} survived its Drop");
    assert!(!vdev.exists(), "vdev {} survived its Drop", vdev.display());
    Ok(())
}

#[test]
fn zfs_pools_are_independent() -> Result<()> {
    let (a, b) = (ZfsPool::create_sized(128)?, ZfsPool::create_sized(128)?);
    assert_ne!(a.name(), b.name());
    assert_ne!(a.mountpoint(), b.mountpoint());
    Ok(())
}

#[test]
fn borg_create_and_list() -> Result<()> {
    let secret = "correct horse battery staple";
    let repo = BorgRepo::init(secret)?;
    assert!(repo.path().join("config").exists());
    assert!(repo.env().iter().all(|(_, v)| !v.contains(secret)), "passphrase leaked into the environment");

    let src = tempfile::tempdir()?;
    fs::write(src.path().join("a.txt"), "alpha")?;
    fs::create_dir(src.path().join("sub"))?;
    fs::write(src.path().join("sub/b.txt"), "beta")?;
    assert!(repo.list_archives()?.is_empty());
    let report = repo.create_archive("first", &[src.path()])?;
    assert_eq!(report["archive"]["name"], "first");
    // A plain borg call with the fixture's environment works too.
    let target = format!("{}::second", repo.path().display());
    cmd::run(repo.command().args(["create", &target]).arg(src.path()))?;
    assert_eq!(repo.list_archives()?, vec!["first".to_string(), "second".to_string()]);

    let scratch = repo.scratch_dir().to_path_buf();
    drop(repo);
    assert!(!Path::new(&scratch).exists(), "borg temp dir survived its Drop");
    Ok(())
}

#[test]
fn qemu_boot_stop_cont() -> Result<()> {
    let vm = QemuVm::boot(64)?;
    assert!(vm.disk_path().exists());
    assert!(vm.qmp_path().exists());
    let pid = vm.pid();
    assert_eq!(vm.status()?, "running");
    eprintln!("qemu {} pid {pid}: kvm={}", vm.name(), vm.kvm_enabled()?);
    vm.stop()?;
    assert_eq!(vm.status()?, "paused");
    vm.cont()?;
    assert_eq!(vm.status()?, "running");
    let err = vm.execute("no-such-command", None).unwrap_err();
    assert!(format!("{err:#}").contains("CommandNotFound"), "{err:#}");

    let dir = vm.dir().to_path_buf();
    drop(vm);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "qemu pid {pid} survived its Drop");
    assert!(!dir.exists());
    Ok(())
}
