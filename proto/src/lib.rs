//! Generated protobuf messages and tonic stubs for `strata.v1`; owns nothing but the wire types.
//! Regenerate with `cargo xtask codegen`; a test in `xtask` fails when this code is stale.

#[allow(unreachable_pub, clippy::all, rust_2018_idioms, missing_docs)]
pub mod v1 {
    include!("gen/strata.v1.rs");
}

/// The `.proto` sources this crate was generated from, relative to the crate root.
pub const PROTO_FILES: &[&str] =
    &["strata/v1/common.proto", "strata/v1/dns.proto", "strata/v1/services.proto", "strata/v1/host.proto"];
