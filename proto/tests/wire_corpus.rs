//! The fuzz corpus (`fuzz/corpus/<target>/`) as a regular test: every file is run through
//! its fuzz entry point, so a crash found by a fuzzer and saved there stays fixed.
//!
//! The seeds come from the encoder (`gikev2_proto::fuzzing::seed_*`). To (re)write them:
//! `GIKEV2_WRITE_CORPUS=1 cargo test -p gikev2-proto --test wire_corpus`.

use std::path::PathBuf;

use gikev2_proto::fuzzing::{
    fuzz_message, fuzz_payload_chain_input, seed_inner_chains, seed_messages,
};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn sync_seeds(target: &str, seeds: Vec<(&'static str, Vec<u8>)>) {
    let dir = corpus_dir(target);
    let write = std::env::var_os("GIKEV2_WRITE_CORPUS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in seeds {
        let path = dir.join(format!("seed_{name}"));
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run with GIKEV2_WRITE_CORPUS=1 to write the seeds",
                    path.display()
                )
            });
            assert_eq!(
                on_disk,
                bytes,
                "{} is stale; run with GIKEV2_WRITE_CORPUS=1",
                path.display()
            );
        }
    }
}

fn run_all(target: &str, f: fn(&[u8])) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir(target)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            f(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn message_corpus() {
    let seeds = seed_messages();
    let count = seeds.len();
    sync_seeds("message", seeds);
    assert!(run_all("message", fuzz_message) >= count);
}

#[test]
fn inner_payloads_corpus() {
    let seeds = seed_inner_chains();
    let count = seeds.len();
    sync_seeds("inner_payloads", seeds);
    assert!(run_all("inner_payloads", fuzz_payload_chain_input) >= count);
}

#[test]
fn responder_corpus() {
    let seeds = gikev2_proto::fuzzing::seed_responder();
    let count = seeds.len();
    sync_seeds("responder", seeds);
    let start = std::time::Instant::now();
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir("responder")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            gikev2_proto::fuzzing::fuzz_responder(&std::fs::read(&path).unwrap(), start);
            n += 1;
        }
    }
    assert!(n >= count);
}

#[test]
fn gsa_kd_corpus() {
    use gikev2_proto::Codec;
    use gikev2_proto::crypto::{KeyWrapAlg, KeyWrapKey};
    use gikev2_proto::group::{HeldSenderIds, Role, read_inband_rekey, read_registration};
    use gikev2_proto::wire::gsa::GsaPayload;
    use gikev2_proto::wire::kd::KdPayload;
    let seeds = gikev2_proto::fuzzing::seed_gsa_kd();
    let count = seeds.len();
    // The seeds reach the member's reading whole (the target's key unwraps them).
    let kwk = KeyWrapKey::new(KeyWrapAlg::Kw5649_256, &[7; 32]).unwrap();
    let sender = Role::Sender { receives: true };
    for (name, bytes) in &seeds {
        let (len, rest) = bytes.split_first_chunk::<2>().unwrap();
        let (gsa, kd) = rest.split_at(usize::from(u16::from_be_bytes(*len)));
        let (gsa, kd) = (
            GsaPayload::read_bytes(gsa).unwrap(),
            KdPayload::read_bytes(kd).unwrap(),
        );
        let read = if *name == "inband_rekey" {
            let held = HeldSenderIds {
                ids: vec![1],
                bits: Some(8),
            };
            read_inband_rekey(&gsa, &kd, &kwk, sender, &held)
        } else if *name == "registration_receiver" {
            read_registration(&gsa, &kd, &kwk, Role::Receiver)
        } else {
            read_registration(&gsa, &kd, &kwk, sender)
        };
        assert!(read.is_ok(), "{name}: {read:?}");
    }
    sync_seeds("gsa_kd", seeds);
    assert!(run_all("gsa_kd", gikev2_proto::fuzzing::fuzz_gsa_kd) >= count);
}
