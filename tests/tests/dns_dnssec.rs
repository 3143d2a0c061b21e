//! DNSSEC through the dns-agent end to end: a zone signed here with `ldns-keygen` and `ldns-signzone`, served by
//! real `unbound` upstreams (a validating one holding the zone's trust anchor; non-validating ones serving the zone
//! and a copy whose A record was edited after signing), the agent in `transparent` and `validate` mode, checked
//! with `dig` and `drill -S`. Knows the agent's config format; nothing of its internals.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use strata_tests::dnslab::{Dig, Dns, ZONES};
use strata_tests::fixtures::unbound::Unbound;
use strata_tests::harness::Pki;

const ZONE: &str = "example.test";
const WWW: &str = "192.0.2.80";
const TAMPERED: &str = "192.0.2.66";

/// `example.test.` signed with a fresh KSK and ZSK (ECDSA P-256, NSEC), and a tampered copy.
struct SignedZone {
    dir: tempfile::TempDir,
    /// The KSK's `.key` file: the DNSKEY record unbound and drill trust.
    anchor: PathBuf,
    /// Both keys' DNSKEY records: the dns-agent's `trust_anchor` (hickory trusts a zone's DNSKEY set without asking
    /// its parent for the DS only when every key in it is an anchor).
    keys: PathBuf,
    signed: PathBuf,
    tampered: PathBuf,
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (install ldnsutils)"))?;
    ensure!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn sign_zone() -> Result<SignedZone> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(
        d.join("zone"),
        format!(
            "$ORIGIN {ZONE}.\n$TTL 300\n@ IN SOA ns admin 1 3600 600 86400 300\n@ IN NS ns\nns IN A 192.0.2.53\n\
             www IN A {WWW}\n"
        ),
    )?;
    let zsk = run(d, "/usr/bin/ldns-keygen", &["-a", "ECDSAP256SHA256", ZONE])?;
    let ksk = run(d, "/usr/bin/ldns-keygen", &["-k", "-a", "ECDSAP256SHA256", ZONE])?;
    run(d, "/usr/bin/ldns-signzone", &["-f", "signed", "zone", &zsk, &ksk])?;
    let mut keys = std::fs::read_to_string(d.join(format!("{ksk}.key")))?;
    keys.push_str(&std::fs::read_to_string(d.join(format!("{zsk}.key")))?);
    std::fs::write(d.join("keys"), keys)?;
    let signed = std::fs::read_to_string(d.join("signed"))?;
    let www = format!("www.{ZONE}.\t300\tIN\tA\t{WWW}");
    ensure!(signed.contains(&www), "no `{www}` line in the signed zone:\n{signed}");
    std::fs::write(d.join("tampered"), signed.replace(&www, &format!("www.{ZONE}.\t300\tIN\tA\t{TAMPERED}")))?;
    Ok(SignedZone {
        anchor: d.join(format!("{ksk}.key")),
        keys: d.join("keys"),
        signed: d.join("signed"),
        tampered: d.join("tampered"),
        dir,
    })
}

/// A real unbound serving a zone file. With `anchor`, unbound validates (the zone is its upstream, via `auth-zone`
/// for-upstream) and sets AD; without, it answers the zone file authoritatively as it is.
fn upstream(zone_file: &Path, anchor: Option<&Path>) -> Result<Unbound> {
    let (modules, downstream) = match anchor {
        Some(a) => (format!("\"validator iterator\"\n  trust-anchor-file: {:?}", a.display().to_string()), "no"),
        None => ("\"iterator\"".to_string(), "yes"),
    };
    let server = format!("  local-zone: \"test.\" nodefault\n  module-config: {modules}\n");
    let clauses = format!(
        "auth-zone:\n  name: \"{ZONE}.\"\n  zonefile: {z:?}\n  for-upstream: yes\n  for-downstream: {downstream}\n",
        z = zone_file.display().to_string(),
    );
    Unbound::start(&server, &clauses, &format!("www.{ZONE}"))
}

