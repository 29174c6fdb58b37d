//! GSA and KD payload bodies and their structural rules (gikev2_proto::fuzzing::fuzz_gsa_kd).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gikev2_proto::fuzzing::fuzz_gsa_kd(data);
});
