//! GSA_REKEY octets built by hand from RFC 9838 2.4.1, 2.4.1.1 (Figure 10), RFC 7427 3
//! (Figure 2, A.3.2 and RFC 8410 for Ed25519), RFC 7296 3.1/3.2/3.11/3.14 and RFC 5282 5
//! (AES-GCM in the SK payload), with the cipher and the signature run straight on `ring`,
//! not through our SK or signing code. They check that what our GCKS signs is the
//! RFC's `A | P`, and that our member accepts a message another implementation would build
//! from the same text.

mod group_common;

use std::time::Instant;

use gikev2_proto::crypto::SecretBytes;
use gikev2_proto::crypto::sign::{SignatureScheme, SigningKey};
use gikev2_proto::group::{
    BuildContext, GroupAuth, GroupPolicy, GroupState, MemberGrant, RekeyContent, RekeyDrop,
    RekeyReader, RekeySaState, RekeySender, Role, build_registration, read_registration,
};
use gikev2_proto::ike::protect::{self, Reassembly};
use gikev2_proto::registry::ProtocolId;
use gikev2_proto::wire::TrafficSelector;
use gikev2_proto::wire::delete::DeletePayload;
use group_common::*;
use ring::aead;

/// SPIi | SPIr of the Rekey SA (RFC 9838 2.4.1: one 16-octet field).
const SPI: [u8; 16] = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // IKE SA Initiator's SPI
    0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // IKE SA Responder's SPI
];
/// RFC 8032 7.1 TEST 1 secret key, used as the GCKS's Ed25519 AUTH_KEY seed.
const ED25519_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// The Message ID of the message: the Rekey SA has sent 5 before (GSA_INITIAL_MESSAGE_ID
/// 5 at registration, RFC 9838 4.4.2.2.2).
const MID: u32 = 5;
/// The explicit 8-octet IV of the SK payload (RFC 5282 3.1).
const IV: [u8; 8] = [0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7];

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    hex::decode(s).unwrap()
}

/// Rekey SA keying material for AES-GCM-16-256 + KW_5649_256 (RFC 9838 3.4:
/// `GSK_e | GSK_a | GSK_w`, GSK_a empty with AEAD; GSK_e is the 32-octet key followed by
/// the 4-octet salt, as SK_e is in RFC 5282 7.1).
fn keymat() -> Vec<u8> {
    let mut k: Vec<u8> = (0x20..0x40).collect(); // AES-256 key
    k.extend_from_slice(&[0xa0, 0xa1, 0xa2, 0xa3]); // salt
    k.extend(0x60..0x80u8); // GSK_w
    k
}

/// A PKCS#8 v1 Ed25519 private key (RFC 8410 7): the fixed prefix, then the seed.
fn ed25519_pkcs8() -> Vec<u8> {
    let mut v = unhex("302e 020100 300506032b6570 0422 0420");
    v.extend(unhex(ED25519_SEED));
    v
}

/// The GCKS's group: only the Rekey SA above (next Message ID 5), signed with Ed25519, and
/// one TEK so that a registration has something to carry.
fn group() -> GroupState {
    let mut kek = RekeySaState::new(
        SPI,
        TrafficSelector::single("10.0.0.1".parse().unwrap(), 17, Some(848)),
        TrafficSelector::single("239.0.0.1".parse().unwrap(), 17, Some(848)),
        gcm_suite(),
        SecretBytes::from_slice(&keymat()),
        NOW + LIFETIME,
    )
    .unwrap();
    kek.next_message_id = MID;
    let key = SigningKey::from_pkcs8(SignatureScheme::Ed25519, &ed25519_pkcs8()).unwrap();
    GroupState {
        rekey: Some(kek),
        teks: vec![tek_gcm(&mut rng(7))],
        policy: GroupPolicy::default(),
        auth: GroupAuth::Signature(Box::new(key)),
    }
}

/// The inner payloads P of Figure 12 (`SK{D, [N,] [AUTH]}`), with the AUTH payload's
/// Authentication Data carrying `sig` after its ASN.1 Length and AlgorithmIdentifier.
fn inner(sig: &[u8; 64]) -> Vec<u8> {
    let mut p = unhex(
        "27 00 000c \
         03 04 0001 \
         11223344",
    );
    // Delete (RFC 7296 3.11): Next Payload AUTH (39), C/RESERVED, Payload Length 12;
    // Protocol ID ESP (3), SPI Size 4, Num of SPIs 1; SPI 0x11223344.
    p.extend(unhex(
        "00 00 0050 \
         0e 000000 \
         07 3005 0603 2b6570",
    ));
    // AUTH (RFC 7296 3.8, RFC 7427 3): last payload, Payload Length 4 + 4 + 1 + 7 + 64 =
    // 80; Auth Method Digital Signature (14), RESERVED; ASN.1 Length 7 and the Ed25519
    // AlgorithmIdentifier (RFC 8420 3: id-Ed25519, no parameters); the signature.
    p.extend_from_slice(sig);
    assert_eq!(p.len(), 92);
    p
}

/// IKE header (RFC 7296 3.1) of the message: SPIs, Next Payload SK (46), version 2.0,
/// exchange GSA_REKEY (41), flags Initiator (0x08, docs/interop.md #27), Message ID, Length.
fn ike_header(length: u32) -> Vec<u8> {
    let mut h = SPI.to_vec();
    h.extend(unhex("2e 20 29 08"));
    h.extend_from_slice(&MID.to_be_bytes());
    h.extend_from_slice(&length.to_be_bytes());
    h
}