fn has_flag(d: &Dig, flag: &str) -> bool {
    d.flags.iter().any(|f| f == flag)
}

/// The EDNS flags dig printed (`; EDNS: version: 0, flags: do; udp: 1232`).
fn edns_do(d: &Dig) -> bool {
    d.raw.lines().any(|l| l.starts_with("; EDNS:") && l.contains("flags: do"))
}

fn rrsigs(d: &Dig) -> usize {
    d.answers.iter().chain(d.authority.iter()).filter(|r| r.1 == "RRSIG").count()
}

fn forward(port: u16, extra: &str) -> String {
    format!("{ZONES}\n[forward]\nupstreams = [\"udp://127.0.0.1:{port}\"]\n{extra}")
}

#[test]
fn transparent_forwarding_lets_a_validating_client_validate() -> Result<()> {
    let pki = Pki::new()?;
    let zone = sign_zone()?;
    let upstream = upstream(&zone.signed, Some(&zone.anchor))?;
    let dns = Dns::start(&pki, &forward(upstream.port(), ""))?;
    let www = format!("www.{ZONE}");

    // DO: the RRSIG and the upstream's AD come through, and the OPT carries DO (RFC 3225).
    let d = dns.dig(&["+dnssec", &www, "A"])?;
    assert_eq!((d.status.as_str(), d.values("A")), ("NOERROR", vec![WWW.to_string()]), "{}", d.raw);
    assert!(rrsigs(&d) >= 1 && has_flag(&d, "ad") && edns_do(&d), "RRSIG, AD and DO: {}", d.raw);
    // Again from the cache, over UDP and TCP: the same.
    for transport in ["+notcp", "+tcp"] {
        let d = dns.dig(&[transport, "+dnssec", &www, "A"])?;
        assert!(rrsigs(&d) >= 1 && has_flag(&d, "ad") && edns_do(&d), "cached, {transport}: {}", d.raw);
    }

    // No DO: no DNSSEC records (RFC 4035 §3.2.1); AD only when the client set AD (RFC 6840 §5.8).
    let d = dns.dig(&["+noadflag", &www, "A"])?;
    assert_eq!(d.values("A"), vec![WWW.to_string()], "{}", d.raw);
    assert!(rrsigs(&d) == 0 && !has_flag(&d, "ad") && !edns_do(&d), "no RRSIG, no AD, no DO: {}", d.raw);
    let d = dns.dig(&["+adflag", &www, "A"])?;
    assert!(rrsigs(&d) == 0 && has_flag(&d, "ad"), "AD asked for without DO: {}", d.raw);
    // An explicit DNSKEY query gets the keys without DO, not their RRSIG.
    let d = dns.dig(&[ZONE, "DNSKEY"])?;
    assert!(d.values("DNSKEY").len() == 2 && rrsigs(&d) == 0, "{}", d.raw);

    // A signed denial: NSEC and RRSIGs in the authority section with DO, none without.
    let nx = format!("nope.{ZONE}");
    let d = dns.dig(&["+dnssec", &nx, "A"])?;
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert!(d.authority.iter().any(|r| r.1 == "NSEC") && rrsigs(&d) >= 2, "{}", d.raw);
    let d = dns.dig(&[&nx, "A"])?;
    assert!(d.authority.iter().all(|r| r.1 == "SOA") && !d.authority.is_empty(), "{}", d.raw);

    // CD goes upstream and comes back (a separate cache entry).
    let d = dns.dig(&["+dnssec", "+cd", &www, "A"])?;
    assert!(d.status == "NOERROR" && has_flag(&d, "cd") && rrsigs(&d) >= 1, "{}", d.raw);

    // Local answers are not signed: DO is copied, no AD, no RRSIG.
    let d = dns.dig(&["+dnssec", "nas.lab.home.arpa", "A"])?;
    assert!(d.aa() && edns_do(&d) && !has_flag(&d, "ad") && rrsigs(&d) == 0, "{}", d.raw);

    // A validating client chases the signatures through the agent from the zone's key.
    let out = Command::new("/usr/bin/drill")
        .args(["-p", &dns.addr.port().to_string(), "-k"])
        .arg(&zone.anchor)
        .args(["-S", &www, "A", &format!("@{}", dns.addr.ip())])
        .output()
        .context("running /usr/bin/drill (install ldnsutils)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Chase successful"), "drill -S through the agent: {text}");

    // dnssec = "off": the agent as before DNSSEC support (no DO upstream, nothing passed on), DO still copied.
    let off = Dns::start(&pki, &forward(upstream.port(), "dnssec = \"off\"\n"))?;
    let d = off.dig(&["+dnssec", &www, "A"])?;
    assert_eq!(d.values("A"), vec![WWW.to_string()], "{}", d.raw);
    assert!(rrsigs(&d) == 0 && !has_flag(&d, "ad") && edns_do(&d), "off: {}", d.raw);
    drop(zone.dir);
    Ok(())
}

