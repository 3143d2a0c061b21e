//! cargo-fuzz target: `dns_agent::fuzz::record` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dns_agent::fuzz::record(data));
