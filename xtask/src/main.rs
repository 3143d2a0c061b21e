//! `cargo xtask`: the project's automation (deps, test, codegen, demo, drill, dist, bench), in the style of rust-analyzer's xtask.
//! Owns orchestration only; agent behaviour lives in the agent crates, process and PKI handling in `strata-tests`.

mod bench;
mod codegen;
mod demo;
mod deps;
mod dist;
mod drill;
mod lab;
#[cfg(test)]
mod tidy;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Strata project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install (apt) and start what the tests drive: dockerd, zfs-fuse, borg, qemu, dns tools. Idempotent.
    Deps,
    /// deps, then fmt check, clippy -D warnings, build, every test, and a demo smoke run.
    Test,
    /// Regenerate proto/src/gen from proto/strata/v1/*.proto.
    Codegen,
    /// The whole lab on this machine from built-in defaults (three agents, a hub and two apps on ZFS, a QEMU VM), one
    /// backup at each layer, then a tour of commands to try; runs until Ctrl-C and cleans up.
    Demo {
        /// Bring the lab up, print status, and exit (used by `cargo xtask test`).
        #[arg(long)]
        once: bool,
    },
    /// Set up the whole lab, then a disaster-recovery drill of each layer (service data, VM bundle) with its RTO.
    Drill,
    /// Debian packages of the three agents and labctl, and a release tarball per binary, in target/dist (release
    /// build; Linux only: the host-agent for macOS is built with `cargo build --release -p host-agent` on the Mac).
    Dist {
        /// Package the debug build instead, uncompressed (a quick local try; what the test installs).
        #[arg(long)]
        debug: bool,
    },
    /// Benchmarks (release builds), printed side by side with their targets.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

pub(crate) fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

/// Runs a command in the project root, echoing it; fails on a non-zero exit.
pub(crate) fn sh(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(project_root())
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The (passed, failed) counts of a libtest summary line: `test result: ok. 25 passed; 0 failed; 0 ignored; …`.
fn result_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((count("passed"), count("failed")))
}

/// Runs `cargo test --workspace`, echoing its output, and returns the summed (passed, failed) counts.
fn cargo_test() -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    eprintln!("$ cargo test --workspace --no-fail-fast");
    let mut child = Command::new("cargo")
        .args(["test", "--workspace", "--no-fail-fast"])
        .current_dir(project_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = result_counts(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("{passed} passed, {failed} failed");
        bail!("`cargo test --workspace` failed ({status})");
    }
    Ok((passed, failed))
}

fn test() -> Result<()> {
    // A run builds the workspace once and every test binary; incremental state would only double what lands on
    // disk (17 GB of it once). An explicit CARGO_INCREMENTAL from the caller wins.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        std::env::set_var("CARGO_INCREMENTAL", "0");
    }
    deps::run()?;
    sh("cargo", &["fmt", "--all", "--check"])?;
    sh("cargo", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    sh("cargo", &["build", "--workspace", "--bins"])?;
    let (passed, failed) = cargo_test()?;
    demo::run(true)?;
    // The plain closing line CI reads: every test of the workspace, summed.
    println!("{passed} passed, {failed} failed");
    Ok(())
}

fn main() -> Result<()> {
    agent_core::tls::install_crypto_provider();
    match Cli::parse().cmd {
        Cmd::Deps => deps::run(),
        Cmd::Test => test(),
        Cmd::Codegen => codegen::run(&project_root()),
        Cmd::Demo { once } => demo::run(once),
        Cmd::Drill => drill::run(),
        Cmd::Dist { debug } => dist::run(debug),
        Cmd::Bench { which } => bench::run(which),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_libtest_summaries() {
        let cases = [
            (
                "test result: ok. 25 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.48s",
                Some((25, 0)),
            ),
            ("test result: FAILED. 12 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out", Some((12, 1))),
            ("running 3 tests", None),
        ];
        for (line, want) in cases {
            assert_eq!(super::result_counts(line), want, "{line}");
        }
    }
}
