//! Compose as people write it, end to end (real dockerd, docker-compose 1.29, the real services-agent): the
//! discovered override and `.env` take effect, profiles, a redeploy decided by the resolved configuration (an env file
//! outside the stack folder redeploys, a README does not), refusals that leave the running stack alone, and a
//! mode-checked `secrets_dir` whose values reach the containers but never the agent's log or its answers.
//! Knows the agent's config format and gRPC API; nothing of its internals.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use strata_tests::fixtures::docker::{DockerEngine, TEST_IMAGE_TAG};
use strata_tests::serviceslab::{hub_compose, ids, running, Lab};

/// The environment of a container, one `KEY=VALUE` per entry (from `docker inspect`).
fn env(engine: &DockerEngine, container: &str) -> Result<Vec<String>> {
    let out = engine.docker(["inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", container])?;
    Ok(out.lines().map(String::from).filter(|l| !l.is_empty()).collect())
}

fn label(engine: &DockerEngine, container: &str, key: &str) -> Result<String> {
    Ok(engine
        .docker(["inspect", "-f", &format!("{{{{index .Config.Labels {key:?}}}}}"), container])?
        .trim()
        .to_string())
}

/// A spoke without a compose `version:` (the compose spec, which has profiles): `web` reads `.env`'s GREETING and an
/// env file outside the stack folder; `tools` runs only with profile `debug`.
fn spoke(hub_net: &str) -> String {
    format!(
        "services:\n  web:\n    image: {TEST_IMAGE_TAG}\n    env_file: ../shared/x.env\n    environment:\n      \
         FROM_DOTENV: ${{GREETING}}\n    networks: [default, hub]\n  tools:\n    image: {TEST_IMAGE_TAG}\n    \
         profiles: [\"debug\"]\n    networks: [default, hub]\nnetworks:\n  hub:\n    external: true\n    name: {hub_net}\n"
    )
}

const OVERRIDE: &str =
    "services:\n  web:\n    labels:\n      strata.test.override: \"yes\"\n    environment:\n      OVERRIDE: \"1\"\n";

fn web(s: &strata_proto::v1::Service) -> Result<String> {
    Ok(s.containers.iter().find(|c| c.name.contains("_web_")).context("no web container")?.name.clone())
}

