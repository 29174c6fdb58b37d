//! gikev2-tests: harness helpers for end-to-end and interop tests.
//!
//! - [`gate`]: the skip-or-require rule for tests that need the machine (root, network
//!   namespaces, strongSwan, tshark). `GIKEV2_REQUIRE_ALL=1` turns every skip into a failure.
//! - [`netns`]: network namespaces with unique names, veth pairs and bridges, commands and
//!   threads (so sockets) inside a namespace, teardown on `Drop`.
//! - [`charon`]: strongSwan's charon as an interop peer in a namespace, driven by swanctl
//!   over its own vici socket, with its own strongswan.conf, swanctl.conf and credentials.
//! - [`pki`]: a throw-away X.509 PKI (Ed25519, ECDSA P-256) with DER certificates and
//!   PKCS#8 DER keys, usable by charon and by our code alike.
//! - [`capture`]: dumpcap captures on a namespace's link and tshark dissection, with
//!   charon's IKE keys fed to Wireshark's IKEv2 decryption table.
//! - [`driver`]: a blocking UDP loop that feeds a sans-IO endpoint (our IKE state
//!   machines) with datagrams and ticks from a socket inside a namespace.
//! - [`ikeprobe`]: a hand-built minimal IKE_SA_INIT request and a reader for the reply's
//!   header and payload chain, independent of `gikev2-proto`.
//!
//! See docs/testing.md for how the pieces fit together.

pub mod capture;
pub mod charon;
pub mod driver;
pub mod gate;
pub mod ikeprobe;
pub mod netns;
pub mod pki;

use std::time::{Duration, Instant};

/// Everything the harness can fail at. Messages carry enough context (command lines,
/// stderr, log tails) to debug a CI failure from the test output alone.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A command could not be started or exited unsuccessfully.
    #[error("command `{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    /// Reading or writing a file or socket failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A condition polled with a deadline did not become true in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias of the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Polls `probe` until it returns `Some`, at most until `timeout` has passed. Sleeps a
/// short, growing interval between probes (this is a bounded poll of a condition, not a
/// fixed sleep used as synchronization).
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if start.elapsed() >= timeout {
            return Err(HarnessError::Timeout {
                what: what.to_string(),
                after: timeout,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
