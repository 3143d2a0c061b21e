//! labctl's command line: the clap tree (global flags, every command and its example) and the exit codes.
//! Knows words and flags only; what a command does is in its module, how it is called in the binary.

use std::path::PathBuf;

use agent_core::identity::Role;
use clap::{CommandFactory, Parser, Subcommand};

/// Every command went as asked.
pub const EXIT_OK: u8 = 0;
/// An error: a failed call, an unreachable or timed-out agent, a refused or failed job, a usage error.
pub const EXIT_ERROR: u8 = 1;
/// Reserved: the agents answered but at least one is degraded (`labctl status`).
pub const EXIT_DEGRADED: u8 = 2;
/// labctl's own configuration is missing or invalid: the inventory, or the TLS files it names (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

const AFTER_HELP: &str = "\
Timeouts (--timeout SECS, default: see below):
  connecting and the TLS handshake with an agent: --timeout, else 5 s
  each call that answers once (reads, dns writes, vm start/stop/suspend/resume): --timeout, else 30 s
  services up/down/restart/pause/unpause/sync (deploys): --timeout, else 900 s
  long jobs (backup, restore, check, drill): opening the call (--timeout, else 30 s) and, only with --timeout,
  the wait for the first progress update; after that the job streams progress for as long as it runs
  services logs: opening the call only (a quiet `-f` waits for lines as long as you let it)
  status: connecting to each agent and its calls: --timeout, else 5 s
  A timed-out write may still complete on the agent: look with the matching read command.

