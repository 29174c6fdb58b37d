//! Packet captures on a namespace's link (dumpcap) and their dissection (tshark),
//! including IKEv2 decryption with keys charon logged.
//!
//! ```no_run
//! # use gikev2_tests::{capture::{self, Capture}, netns::Pair};
//! # fn f(pair: &Pair) -> gikev2_tests::Result<()> {
//! let cap = Capture::start(&pair.a, &pair.link_a.ifname, "udp")?;
//! // ... run an exchange ...
//! let pcap = cap.stop_after_count("isakmp", 4, std::time::Duration::from_secs(5), &[])?;
//! let msgs = capture::ike_messages(&pcap, &[])?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::charon::{IkeKeys, IkeSaInfo};
use crate::netns::Netns;
use crate::{HarnessError, Result, poll_until};

/// `Ok` when dumpcap and tshark are installed (checked once per process).
pub fn probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            for tool in ["dumpcap", "tshark"] {
                let ok = Command::new(tool)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    return Err(format!("{tool} not found (apt-get install tshark)"));
                }
            }
            Ok(())
        })
        .clone()
}

/// A running dumpcap inside a namespace, writing a pcapng into a temp dir.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing on `iface` inside `ns` with capture filter `filter` (BPF, may be
    /// empty), and returns once dumpcap reports it is capturing.
    pub fn start(ns: &Netns, iface: &str, filter: &str) -> Result<Capture> {
        let dir = tempfile::Builder::new()
            .prefix("gikev2-capture-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temp dir", e))?;
        let file = dir.path().join("capture.pcapng");
        let log_path = dir.path().join("dumpcap.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| HarnessError::io("dumpcap.log", e))?;
        let mut cmd = ns.command("dumpcap");
        cmd.args(["-q", "-i", iface, "-w"]).arg(&file);
        if !filter.is_empty() {
            cmd.args(["-f", filter]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| HarnessError::Command {
                cmd: format!("{cmd:?}"),
                detail: e.to_string(),
            })?;
        let mut cap = Capture { child, dir, file };
        let started = poll_until("dumpcap to start", Duration::from_secs(10), || {
            if let Ok(Some(_)) = cap.child.try_wait() {
                return Some(false);
            }
            std::fs::read_to_string(&log_path)
                .ok()
                .filter(|l| l.contains("Capturing on"))
                .map(|_| true)
        });
        match started {
            Ok(true) => Ok(cap),
            other => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                cap.halt();
                Err(HarnessError::Other(format!(
                    "dumpcap did not start ({other:?}): {log}"
                )))
            }
        }
    }

    /// The capture file (growing while the capture runs).
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Stops the capture once `display_filter` matches at least `count` packets and
    /// returns the finished file (as [`Capture::stop`]); an error if it holds fewer.
    ///
    /// dumpcap writes its file through a buffer, so the growing file can lag behind what
    /// it has captured until it exits. So the growing file is polled until it shows
    /// `count` packets, until it has stopped growing for a second (by then dumpcap has
    /// read every packet the link carried: libpcap hands over its ring blocks within
    /// 250 ms), or until `timeout`; then dumpcap is stopped, which flushes the file, and
    /// the finished file is counted.
    pub fn stop_after_count(
        self,
        display_filter: &str,
        count: usize,
        timeout: Duration,
        extra: &[String],
    ) -> Result<PathBuf> {
        const QUIET: Duration = Duration::from_secs(1);
        let mut last: Option<(u64, std::time::Instant)> = None;
        let _ = poll_until("the capture to settle", timeout, || {
            let rows = tshark_fields_lenient(&self.file, display_filter, &["frame.number"], extra);
            if rows.len() >= count {
                return Some(());
            }
            let size = std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
            match last {
                Some((s, since)) if s == size => (since.elapsed() >= QUIET).then_some(()),
                _ => {
                    last = Some((size, std::time::Instant::now()));
                    None
                }
            }
        });
        let pcap = self.stop()?;
        let found = tshark_fields_lenient(&pcap, display_filter, &["frame.number"], extra).len();
        if found >= count {
            Ok(pcap)
        } else {
            Err(HarnessError::Other(format!(
                "{found} packets matching {display_filter:?} in the capture, {count} expected \
                 (kept in {})",
                pcap.display()
            )))
        }
    }

    /// Stops dumpcap and returns the finished file's path; the file lives in a kept temp
    /// dir (under the system temp dir) so the test can read it afterwards.
    pub fn stop(mut self) -> Result<PathBuf> {
        self.halt();
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().map_err(|e| HarnessError::io("temp dir", e))?,
        );
        let kept = dir.keep();
        Ok(kept.join("capture.pcapng"))
    }

    fn halt(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
            let gone = poll_until("dumpcap to exit", Duration::from_secs(5), || {
                matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)).then_some(())
            });
            if gone.is_err() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.halt();
    }
}

