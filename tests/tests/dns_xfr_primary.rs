//! The dns-agent as a zone-transfer primary, against a real Knot DNS (`knotd`) as its secondary: AXFR and IXFR with
//! TSIG, NOTIFY on every change, refused transfers (stranger, no key, wrong key) and serials across restarts.
//! Knows the agent's config format, logs and gRPC API, and knotd's; nothing of the agent's internals.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use strata_tests::fixtures::knot::Knot;

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The fixture runs knotd as a primary of a zone file the test gives, and knotd answers it.
#[test]
fn knot_fixture_serves_a_primary_zone() -> Result<()> {
    let zone = "$ORIGIN x.test.\n$TTL 60\n@ SOA ns hm 7 60 60 600 60\n@ NS ns\nns A 127.0.0.1\n";
    let knot = Knot::start(LOOPBACK, "zone:\n  - domain: x.test\n", &[("x.test.zone", zone)])?;
    ensure!(knot.serial("x.test") == Some(7), "knotd serves serial 7; log:\n{}", knot.log());
    knot.reload()?;
    knot.wait_log("control, received command 'reload'", 0, Duration::from_secs(5))?;
    Ok(())
}
