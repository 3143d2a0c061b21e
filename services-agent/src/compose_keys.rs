//! The compose keys of a `[[services]]` entry (`files`, `env_files`, `profiles`, `secrets_dir`) validated into
//! [`StackCompose`]. Knows these keys' rules; must not know how compose is run (that is `compose`) nor the rest of the
//! config file (that is `config`, which calls [`validate`]).

use std::path::{Component, Path, PathBuf};

use agent_core::config::ConfigError;

/// How compose runs one service's stack (all empty: compose's own discovery, `.env`, no profile, no secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackCompose {
    /// `-f` each, relative to the stack directory, in order; empty: compose discovers the file and its override.
    pub files: Vec<PathBuf>,
    /// `--env-file`, relative to the stack directory (read instead of `.env`; compose v1.29 takes one).
    pub env_file: Option<PathBuf>,
    /// `--profile` each; each must be used by a service of the resolved compose file.
    pub profiles: Vec<String>,
    /// Absolute, outside the checkout: its `KEY=VALUE` files become the compose process's environment.
    pub secrets_dir: Option<PathBuf>,
}

/// A path inside the stack directory: relative, no `..`, not empty.
fn inside(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Validates service `i`'s compose keys; `checkout_dir` is the stacks checkout (a `secrets_dir` must be outside it).
pub fn validate(
    path: &Path,
    i: usize,
    (files, env_files, profiles): (Vec<PathBuf>, Vec<PathBuf>, Vec<String>),
    secrets_dir: Option<PathBuf>,
    checkout_dir: &Path,
) -> Result<StackCompose, ConfigError> {
    let bad = |key: String, msg: String| ConfigError::invalid(path, format!("services[{i}].{key}"), msg);
    for (j, f) in files.iter().enumerate() {
        if !inside(f) {
            return Err(bad(
                format!("files[{j}]"),
                format!("`{}` must be a path inside the stack directory", f.display()),
            ));
        }
    }
    for (j, f) in env_files.iter().enumerate() {
        if !inside(f) {
            return Err(bad(
                format!("env_files[{j}]"),
                format!("`{}` must be a path inside the stack directory", f.display()),
            ));
        }
    }
    if env_files.len() > 1 {
        return Err(bad(
            "env_files".into(),
            "names more than one file: docker-compose v1.29 reads one `--env-file` (it replaces `.env`)".into(),
        ));
    }
    for (j, p) in profiles.iter().enumerate() {
        let ok = !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
        if !ok {
            return Err(bad(format!("profiles[{j}]"), format!("`{p}` is not a valid profile name")));
        }
    }
    if let Some(d) = &secrets_dir {
        if !d.is_absolute() || d.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(bad("secrets_dir".into(), format!("`{}` must be an absolute path", d.display())));
        }
        if d.starts_with(checkout_dir) || checkout_dir.starts_with(d) {
            return Err(bad(
                "secrets_dir".into(),
                format!("`{}` must be outside the stacks checkout {}", d.display(), checkout_dir.display()),
            ));
        }
    }
    Ok(StackCompose { files, env_file: env_files.into_iter().next(), profiles, secrets_dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(files: &[&str], env: &[&str], profiles: &[&str], secrets: Option<&str>) -> Result<StackCompose, String> {
        let p = |x: &[&str]| x.iter().map(PathBuf::from).collect::<Vec<_>>();
        validate(
            Path::new("/etc/strata/services.toml"),
            1,
            (p(files), p(env), profiles.iter().map(|s| s.to_string()).collect()),
            secrets.map(PathBuf::from),
            Path::new("/var/lib/strata/stacks"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_are_checked_and_named() {
        let ok =
            v(&["compose.yaml", "prod/compose.prod.yaml"], &["prod.env"], &["debug"], Some("/etc/strata/secrets/web"))
                .unwrap();
        assert_eq!(ok.files, [PathBuf::from("compose.yaml"), PathBuf::from("prod/compose.prod.yaml")]);
        assert_eq!(ok.env_file.as_deref(), Some(Path::new("prod.env")));
        assert_eq!(v(&[], &[], &[], None).unwrap(), StackCompose::default());
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], Option<&'a str>, &'a str);
        let cases: [Case<'_>; 8] = [
            (&["../other/compose.yaml"], &[], &[], None, "key `services[1].files[0]`: `../other/compose.yaml` must be"),
            (&["a.yaml", "/etc/x.yaml"], &[], &[], None, "key `services[1].files[1]`"),
            (&[], &["../x.env"], &[], None, "key `services[1].env_files[0]`"),
            (&[], &["a.env", "b.env"], &[], None, "key `services[1].env_files`: names more than one file"),
            (&[], &[], &["de bug"], None, "key `services[1].profiles[0]`: `de bug` is not a valid profile name"),
            (&[], &[], &[], Some("secrets/web"), "key `services[1].secrets_dir`: `secrets/web` must be an absolute"),
            (&[], &[], &[], Some("/var/lib/strata/stacks/web/s"), "must be outside the stacks checkout"),
            (&[], &[], &[], Some("/etc/../var/x"), "key `services[1].secrets_dir`"),
        ];
        for (files, env, profiles, secrets, want) in cases {
            let e = v(files, env, profiles, secrets).unwrap_err();
            assert!(e.contains(want), "want {want:?} in {e:?}");
        }
    }
}
