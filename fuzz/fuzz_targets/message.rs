//! A whole IKE datagram: decode, re-encode, decode again (gikev2_proto::fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gikev2_proto::fuzzing::fuzz_message(data);
});
