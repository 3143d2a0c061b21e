//! `cargo xtask codegen`: compiles `proto/` with pure-Rust protox and writes tonic/prost code to `proto/src/gen`.
//! Knows nothing about the agents; only where the protos live and where the generated code goes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Generates the Rust code for every proto file into `out_dir`.
pub(crate) fn generate(proto_root: &Path, out_dir: &Path) -> Result<()> {
    // Read the directory rather than `strata_proto::PROTO_FILES`: xtask must build even when the generated code is broken.
    let dir = proto_root.join("strata/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    files.sort();
    let fds = protox::compile(&files, [proto_root]).context("compiling proto files with protox")?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(true)
        .out_dir(out_dir)
        .compile_fds(fds)
        .context("generating rust code from proto descriptors")?;
    Ok(())
}

pub(crate) fn run(root: &Path) -> Result<()> {
    let proto_root = root.join("proto");
    let out = proto_root.join("src/gen");
    std::fs::create_dir_all(&out)?;
    generate(&proto_root, &out)?;
    eprintln!("codegen: wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when `proto/src/gen` does not match what `cargo xtask codegen` would write now.
    #[test]
    fn committed_generated_code_is_fresh() {
        let root = crate::project_root();
        let tmp = tempfile::tempdir().unwrap();
        generate(&root.join("proto"), tmp.path()).unwrap();
        let fresh = std::fs::read_to_string(tmp.path().join("strata.v1.rs")).unwrap();
        let committed = std::fs::read_to_string(root.join("proto/src/gen/strata.v1.rs")).unwrap();
        assert!(
            fresh == committed,
            "proto/src/gen/strata.v1.rs is stale: run `cargo xtask codegen` and commit the result"
        );
    }
}
