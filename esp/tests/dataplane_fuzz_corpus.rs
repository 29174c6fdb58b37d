//! The `esp_open` fuzz corpus (`fuzz/corpus/esp_open/`) as a regular test: every file is
//! run through the fuzz entry point, so a crash a fuzzer finds and saves there stays fixed.
//!
//! The seeds come from `gikev2_esp::dataplane::fuzzing::seeds`. To (re)write them:
//! `GIKEV2_WRITE_CORPUS=1 cargo test -p gikev2-esp --test dataplane_fuzz_corpus`.

#![cfg(target_os = "linux")]

use std::path::PathBuf;

use gikev2_esp::dataplane::fuzzing::{Outcome, fuzz_open, run, seeds};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/esp_open")
}

#[test]
fn seeds_are_on_disk_and_current() {
    let dir = corpus_dir();
    let write = std::env::var_os("GIKEV2_WRITE_CORPUS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in seeds() {
        let path = dir.join(format!("seed_{name}"));
        if write {
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
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

#[test]
fn every_corpus_file_runs_and_sealed_seeds_are_delivered() {
    let mut n = 0;
    let mut delivered = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        fuzz_open(&data);
        if matches!(run(&data), Outcome::Delivered(_)) {
            delivered += 1;
        }
        n += 1;
    }
    assert!(n >= seeds().len(), "{n} corpus files");
    // The sealed packets of the four SAs, both ways in, plus the seal-then-open seeds.
    assert!(delivered >= 12, "{delivered} inputs delivered");
}
