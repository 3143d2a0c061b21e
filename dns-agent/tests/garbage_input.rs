//! The fuzz entry points over deterministic garbage and mutations of real inputs, on every `cargo test`: the same
//! functions cargo-fuzz drives in `dns-agent/fuzz`, so a crash found there is a crash here. `packet` also checks
//! that the UDP loop (and its answer cache) answers exactly as the handler does.

use dns_agent::fuzz;

/// xorshift64*: reproducible without a randomness crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A copy of `seed` with a few bytes flipped, inserted, deleted or truncated.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + self.next() % 8 {
            let at = if v.is_empty() { 0 } else { (self.next() as usize) % v.len() };
            match self.next() % 5 {
                0 if !v.is_empty() => v[at] = self.next() as u8,
                1 => v.insert(at, b"[]{}=\"'\\\t\n.,:#|^*0123456789"[(self.next() % 27) as usize]),
                2 if !v.is_empty() => {
                    v.remove(at);
                }
                3 => v.truncate(at),
                _ => v.insert(at, self.next() as u8),
            }
        }
        v
    }
}

const SEEDS: &[(&str, &[u8])] = &[
    ("config", include_bytes!("../../examples/dns-agent.toml")),
    ("blocklist", b"0.0.0.0 ads.example.com\n127.0.0.1 t.example.net # c\n||track.example^\nplain.example.org\n! x\n"),
    ("record", b"nas\tA\t10.0.0.1"),
    ("record", b"_http._tcp\tSRV\t10 5 8080 svc.lab.test."),
    ("record", b"@\tMX\t10 mail.lab.test."),
    ("record", b"www\tCNAME\tnas.lab.test."),
];

/// A query for `name`/`qtype` (RD set), with an OPT record when `opt` is given (payload size, DO bit, options).
fn query(id: u16, name: &str, qtype: u16, opt: Option<(u16, bool, &[u8])>) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    if let Some((size, dnssec_ok, options)) = opt {
        p.extend_from_slice(&[0, 0, 41]);
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
        p.extend_from_slice(&(options.len() as u16).to_be_bytes());
        p.extend_from_slice(options);
    }
    p
}

/// Datagrams for the UDP loop: local answers of several types, a chain, a reverse name, blocked names, EDNS with
/// and without options, a name outside every zone, two questions, another opcode.
fn packets() -> Vec<Vec<u8>> {
    let cookie: &[u8] = &[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut two = query(7, "nas.lab.test", 1, None);
    two[5] = 2;
    two.extend_from_slice(&query(7, "nas.lab.test", 28, None)[12..]);
    let mut update = query(8, "lab.test", 6, None);
    update[2] = 5 << 3;
    vec![
        query(1, "nas.lab.test", 1, None),
        query(2, "www.LAB.test", 28, Some((1232, true, &[]))),
        query(3, "x.ads.example.com", 1, Some((4096, false, cookie))),
        query(4, "t.lab.test", 16, None),
        query(5, "10.0.0.10.in-addr.arpa", 12, Some((512, false, &[]))),
        query(6, "example.org", 1, None),
        two,
        update,
    ]
}

#[test]
fn the_udp_loop_survives_garbage_and_mutations_and_agrees_with_the_handler() {
    let mut rng = Rng(0x0dd_ba11_5eed_cafe);
    let mut runs = 0;
    for seed in packets() {
        fuzz::packet(&seed);
        for _ in 0..1500 {
            fuzz::packet(&rng.mutate(&seed));
            runs += 1;
        }
    }
    for len in [0usize, 1, 11, 12, 13, 64, 300, 600] {
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        fuzz::packet(&junk);
        runs += 1;
    }
    assert_eq!(runs, packets().len() * 1500 + 8, "every input ran to completion");
}

#[test]
fn parsers_survive_garbage_and_mutations() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut runs = 0;
    for (target, seed) in SEEDS {
        let f: fn(&[u8]) = match *target {
            "config" => fuzz::config,
            "blocklist" => fuzz::blocklist,
            _ => fuzz::record,
        };
        f(seed);
        for _ in 0..1500 {
            f(&rng.mutate(seed));
            runs += 1;
        }
        for len in [0usize, 1, 7, 64, 300] {
            let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            f(&junk);
            runs += 1;
        }
    }
    assert_eq!(runs, SEEDS.len() * 1505, "every input ran to completion");
}
