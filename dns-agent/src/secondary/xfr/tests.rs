//! Tests of the pure transfer logic: serial arithmetic, stream assembly, IXFR application, zone checks, timers.

use super::*;
use hickory_proto::rr::rdata::A;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn soa(serial: u32) -> Record {
    let data = SOA::new(name("ns.lab."), name("h.lab."), serial, 3600, 600, 86400, 60);
    Record::from_rdata(name("lab."), 60, RData::SOA(data))
}

fn a(n: &str, last: u8) -> Record {
    Record::from_rdata(name(n), 300, RData::A(A::new(10, 0, 0, last)))
}

#[test]
fn serial_arithmetic_follows_rfc1982() {
    let cases: &[(u32, u32, bool)] = &[
        (2, 1, true),
        (1, 2, false),
        (1, 1, false),
        (0, u32::MAX, true), // wrapped
        (u32::MAX, 0, false),
        (0x8000_0000, 1, true),
        (0x8000_0000, 0, false), // exactly half-way: undefined, not newer
        (0, 0x8000_0000, false),
        (100, 0x8000_0065, true),
    ];
    for &(x, y, want) in cases {
        assert_eq!(serial_gt(x, y), want, "serial_gt({x}, {y})");
    }
}

fn assemble(asked: Asked, messages: &[Vec<Record>]) -> Result<Transfer, XfrError> {
    let mut asm = Assembler::new(asked, 100);
    for m in messages {
        for r in m {
            asm.feed(r.clone())?;
        }
        if asm.complete(true) {
            break;
        }
    }
    asm.finish()
}

#[test]
fn streams_assemble_or_are_refused() {
    let full = vec![soa(5), a("x.lab.", 1), a("y.lab.", 2), soa(5)];
    let ixfr = vec![soa(7), soa(5), a("x.lab.", 1), soa(6), a("x.lab.", 9), soa(6), soa(7), a("z.lab.", 3), soa(7)];
    type Case = (&'static str, Asked, Vec<Vec<Record>>, Result<&'static str, XfrError>);
    let cases: Vec<Case> = vec![
        ("axfr in one message", Asked::Axfr, vec![full.clone()], Ok("full 3")),
        (
            "axfr over messages",
            Asked::Axfr,
            vec![full[..1].to_vec(), full[1..3].to_vec(), full[3..].to_vec()],
            Ok("full 3"),
        ),
        ("axfr truncated", Asked::Axfr, vec![full[..3].to_vec()], Err(XfrError::Truncated)),
        ("axfr empty", Asked::Axfr, vec![vec![]], Err(XfrError::Truncated)),
        ("axfr not soa first", Asked::Axfr, vec![vec![a("x.lab.", 1), soa(5)]], Err(XfrError::FirstNotSoa)),
        (
            "axfr closing serial",
            Asked::Axfr,
            vec![vec![soa(5), a("x.lab.", 1), soa(6)]],
            Err(XfrError::ClosingSerial { opening: 5, closing: 6 }),
        ),
        (
            "axfr trailing",
            Asked::Axfr,
            vec![vec![soa(5), a("x.lab.", 1), soa(5), a("y.lab.", 1)]],
            Err(XfrError::Trailing),
        ),
        ("axfr only soa", Asked::Axfr, vec![vec![soa(5), soa(5)]], Ok("full 1")),
        ("ixfr up to date", Asked::Ixfr { ours: 5 }, vec![vec![soa(5)]], Ok("up-to-date 5")),
        ("ixfr older", Asked::Ixfr { ours: 5 }, vec![vec![soa(4)]], Ok("up-to-date 4")),
        ("ixfr newer single soa then truncated", Asked::Ixfr { ours: 5 }, vec![vec![soa(6)]], Err(XfrError::Truncated)),
        ("ixfr as full zone", Asked::Ixfr { ours: 4 }, vec![full.clone()], Ok("full 3")),
        ("ixfr incremental", Asked::Ixfr { ours: 5 }, vec![ixfr.clone()], Ok("incremental 2")),
        ("ixfr incremental truncated", Asked::Ixfr { ours: 5 }, vec![ixfr[..7].to_vec()], Err(XfrError::Truncated)),
    ];
    for (what, asked, messages, want) in cases {
        let got = assemble(asked, &messages).map(|t| match t {
            Transfer::Full { records } => format!("full {}", records.len()),
            Transfer::UpToDate { serial } => format!("up-to-date {serial}"),
            Transfer::Incremental { diffs, .. } => format!("incremental {}", diffs.len()),
        });
        assert_eq!(got, want.map(String::from), "{what}");
    }
    let mut asm = Assembler::new(Asked::Axfr, 3);
    let errs: Vec<_> = full.iter().map(|r| asm.feed(r.clone())).collect();
    assert_eq!(errs[3], Err(XfrError::TooManyRecords(3)));
}

