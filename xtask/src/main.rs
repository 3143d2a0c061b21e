//! `cargo xtask`: the project's automation (deps, test, codegen, demo, bench), in the style of rust-analyzer's xtask.
//! Owns orchestration only; agent behaviour lives in the agent crates.

mod codegen;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Strata project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Regenerate proto/src/gen from proto/strata/v1/*.proto.
    Codegen,
}

pub(crate) fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Codegen => codegen::run(&project_root()),
    }
}
