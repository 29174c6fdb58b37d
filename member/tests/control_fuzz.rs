//! Fuzz-style property tests: whatever a client writes, the daemon's frame decoder and
//! request parser answer with a value or an error, never a panic.

use gikev2_member::control::{
    ControlError, FrameDecoder, MAX_FRAME, Request, decode_request, encode_frame,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

const WORDS: [&str; 22] = [
    "type",
    "request",
    "command",
    "args",
    "join",
    "leave",
    "status",
    "event-register",
    "event-unregister",
    "events",
    "group",
    "gcks",
    "psk_file",
    "key",
    "cert",
    "ca",
    "gcks_key",
    "sender",
    "receive",
    "id",
    "wait_ms",
    "group-up",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(WORDS.to_vec()).prop_map(String::from),
        1 => ".{0,12}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e30f64..1e30).prop_map(Value::from),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Messages shaped like requests, with arbitrary parts.
fn message() -> impl Strategy<Value = Value> {
    (word(), word(), json(), prop::option::of(json())).prop_map(|(ty, cmd, args, extra)| {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(ty));
        m.insert("command".into(), Value::String(cmd));
        m.insert("args".into(), args);
        if let Some(e) = extra {
            m.insert("events".into(), e);
        }
        Value::Object(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = decode_request(&data);
        let mut d = FrameDecoder::default();
        d.push(&data);
        for _ in 0..data.len() + 1 {
            match d.next_frame() {
                Ok(Some(f)) => { let _ = decode_request(&f); }
                Ok(None) => break,
                Err(ControlError::FrameTooLarge(n)) => { prop_assert!(n > MAX_FRAME); break; }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics(v in json()) {
        let body = serde_json::to_vec(&v).unwrap();
        let _ = decode_request(&body);
    }

    #[test]
    fn request_shaped_messages_decode_or_fail_cleanly(v in message(), split in 0usize..64) {
        let body = serde_json::to_vec(&v).unwrap();
        let frame = encode_frame(&body).unwrap();
        // Arrives in two pieces anywhere.
        let at = split.min(frame.len());
        let mut d = FrameDecoder::default();
        d.push(&frame[..at]);
        let first = d.next_frame().unwrap();
        d.push(&frame[at..]);
        let got = match first { Some(f) => f, None => d.next_frame().unwrap().unwrap() };
        prop_assert_eq!(&got, &body);
        if let Ok(Request::Unknown(c)) = decode_request(&got) {
            prop_assert!(!["join", "leave", "status"].contains(&c.as_str()));
        }
    }
}
