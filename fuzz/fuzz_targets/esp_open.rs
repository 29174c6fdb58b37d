//! Inbound ESP as the data plane receives it: Engine::open / open_esp on arbitrary bytes,
//! and seal-then-open round trips with flipped octets (gikev2_esp::dataplane::fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gikev2_esp::dataplane::fuzzing::fuzz_open(data);
});