fn tshark_command(file: &Path, display_filter: &str, fields: &[&str], extra: &[String]) -> Command {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-n", "-T", "fields", "-E", "separator=\t"]);
    cmd.args(extra);
    if !display_filter.is_empty() {
        cmd.args(["-Y", display_filter]);
    }
    for f in fields {
        cmd.args(["-e", f]);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn split_rows(out: &[u8]) -> Vec<Vec<String>> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Like [`tshark_fields`] for a file still being written: a cut-short last packet is
/// not an error, and a failure gives no rows.
fn tshark_fields_lenient(
    file: &Path,
    display_filter: &str,
    fields: &[&str],
    extra: &[String],
) -> Vec<Vec<String>> {
    tshark_command(file, display_filter, fields, extra)
        .output()
        .map(|o| split_rows(&o.stdout))
        .unwrap_or_default()
}

/// `tshark -r <file> -Y <filter> -T fields -e <field>...`: one row per packet, one
/// column per field (multiple occurrences of a field are comma-separated by tshark).
/// `extra` are more tshark options, e.g. from [`ikev2_decryption_options`].
pub fn tshark_fields(
    file: &Path,
    display_filter: &str,
    fields: &[&str],
    extra: &[String],
) -> Result<Vec<Vec<String>>> {
    let mut cmd = tshark_command(file, display_filter, fields, extra);
    let out = cmd.output().map_err(|e| HarnessError::Command {
        cmd: format!("{cmd:?}"),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            cmd: format!("{cmd:?}"),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(split_rows(&out.stdout))
}

/// One IKE message seen in a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IkeMessage {
    pub src: String,
    pub dst: String,
    /// Exchange type number (34 IKE_SA_INIT, 35 IKE_AUTH, ...).
    pub exchange: u8,
    pub response: bool,
    pub initiator: bool,
    pub message_id: u32,
    pub spi_i: String,
    pub spi_r: String,
    /// Payload type numbers tshark saw, in order, including those inside SK when
    /// decryption keys were given (`isakmp.nextpayload`... as tshark lists them).
    pub payloads: Vec<u16>,
}

/// The IKE messages of a capture (UDP 500/4500, non-ESP marker handled by tshark).
pub fn ike_messages(file: &Path, extra: &[String]) -> Result<Vec<IkeMessage>> {
    let rows = tshark_fields(
        file,
        "isakmp",
        &[
            "ip.src",
            "ipv6.src",
            "ip.dst",
            "ipv6.dst",
            "isakmp.exchangetype",
            "isakmp.flag_r",
            "isakmp.flag_i",
            "isakmp.messageid",
            "isakmp.ispi",
            "isakmp.rspi",
            "isakmp.typepayload",
        ],
        extra,
    )?;
    let num = |s: &str| -> u64 {
        let s = s.split(',').next().unwrap_or("").trim();
        if let Some(h) = s.strip_prefix("0x") {
            u64::from_str_radix(h, 16).unwrap_or(0)
        } else {
            s.parse().unwrap_or(0)
        }
    };
    let flag = |s: &str| matches!(s.split(',').next(), Some("1") | Some("True") | Some("true"));
    Ok(rows
        .into_iter()
        .map(|r| {
            let col = |i: usize| r.get(i).map(String::as_str).unwrap_or("");
            let pick =
                |a: usize, b: usize| if col(a).is_empty() { col(b) } else { col(a) }.to_string();
            IkeMessage {
                src: pick(0, 1),
                dst: pick(2, 3),
                exchange: num(col(4)) as u8,
                response: flag(col(5)),
                initiator: flag(col(6)),
                message_id: num(col(7)) as u32,
                spi_i: col(8).split(',').next().unwrap_or("").to_string(),
                spi_r: col(9).split(',').next().unwrap_or("").to_string(),
                payloads: col(10)
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| num(s) as u16)
                    .collect(),
            }
        })
        .collect())
}

/// Wireshark's name (`ikev2_decryption_table` UAT) for an IKE encryption algorithm as
/// charon lists it (`encr-alg`, `encr-keysize`). `None` where Wireshark 4.0 cannot
/// decrypt (ChaCha20-Poly1305).
pub fn wireshark_encr_name(encr_alg: &str, keysize: u32) -> Option<String> {
    match encr_alg {
        "AES_GCM_16" | "AES_GCM_12" | "AES_GCM_8" => {
            let icv = &encr_alg["AES_GCM_".len()..];
            Some(format!("AES-GCM-{keysize} with {icv} octet ICV [RFC5282]"))
        }
        "AES_CBC" => Some(format!("AES-CBC-{keysize} [RFC3602]")),
        "AES_CTR" => Some(format!("AES-CTR-{keysize} [RFC5930]")),
        _ => None,
    }
}

/// Wireshark's name for an IKE integrity algorithm as charon lists it (`integ-alg`);
/// AEAD suites have none.
pub fn wireshark_integ_name(integ_alg: Option<&str>) -> Option<&'static str> {
    match integ_alg {
        None => Some("NONE [RFC4306]"),
        Some("HMAC_SHA2_256_128") => Some("HMAC-SHA-256-128 [RFC4868]"),
        Some("HMAC_SHA2_384_192") => Some("HMAC-SHA-384-192 [RFC4868]"),
        Some("HMAC_SHA2_512_256") => Some("HMAC-SHA-512-256 [RFC4868]"),
        _ => None,
    }
}

/// One `ikev2_decryption_table` entry for an IKE SA and its keys, or `None` if
/// Wireshark cannot decrypt this suite. Format: SPIs and keys as bare hex, names quoted.
pub fn ikev2_decryption_entry(sa: &IkeSaInfo, keys: &IkeKeys) -> Option<String> {
    let keysize = sa
        .field("encr-keysize")
        .and_then(|k| k.parse().ok())
        .unwrap_or(0);
    let encr = wireshark_encr_name(sa.field("encr-alg")?, keysize)?;
    let integ = wireshark_integ_name(sa.field("integ-alg"))?;
    Some(format!(
        "{},{},{},{},\"{}\",{},{},\"{}\"",
        hex::encode(sa.spi_i),
        hex::encode(sa.spi_r),
        hex::encode(&keys.sk_ei),
        hex::encode(&keys.sk_er),
        encr,
        hex::encode(&keys.sk_ai),
        hex::encode(&keys.sk_ar),
        integ
    ))
}

/// tshark options that load `entries` into the IKEv2 decryption table.
pub fn ikev2_decryption_options(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .flat_map(|e| ["-o".to_string(), format!("uat:ikev2_decryption_table:{e}")])
        .collect()
}