/// docker-compose's own discovery in the stack directory: `docker-compose.override.yml` and `.env` take effect; the
/// redeploy decision follows the resolved config (an `env_file:` outside the stack folder changes it, a README does
/// not); a missing file named by the override, an unknown profile and a missing `files` entry are refused naming them
/// while the stack keeps running; a profile that exists starts its service, `files` turns the override discovery off
/// and `env_files` replaces `.env`.
#[tokio::test(flavor = "multi_thread")]
async fn compose_discovers_the_override_and_env_and_redeploys_on_the_resolved_config() -> Result<()> {
    let mut lab = Lab::new()?;
    let hub = lab.hub_net();
    let a = lab.name("a");
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    lab.origin.write(&format!("{a}/docker-compose.yml"), &spoke(&hub))?;
    lab.origin.write(&format!("{a}/docker-compose.override.yml"), OVERRIDE)?;
    lab.origin.write(&format!("{a}/.env"), "GREETING=hello-from-dotenv\n")?;
    lab.origin.write("shared/x.env", "SHARED=one\n")?;
    let first = lab.origin.commit("a spoke with an override, .env and a shared env file")?;
    lab.start(&[("a", &[], &[])])?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty(), "{:?}\n{}", r.errors, lab.agent().logs());
    let s = lab.wait_service("a", Duration::from_secs(20), running).await?;
    assert_eq!(s.containers.len(), 1, "tools has a profile nobody asked for: {s:?}");
    let name = web(&s)?;
    let e = env(&lab.engine, &name)?;
    for want in ["FROM_DOTENV=hello-from-dotenv", "OVERRIDE=1", "SHARED=one"] {
        assert!(e.iter().any(|x| x == want), "{want} missing in {e:?}");
    }
    assert_eq!(label(&lab.engine, &name, "strata.test.override")?, "yes");
    let hash = s.config_hash.clone();
    assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "config_hash {hash:?}");
    let image_id = lab.engine.docker(["image", "inspect", "-f", "{{.Id}}", TEST_IMAGE_TAG])?.trim().to_string();
    assert!(s.containers.iter().all(|c| c.image_digest == image_id), "{s:?} vs {image_id}");
    let first_ids = ids(&s);

    // A README in the stack folder: a new commit, the same resolved config: nothing is touched.
    lab.origin.write(&format!("{a}/README.md"), "# a\n")?;
    lab.origin.commit("a: document it")?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty() && r.redeployed.is_empty(), "README only: {r:?}");
    let s = lab.service("a").await?;
    assert_eq!(ids(&s), first_ids, "a README redeployed the stack");
    assert_eq!((s.deployed_commit.as_str(), s.config_hash.as_str()), (first.as_str(), hash.as_str()));

    // The env file outside the stack folder changes: the stack is redeployed with it.
    lab.origin.write("shared/x.env", "SHARED=two\n")?;
    lab.origin.commit("shared: two")?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty() && r.redeployed == [a.clone()], "shared env file: {r:?}");
    let s = lab.wait_service("a", Duration::from_secs(20), |s| running(s) && ids(s) != first_ids).await?;
    assert!(env(&lab.engine, &web(&s)?)?.contains(&"SHARED=two".to_string()));
    assert_ne!(s.config_hash, hash, "the resolved config changed");
    let second_ids = ids(&s);

    // The override names a file that does not exist: refused naming it; the stack keeps running.
    let broken = format!("{OVERRIDE}    env_file: ./missing.env\n");
    lab.origin.write(&format!("{a}/docker-compose.override.yml"), &broken)?;
    lab.origin.commit("a: the override names a missing file")?;
    let r = lab.sync().await?;
    let err = r.errors.get(&a).with_context(|| format!("no refusal: {r:?}"))?;
    assert!(err.contains("missing.env") && err.contains("left as it was"), "{err}");
    let s = lab.service("a").await?;
    assert!(running(&s) && ids(&s) == second_ids, "{s:?}");
    lab.origin.write(&format!("{a}/docker-compose.override.yml"), OVERRIDE)?;
    lab.origin.commit("a: fixed")?;

    // A profile no service has: compose would accept it silently; the agent refuses it naming it.
    lab.service_keys.insert("a".into(), "profiles = [\"nosuch\"]\n".into());
    lab.start(&[("a", &[], &[])])?;
    let r = lab.sync().await?;
    let err = r.errors.get(&a).with_context(|| format!("no refusal: {r:?}"))?;
    assert!(err.contains("profile nosuch") && err.contains(&a), "{err}");
    let s = lab.service("a").await?;
    assert!(running(&s) && ids(&s) == second_ids, "{s:?}");

    // `files` naming one that is not there: refused naming it; the stack keeps running.
    lab.service_keys.insert("a".into(), "files = [\"docker-compose.yml\", \"prod.yml\"]\n".into());
    lab.start(&[("a", &[], &[])])?;
    let r = lab.sync().await?;
    let err = r.errors.get(&a).with_context(|| format!("no refusal: {r:?}"))?;
    assert!(err.contains(&a) && err.contains("files names prod.yml, which does not exist"), "{err}");
    assert!(ids(&lab.service("a").await?) == second_ids);

    // A profile that exists: its service starts beside the others; explicit `files` (no override discovery) and an
    // env file read instead of `.env`.
    lab.origin.write(&format!("{a}/prod.env"), "GREETING=hello-from-prod\n")?;
    lab.origin.commit("a: a prod env file")?;
    lab.service_keys.insert(
        "a".into(),
        "profiles = [\"debug\"]\nfiles = [\"docker-compose.yml\"]\nenv_files = [\"prod.env\"]\n".into(),
    );
    lab.start(&[("a", &[], &[])])?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty(), "{r:?}");
    let s = lab.wait_service("a", Duration::from_secs(20), |s| running(s) && s.containers.len() == 2).await?;
    assert!(s.containers.iter().any(|c| c.name.contains("_tools_")), "{s:?}");
    let e = env(&lab.engine, &web(&s)?)?;
    assert!(e.contains(&"FROM_DOTENV=hello-from-prod".to_string()) && !e.contains(&"OVERRIDE=1".to_string()), "{e:?}");
    Ok(())
}

fn chmod(p: &Path, mode: u32) -> Result<()> {
    Ok(std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?)
}

