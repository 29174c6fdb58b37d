//! The skip-or-require rule for tests that need the machine.
//!
//! A test that needs root, network namespaces, strongSwan's charon or tshark asks the
//! matching probe first ([`crate::netns::probe`], [`crate::charon::CharonInstall::detect`],
//! [`crate::capture::probe`]). If the probe fails the test prints why and returns early
//! (a skip), unless `GIKEV2_REQUIRE_ALL=1` is set (as `.ci/run` does), in which case the
//! test panics with the reason: in CI a missing capability is a failure, never a silent
//! pass.
//!
//! ```no_run
//! use gikev2_tests::{gate, netns};
//! let Some(()) = gate::require("network namespaces", netns::probe()) else { return };
//! ```

/// The environment variable that turns skips into failures.
pub const REQUIRE_ALL_ENV: &str = "GIKEV2_REQUIRE_ALL";

/// True when `GIKEV2_REQUIRE_ALL` is set to `1` (or `true`/`yes`).
pub fn require_all() -> bool {
    matches!(
        std::env::var(REQUIRE_ALL_ENV).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Returns the probe's value, or skips: prints `SKIP <what>: <reason>` on stderr and
/// returns `None`. Under `GIKEV2_REQUIRE_ALL=1` a failed probe panics instead.
pub fn require<T, E: std::fmt::Display>(what: &str, probe: Result<T, E>) -> Option<T> {
    match probe {
        Ok(value) => Some(value),
        Err(reason) => {
            skip(what, &reason.to_string());
            None
        }
    }
}

/// Skips (prints why) or, under `GIKEV2_REQUIRE_ALL=1`, panics with the reason.
pub fn skip(what: &str, reason: &str) {
    if require_all() {
        panic!("{what} required ({REQUIRE_ALL_ENV}=1) but unavailable: {reason}");
    }
    eprintln!("SKIP {what}: {reason} (set {REQUIRE_ALL_ENV}=1 to make this a failure)");
}

/// For optional features of a peer that no installable package provides on this
/// machine (for example ML-KEM in a charon older than 6.0): always a skip, never a
/// failure, and says so.
pub fn skip_unsupported(what: &str, reason: &str) {
    eprintln!("SKIP {what}: not supported here: {reason}");
}
