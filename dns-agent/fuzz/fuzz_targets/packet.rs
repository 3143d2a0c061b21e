//! cargo-fuzz target: `dns_agent::fuzz::packet` (the UDP loop against the handler) on arbitrary datagrams.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dns_agent::fuzz::packet(data));
