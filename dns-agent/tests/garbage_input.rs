//! The fuzz entry points over deterministic garbage and mutations of real inputs, on every `cargo test`: the same
//! functions cargo-fuzz drives in `dns-agent/fuzz`, so a crash found there is a crash here.

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
