//! A decrypted SK content: first octet = first payload type, then the inner chain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gikev2_proto::fuzzing::fuzz_payload_chain_input(data);
});