#[test]
fn ixfr_applies_in_order_and_refuses_broken_chains() {
    let copy = vec![soa(5), a("x.lab.", 1), a("y.lab.", 2)];
    let d = |from: u32, to: u32, removed: Vec<Record>, added: Vec<Record>| Diff {
        from,
        to,
        removed,
        added,
        to_soa: soa(to),
    };
    let good = vec![
        d(5, 6, vec![soa(5), a("x.lab.", 1)], vec![soa(6), a("x.lab.", 9)]),
        d(6, 7, vec![], vec![a("z.lab.", 3)]),
    ];
    let out = apply(&copy, &soa(7), &good).unwrap();
    let shown: Vec<String> = out.iter().map(|r| format!("{} {}", r.name, r.data)).collect();
    assert_eq!(soa_of(&out[0]).unwrap().serial, 7);
    assert_eq!(&shown[1..], ["y.lab. 10.0.0.2", "x.lab. 10.0.0.9", "z.lab. 10.0.0.3"]);

    let cases: Vec<(Vec<Diff>, u32, &str)> = vec![
        (vec![d(4, 7, vec![], vec![])], 7, "a difference starts at serial 4, the copy is at 5"),
        (vec![d(5, 6, vec![], vec![])], 7, "the differences end at serial 6"),
        (vec![d(5, 7, vec![a("q.lab.", 1)], vec![])], 7, "deletes q.lab. A 10.0.0.1"),
    ];
    for (diffs, to, want) in cases {
        let e = apply(&copy, &soa(to), &diffs).unwrap_err().to_string();
        assert!(e.contains(want), "want {want:?} in {e:?}");
    }
}

#[test]
fn whole_zone_checks() {
    let origin = name("lab.");
    let ok = vec![soa(5), a("x.lab.", 1)];
    assert_eq!(check_zone(&origin, &ok, Some(4)), Ok(5));
    assert_eq!(check_zone(&origin, &ok, Some(5)), Ok(5));
    assert_eq!(check_zone(&origin, &ok, None), Ok(5));
    let mut chaos = a("c.lab.", 1);
    chaos.dns_class = DNSClass::CH;
    let cases: Vec<(Vec<Record>, Option<u32>, &str)> = vec![
        (vec![soa(5)], None, "holds only its SOA"),
        (vec![soa(3), a("x.lab.", 1)], Some(5), "serial went backwards: the copy has 5, the primary sent 3"),
        (vec![soa(5), a("x.other.", 1)], None, "record x.other. A is outside zone lab."),
        (vec![soa(5), chaos], None, "has class CH"),
        (vec![soa(5), a("x.lab.", 1), soa(5)], None, "a second SOA"),
        (vec![a("x.lab.", 1), soa(5)], None, "first record is not the zone's SOA"),
        (vec![], None, "truncated"),
    ];
    for (records, prev, want) in cases {
        let e = check_zone(&origin, &records, prev).unwrap_err().to_string();
        assert!(e.contains(want), "want {want:?} in {e:?}");
    }
}

#[test]
fn timers_schedule_refresh_retry_and_expiry() {
    let t = Some(Timers { refresh: 100, retry: 10, expire: 1000 });
    // (timers, last_ok, last_failure, now) → (next_check, expires, serving)
    type Case = (Option<Timers>, Option<i64>, Option<i64>, i64, (i64, Option<i64>, bool));
    let cases: &[Case] = &[
        (None, None, None, 50, (50, None, false)),
        (None, None, Some(40), 50, (40 + NO_COPY_RETRY, None, false)),
        (t, Some(0), None, 50, (100, Some(1000), true)),
        (t, Some(0), Some(120), 125, (130, Some(1000), true)),
        (t, Some(200), Some(120), 250, (300, Some(1200), true)), // an old failure before the last success
        (t, Some(0), Some(995), 996, (1000, Some(1000), true)),  // retry capped at the expiry
        (t, Some(0), Some(1005), 1006, (1015, Some(1000), false)), // expired: keep retrying
        (t, None, None, 5, (i64::MIN / 4 + 100, Some(i64::MIN / 4 + 1000), false)), // a copy never confirmed
    ];
    for &(timers, ok, fail, now, (next, expires, serving)) in cases {
        let s = schedule(timers, ok, fail, now);
        assert_eq!((s.next_check, s.expires, s.serving), (next, expires, serving), "{timers:?} {ok:?} {fail:?} {now}");
    }
    let zero = SOA::new(name("ns.lab."), name("h.lab."), 1, 0, -5, 30, 60);
    assert_eq!(Timers::of(&zero), Timers { refresh: MIN_TIMER, retry: MIN_TIMER, expire: 30 });
}