#[test]
fn validate_mode_fails_a_tampered_answer_and_sets_ad_on_a_good_one() -> Result<()> {
    let pki = Pki::new()?;
    let zone = sign_zone()?;
    // Neither upstream validates: whatever AD or SERVFAIL comes back is the agent's.
    let good = upstream(&zone.signed, None)?;
    let bad = upstream(&zone.tampered, None)?;
    let settings = format!("dnssec = \"validate\"\ntrust_anchor = {:?}\n", zone.keys.display().to_string());
    let www = format!("www.{ZONE}");

    let dns = Dns::start(&pki, &forward(good.port(), &settings))?;
    let d = dns.dig(&["+dnssec", &www, "A"])?;
    assert_eq!((d.status.as_str(), d.values("A")), ("NOERROR", vec![WWW.to_string()]), "{}", d.raw);
    assert!(has_flag(&d, "ad") && rrsigs(&d) >= 1, "validated by the agent: {}", d.raw);
    let d = dns.dig(&["+noadflag", &www, "A"])?;
    assert!(!has_flag(&d, "ad") && rrsigs(&d) == 0, "no DO, no AD asked: {}", d.raw);
    let d = dns.dig(&["+dnssec", &format!("nope.{ZONE}"), "A"])?;
    assert!(d.status == "NXDOMAIN" && has_flag(&d, "ad"), "a validated denial: {}", d.raw);

    let dns = Dns::start(&pki, &forward(bad.port(), &settings))?;
    let direct = strata_tests::dnslab::dig(([127, 0, 0, 1], bad.port()).into(), &["+dnssec", &www, "A"])?;
    assert_eq!(direct.values("A"), vec![TAMPERED.to_string()], "the upstream serves the tampered copy");
    for args in [&["+dnssec", &www, "A"][..], &[&www, "A"][..]] {
        let d = dns.dig(args)?;
        assert_eq!(d.status, "SERVFAIL", "{args:?}: {}", d.raw);
        assert!(d.answers.is_empty(), "{}", d.raw);
        assert!(d.raw.contains("EDE: 6"), "Extended DNS Error 6 (DNSSEC Bogus): {}", d.raw);
    }
    // The untouched records of the same zone still validate; CD asks for the data unvalidated.
    let d = dns.dig(&["+dnssec", &format!("ns.{ZONE}"), "A"])?;
    assert!(d.status == "NOERROR" && has_flag(&d, "ad"), "{}", d.raw);
    let d = dns.dig(&["+dnssec", "+cd", &www, "A"])?;
    assert_eq!((d.status.as_str(), d.values("A")), ("NOERROR", vec![TAMPERED.to_string()]), "CD: {}", d.raw);
    assert!(!has_flag(&d, "ad"), "{}", d.raw);
    // And the bogus answer was not replaced by the CD one.
    let d = dns.dig(&["+dnssec", &www, "A"])?;
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    Ok(())
}