/// `A | P` of RFC 9838 2.4.1.1 with the signature zeroed: AdjustedLen = |A| + |P| =
/// 28 + 4 + 92 = 124, the SK header naming Delete (42) with AdjustedPldLen = |P| + 4 = 96.
fn data_to_authenticate() -> Vec<u8> {
    let mut a = ike_header(124);
    a.extend(unhex("2a 00 0060"));
    a.extend(inner(&[0; 64]));
    a
}

fn signature(data: &[u8]) -> [u8; 64] {
    let seed = unhex(ED25519_SEED);
    let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    kp.sign(data).as_ref().try_into().unwrap()
}

/// The whole datagram another GCKS would send: the SK payload with IV, no padding (RFC
/// 5282 3.2 needs no alignment), Pad Length 0 and a 16-octet ICV; AES-GCM with nonce
/// salt | IV and associated data = IKE header and SK generic header (RFC 5282 4, 5.1).
fn datagram() -> Vec<u8> {
    datagram_signed(&signature(&data_to_authenticate()))
}

/// The datagram of [`datagram`] with another signature in its AUTH payload.
fn datagram_signed(sig: &[u8; 64]) -> Vec<u8> {
    let p = inner(sig);
    // 28 + SK header 4 + IV 8 + P 92 + Pad Length 1 + ICV 16.
    let total = 28 + 4 + 8 + p.len() + 1 + 16;
    assert_eq!(total, 149);
    let mut msg = ike_header(total as u32);
    msg.extend(unhex("2a 00 0079")); // SK: Next Payload Delete, Payload Length 121
    let aad = msg.clone();
    let mut body = p;
    body.push(0); // Pad Length
    let k = keymat();
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &k[..32]).unwrap());
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&k[32..36]);
    nonce[4..].copy_from_slice(&IV);
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(&aad),
        &mut body,
    )
    .unwrap();
    msg.extend_from_slice(&IV);
    msg.extend(body);
    assert_eq!(msg.len(), total);
    msg
}

fn member(g: &GroupState) -> RekeyReader {
    let kwk = ike_kwk(0x33);
    let (gsa, kd) =
        build_registration(g, &MemberGrant::default(), &kwk, &BuildContext { now: NOW }).unwrap();
    let keys = read_registration(&gsa, &kd, &kwk, Role::Receiver).unwrap();
    RekeyReader::new(&keys, Instant::now()).unwrap()
}

/// RFC 9838 2.4.1.1: the GCKS signs exactly the hand-built `A | P`, and the AUTH payload
/// it sends is the hand-built one with the Ed25519 signature of those octets.
#[test]
fn rekey_signed_octets_are_figure_10_a_and_p() {
    let mut g = group();
    let content = RekeyContent {
        deletes: vec![DeletePayload::child(ProtocolId::Esp, &[0x1122_3344])],
        ..RekeyContent::default()
    };
    let m = RekeySender::default()
        .build(&mut g, &content, NOW + 10, &mut rng(9))
        .unwrap();
    assert_eq!(m.message_id, MID);
    let want = data_to_authenticate();
    assert_eq!(m.signed_octets.as_deref(), Some(&want[..]));
    assert_eq!(m.datagrams.len(), 1);
    // The header as sent: everything but the Length (which counts IV, padding and ICV).
    assert_eq!(&m.datagrams[0][..24], &ike_header(0)[..24]);
    let sk = g.rekey.as_ref().unwrap().sk_key().unwrap();
    let opened = protect::open(&sk, &m.datagrams[0], &mut Reassembly::default())
        .unwrap()
        .unwrap();
    assert_eq!(opened.plaintext, inner(&signature(&want)));
}

/// RFC 9838 2.4.1, 2.4.1.4: a GSA_REKEY encrypted and signed by hand (ring's AES-GCM and
/// Ed25519, no code of ours) is accepted, and the same octets again are a replay.
#[test]
fn rekey_reader_accepts_a_hand_built_message() {
    let g = group();
    let mut r = member(&g);
    let d = datagram();
    let u = r.handle(&d, Instant::now()).unwrap().unwrap();
    assert_eq!(u.message_id, MID);
    assert_eq!(u.via, SPI);
    assert_eq!(
        u.deletes,
        vec![DeletePayload::child(ProtocolId::Esp, &[0x1122_3344])]
    );
    assert_eq!(
        r.handle(&d, Instant::now()),
        Err(RekeyDrop::Replay { message_id: MID })
    );
}

/// The hand-built message signed over `A | P` with the unadjusted IKE Length (counting
/// IV, Pad Length and ICV) is refused: the member verifies exactly Figure 10's octets.
#[test]
fn rekey_reader_refuses_a_signature_over_other_octets() {
    let g = group();
    let mut r = member(&g);
    let mut wrong = data_to_authenticate();
    wrong[24..28].copy_from_slice(&149u32.to_be_bytes());
    let msg = datagram_signed(&signature(&wrong));
    assert!(matches!(
        r.handle(&msg, Instant::now()),
        Err(RekeyDrop::BadSignature(_))
    ));
}
