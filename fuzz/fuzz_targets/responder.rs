//! The GCKS responder endpoint fed a sequence of arbitrary datagrams
//! (gikev2_proto::fuzzing::fuzz_responder).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gikev2_proto::fuzzing::fuzz_responder(data, std::time::Instant::now());
});