/// `secrets_dir`: its `KEY=VALUE` files reach compose's environment (interpolated and passed through), a directory
/// or file that others may read is refused naming the path and mode (nothing deployed, or the running stack left
/// alone), a changed value redeploys, and no value shows in the agent's log (at debug) or its answers.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_dir_is_mode_checked_and_its_values_never_shown() -> Result<()> {
    const DB: &str = "s3cr3t-db-Zq81x";
    const TOKEN: &str = "tok-Vn42-xyzzy";
    const DB2: &str = "s3cr3t-db-second-Hk7";
    let mut lab = Lab::new()?;
    lab.env = vec![("RUST_LOG", "debug")];
    let hub = lab.hub_net();
    let b = lab.name("b");
    lab.origin.write(&format!("{}/docker-compose.yml", lab.name("proxy")), &hub_compose(&hub))?;
    let compose = format!(
        "services:\n  web:\n    image: {TEST_IMAGE_TAG}\n    environment:\n      DB_PASSWORD: ${{DB_PASSWORD}}\n      \
         API_TOKEN:\n    networks: [default, hub]\nnetworks:\n  hub:\n    external: true\n    name: {hub}\n"
    );
    lab.origin.write(&format!("{b}/docker-compose.yml"), &compose)?;
    lab.origin.commit("b reads its secrets from the environment")?;
    let secrets = lab.dir.path().join("secrets").join("b");
    std::fs::create_dir_all(&secrets)?;
    let db_file = secrets.join("db.env");
    std::fs::write(&db_file, format!("# the database\nDB_PASSWORD={DB}\n"))?;
    std::fs::write(secrets.join("token.env"), format!("API_TOKEN={TOKEN}\n"))?;
    for f in ["db.env", "token.env"] {
        chmod(&secrets.join(f), 0o600)?;
    }
    chmod(&secrets, 0o755)?;
    lab.service_keys.insert("b".into(), format!("secrets_dir = {:?}\n", secrets.display().to_string()));
    lab.start(&[("b", &[], &[])])?;

    // A directory others may enter: refused naming it and its mode; nothing deployed.
    let r = lab.sync().await?;
    let err = r.errors.get(&b).with_context(|| format!("no refusal: {r:?}"))?;
    assert!(err.contains(&secrets.display().to_string()) && err.contains("mode 755"), "{err}");
    assert!(lab.service("b").await?.containers.is_empty());

    chmod(&secrets, 0o700)?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty(), "{:?}", r.errors);
    let s = lab.wait_service("b", Duration::from_secs(20), running).await?;
    let e = env(&lab.engine, &s.containers[0].name)?;
    for want in [format!("DB_PASSWORD={DB}"), format!("API_TOKEN={TOKEN}")] {
        assert!(e.contains(&want), "{want} missing in {e:?}");
    }
    let first_ids = ids(&s);

    // A file others may read: refused naming it; the running stack is left alone.
    chmod(&db_file, 0o644)?;
    let r = lab.sync().await?;
    let err = r.errors.get(&b).with_context(|| format!("no refusal: {r:?}"))?;
    assert!(err.contains(&db_file.display().to_string()) && err.contains("mode 644"), "{err}");
    let s = lab.service("b").await?;
    assert!(running(&s) && ids(&s) == first_ids, "{s:?}");

    // A new value (no commit): the resolved config changes, the stack is redeployed with it.
    std::fs::write(&db_file, format!("DB_PASSWORD={DB2}\n"))?;
    chmod(&db_file, 0o600)?;
    let r = lab.sync().await?;
    ensure!(r.errors.is_empty() && r.redeployed == [b.clone()], "{r:?}");
    let s = lab.wait_service("b", Duration::from_secs(20), |s| running(s) && ids(s) != first_ids).await?;
    assert!(env(&lab.engine, &s.containers[0].name)?.contains(&format!("DB_PASSWORD={DB2}")));

    let answers = format!("{:?}", lab.services().await?);
    let logs = lab.agent().logs();
    assert!(logs.contains("docker-compose"), "the debug log shows compose's argv: {logs}");
    for secret in [DB, TOKEN, DB2] {
        assert!(!logs.contains(secret), "the agent's log shows a secret value");
        assert!(!answers.contains(secret), "ListServices shows a secret value: {answers}");
    }
    Ok(())
}