JSON (--json): one JSON document on stdout per command; long jobs and `services logs` print JSON Lines instead
(one object per update, then {\"summaries\": [...]} for jobs). On an error stdout gets {\"error\": \"...\"} as
its last line and stderr the same text; `completions` always prints the shell script. See README, \"JSON output\".

Exit codes:
  0   ok
  1   error: a failed call, an unreachable or timed-out agent, a refused or failed job, a usage error, a job
      cancelled by Ctrl-C with --cancel-on-interrupt (or a Cancel the agent refused)
  2   degraded (reserved for `labctl status`)
  78  bad config: labctl's inventory or the TLS files it names are missing or invalid
  130 Ctrl-C while following a long job without --cancel-on-interrupt: the job goes on (`… watch NAME`)

Example: labctl --timeout 3 --json dns records";

#[derive(Debug, Parser)]
#[command(
    name = "labctl",
    version,
    about = "Control a Strata homelab: PKI, status, and each agent's commands",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Inventory file (default: $LABCTL_CONFIG, else ~/.config/strata/labctl.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON on stdout instead of tables and text (every command; JSON Lines for long jobs and logs).
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on an agent after SECS seconds: connecting, each call, a long job's first update (see below).
    #[arg(long, global = true, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Print the full text of errors shortened to one line in table cells, below the table.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The lab's certificate authority.
    #[command(subcommand, after_help = "Example: labctl pki show ~/.config/strata/pki/alice.pem")]
    Pki(PkiCmd),
    /// Ask every agent in the inventory how it is doing. Exit 0: all healthy; 2: all answered, some degraded
    /// (answering but unable to do part of their job: the HEALTH column says why); 1: some unreachable (wins over 2).
    #[command(after_help = "Example: labctl status --timeout 2")]
    Status,
    /// The dns-agent: records, blocklist, query log, stats.
    #[command(subcommand, after_help = "Example: labctl dns records")]
    Dns(crate::dns::DnsCmd),
    /// The services-agent: stacks, lifecycle, logs, sync, audit, backups, restores, checks, drills.
    #[command(subcommand, after_help = "Example: labctl services ls")]
    Services(crate::services::ServicesCmd),
    /// VMs on the host-agent: list, start/stop, backups, restore, drill.
    #[command(subcommand, after_help = "Example: labctl vm ls")]
    Vm(crate::vm::VmCmd),
    /// Print shell completions.
    #[command(after_help = "Example: labctl completions bash > /etc/bash_completion.d/labctl")]
    Completions {
        /// The shell to write completions for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum PkiCmd {
    /// Create DIR/ca.pem and DIR/ca.key (ECDSA P-256, 10 years).
    #[command(after_help = "Example: labctl pki init --dir ~/strata-pki --domain lab.home.arpa")]
    Init {
        /// Directory of the CA files (created 0700 when missing).
        #[arg(long)]
        dir: PathBuf,
        /// The trust domain: identities are spiffe://DOMAIN/ROLE/NAME.
        #[arg(long)]
        domain: String,
        /// Overwrite an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/NAME.pem and DIR/NAME.key for ROLE, signed by DIR's CA.
    #[command(
        after_help = "Example: labctl pki issue --dir ~/strata-pki --role dns-agent --name dns1 --san 10.0.0.53"
    )]
    Issue {
        /// Directory of the CA files; the new pair is written there too.
        #[arg(long)]
        dir: PathBuf,
        /// What the holder may be: an agent's role, admin, or viewer.
        #[arg(long)]
        role: Role,
        /// The holder's name (the last part of its identity and the file names).
        #[arg(long)]
        name: String,
        /// A DNS name or IP address the holder serves on (repeatable; an agent needs at least one).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Validity in days (default: 90 for agents, 397 for admin and viewer; never past the CA's expiry).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        days: Option<u32>,
        /// Overwrite an existing pair of that name.
        #[arg(long)]
        force: bool,
    },
    /// Describe a certificate: identity, SANs, validity, serial.
    #[command(after_help = "Example: labctl pki show ~/strata-pki/dns1.pem")]
    Show {
        /// The certificate (PEM) to describe.
        file: PathBuf,
    },
    /// Revoke DIR/NAME.pem, or a certificate by SERIAL (hex, as `pki show` prints it): adds it to DIR/crl.pem.
    /// Copy crl.pem to every agent's `[grpc] crl`: agents re-read it when it changes and refuse the certificate.
    #[command(after_help = "Example: labctl pki revoke --dir ~/strata-pki alice")]
    Revoke {
        /// Directory of the CA files and of crl.pem.
        #[arg(long)]
        dir: PathBuf,
        /// A certificate name in DIR, or a serial number.
        target: String,
    },
    /// Renew DIR/NAME.pem: a new key and certificate, same identity and SANs (the old one stays valid until it
    /// expires; revoke it to end it sooner).
    #[command(after_help = "Example: labctl pki renew --dir ~/strata-pki dns1")]
    Renew {
        /// Directory of the CA files and of the pair to renew.
        #[arg(long)]
        dir: PathBuf,
        /// The name of the pair (DIR/NAME.pem).
        name: String,
        /// Validity in days (default: 90 for agents, 397 for admin and viewer).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        days: Option<u32>,
    },
}

/// The whole clap tree (for completions and for tests that walk it).
pub fn command() -> clap::Command {
    Cli::command()
}

/// The leaf commands of the tree, each as its path of names (`["dns", "records"]`), in tree order.
pub fn leaves() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|c| c.get_name() != "help").collect();
        if subs.is_empty() {
            out.push(path.clone());
        }
        for s in subs {
            path.push(s.get_name().to_string());
            walk(s, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(&command(), &mut Vec::new(), &mut out);
    out
}

/// Help-text gaps in the tree: every command needs an `Example: labctl …` in its after-help and every argument
/// a help text. Empty when the tree is complete.
pub fn help_gaps() -> Vec<String> {
    fn walk(cmd: &clap::Command, path: &str, gaps: &mut Vec<String>) {
        let after = cmd.get_after_help().map(|s| s.to_string()).unwrap_or_default();
        if !after.lines().any(|l| l.trim_start().starts_with("Example: labctl")) {
            gaps.push(format!("`{path}` has no `Example: labctl …` line in its after_help"));
        }
        if cmd.get_about().is_none_or(|a| a.to_string().trim().is_empty()) {
            gaps.push(format!("`{path}` has no about text"));
        }
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                gaps.push(format!("`{path}`: argument `{id}` has no help text"));
            }
        }
        for s in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
            walk(s, &format!("{path} {}", s.get_name()), gaps);
        }
    }
    let mut gaps = Vec::new();
    walk(&command(), "labctl", &mut gaps);
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18 item 4: every command has an example and every flag and argument a help text.
    #[test]
    fn every_command_has_an_example_and_every_argument_help() {
        command().debug_assert();
        let gaps = help_gaps();
        assert!(gaps.is_empty(), "{} help gaps:\n{}", gaps.len(), gaps.join("\n"));
    }

    #[test]
    fn leaves_cover_every_agent_and_local_command() {
        let leaves: Vec<String> = leaves().iter().map(|p| p.join(" ")).collect();
        for want in ["status", "pki init", "dns records", "services backup", "vm drill", "completions"] {
            assert!(leaves.iter().any(|l| l == want), "{want} not in {leaves:?}");
        }
        assert!(!leaves.iter().any(|l| l == "dns" || l.ends_with("help")), "{leaves:?}");
    }

    #[test]
    fn global_flags_parse_after_the_command_and_timeout_refuses_zero() {
        let c = Cli::try_parse_from(["labctl", "dns", "records", "--json", "--timeout", "2", "-v"]).unwrap();
        assert!(c.json && c.verbose && c.timeout == Some(2));
        let e = Cli::try_parse_from(["labctl", "--timeout", "0", "status"]).unwrap_err();
        assert!(e.to_string().contains("--timeout"), "{e}");
    }
}
