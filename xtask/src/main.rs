//! `cargo xtask`: the project's automation (deps, test, codegen, demo, bench), in the style of rust-analyzer's xtask.
//! Owns orchestration only; agent behaviour lives in the agent crates, process and PKI handling in `strata-tests`.

mod bench;
mod bench_dns;
mod bench_services;
mod bench_vm;
mod codegen;
mod demo;
mod deps;

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
    /// Start the three agents on loopback with a throwaway PKI and show `labctl status`; runs until Ctrl-C.
    Demo {
        /// Bring the lab up, print status, and exit (used by `cargo xtask test`).
        #[arg(long)]
        once: bool,
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

fn test() -> Result<()> {
    deps::run()?;
    sh("cargo", &["fmt", "--all", "--check"])?;
    sh("cargo", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    sh("cargo", &["build", "--workspace", "--bins"])?;
    sh("cargo", &["test", "--workspace"])?;
    demo::run(true)
}

fn main() -> Result<()> {
    agent_core::tls::install_crypto_provider();
    match Cli::parse().cmd {
        Cmd::Deps => deps::run(),
        Cmd::Test => test(),
        Cmd::Codegen => codegen::run(&project_root()),
        Cmd::Demo { once } => demo::run(once),
        Cmd::Bench { which } => bench::run(which),
    }
}
