//! cargo-fuzz target: `dns_agent::fuzz::blocklist` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dns_agent::fuzz::blocklist(data));
