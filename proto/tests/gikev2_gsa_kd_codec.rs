//! Wire codec of the G-IKEv2 GSA (RFC 9838 4.4) and KD (RFC 9838 4.5) payload bodies:
//! byte-exact vectors computed by hand from Figures 15-21, decode errors for malformed
//! attributes, and property tests (round trip, no panic on arbitrary bytes).

use gikev2_proto::codec::{Codec, Reader};
use gikev2_proto::error::DecodeError;
use gikev2_proto::registry::{
    EncrId, GcAuthId, KwaId, NotifyType, ProtocolId, SnId, TransformType, TsType,
};
use gikev2_proto::wire::attribute::{AttrValue, Attribute};
use gikev2_proto::wire::gsa::{GroupPolicy, GsaAttributes, GsaPayload, GsaPolicy, GwPolicy, Spi};
use gikev2_proto::wire::kd::{AuthKey, GroupKeyBag, KdPayload, KeyBag, MemberKeyBag, WrappedKey};
use gikev2_proto::wire::transform::Transform;
use gikev2_proto::wire::ts::TrafficSelector;
use proptest::prelude::*;

/// Hex with spaces, newlines and `#` comments allowed.
fn h(s: &str) -> Vec<u8> {
    let clean: String = s
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    hex::decode(clean).expect("test hex")
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Ed25519 AlgorithmIdentifier (RFC 8420 2, RFC 8410): SEQUENCE { OID 1.3.101.112 }.
const ED25519_ALG_ID: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

fn kek_policy() -> GsaPolicy {
    GsaPolicy::kek(
        0x0102_0304_0506_0708,
        0x1112_1314_1516_1718,
        TrafficSelector::single("192.0.2.1".parse().unwrap(), 17, Some(848)),
        TrafficSelector::single("239.0.0.1".parse().unwrap(), 17, Some(848)),
    )
    .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
    .with_transform(Transform::kwa(KwaId::Kw5649_256))
    .with_transform(Transform::gcauth(
        GcAuthId::DigitalSignature,
        Some(&ED25519_ALG_ID),
    ))
    .with_key_lifetime(3600)
    .with_initial_message_id(5)
}

fn tek_policy() -> GsaPolicy {
    GsaPolicy::esp(
        0x1234_5678,
        TrafficSelector::any(false),
        TrafficSelector::single("239.0.0.1".parse().unwrap(), 0, None),
    )
    .with_transform(Transform::encr(EncrId::AesGcm16, Some(128)))
    .with_transform(Transform::sn(SnId::Unspecified32))
    .with_key_lifetime(1800)
}

fn gw_policy() -> GwPolicy {
    GwPolicy::new()
        .with_atd(5)
        .with_dtd(10)
        .with_sender_id_bits(16)
}

fn example_gsa() -> GsaPayload {
    GsaPayload::new()
        .with_gsa(kek_policy())
        .with_gsa(tek_policy())
        .with_gw(gw_policy())
}

/// Figure 15 for the KEK: 4 + 16 (SPI) + 16 + 16 (TS) + 12 + 8 + 19 (transforms)
/// + 8 + 8 (attributes) = 107 octets.
fn kek_policy_bytes() -> Vec<u8> {
    h("
        06 10 006b                              # GIKE_UPDATE, SPI Size 16, Length 107
        0102030405060708 1112131415161718       # SPIi | SPIr
        07 11 0010 0350 0350 c0000201 c0000201  # src TS: UDP 192.0.2.1 port 848
        07 11 0010 0350 0350 ef000001 ef000001  # dst TS: UDP 239.0.0.1 port 848
        03 00 000c 01 00 0014 800e 0100         # ENCR AES-GCM-16, Key Length 256 (TV)
        03 00 0008 0d 00 0003                   # KWA KW_5649_256
        00 00 0013 0e 00 0002                   # GCAUTH Digital Signature (last: 0)
           0012 0007 300506032b6570             #   Signature Algorithm Identifier (TLV)
        0001 0004 00000e10                      # GSA_KEY_LIFETIME 3600
        0002 0004 00000005                      # GSA_INITIAL_MESSAGE_ID 5
    ")
}

/// Figure 15 for the TEK: 4 + 4 + 16 + 16 + 12 + 8 + 8 = 68 octets.
fn tek_policy_bytes() -> Vec<u8> {
    h("
        03 04 0044                              # ESP, SPI Size 4, Length 68
        12345678                                # SPI
        07 00 0010 0000 ffff 00000000 ffffffff  # src TS: any IPv4
        07 00 0010 0000 ffff ef000001 ef000001  # dst TS: 239.0.0.1, any protocol/port
        03 00 000c 01 00 0014 800e 0080         # ENCR AES-GCM-16, Key Length 128
        00 00 0008 05 00 0002                   # SN 32-bit Unspecified Numbers (last)
        0001 0004 00000708                      # GSA_KEY_LIFETIME 1800
    ")
}

/// Figure 17: 4 + 3 TV attributes of 4 octets = 16.
fn gw_policy_bytes() -> Vec<u8> {
    h("
        00 00 0010                              # Protocol 0, RESERVED, Length 16
        8001 0005                               # GWP_ATD 5 (TV)
        8002 000a                               # GWP_DTD 10 (TV)
        8003 0010                               # GWP_SENDER_ID_BITS 16 (TV)
    ")
}

fn example_gsa_bytes() -> Vec<u8> {
    cat(&[kek_policy_bytes(), tek_policy_bytes(), gw_policy_bytes()])
}

/// Ed25519 SubjectPublicKeyInfo (RFC 8410 4): 12-octet prefix + 32-octet key.
fn ed25519_spki() -> Vec<u8> {
    cat(&[h("302a300506032b6570032100"), vec![0xd7; 32]])
}

fn example_kd() -> KdPayload {
    KdPayload::new()
        .with(
            GroupKeyBag::kek(0x0102_0304_0506_0708, 0x1112_1314_1516_1718)
                .with_sa_key(WrappedKey::new(0, 0, vec![0xa5; 24])),
        )
        .with(GroupKeyBag::esp(0x1234_5678).with_sa_key(WrappedKey::new(0, 0, vec![0xb6; 24])))
        .with(
            MemberKeyBag::new()
                .with_wrap_key(WrappedKey::new(7, 0, vec![0xc7; 24]))
                .with_auth_key(ed25519_spki())
                .with_sender_id(1),
        )
}

fn example_kd_bytes() -> Vec<u8> {
    cat(&[
        // Figure 19, KEK bag: 4 + 16 + (4 + 8 + 24) = 56.
        h("06 10 0038 0102030405060708 1112131415161718"),
        h("0001 0020 00000000 00000000"), // SA_KEY: Key ID 0, KWK ID 0
        vec![0xa5; 24],
        // Figure 19, TEK bag: 4 + 4 + 36 = 44.
        h("03 04 002c 12345678"),
        h("0001 0020 00000000 00000000"),
        vec![0xb6; 24],
        // Figure 20, member bag: 4 + 36 + 48 + 8 = 96.
        h("00 00 0060"),
        h("0001 0020 00000007 00000000"), // WRAP_KEY: Key ID 7, default KWK
        vec![0xc7; 24],
        h("0002 002c"), // AUTH_KEY: 44-octet SPKI
        ed25519_spki(),
        h("0003 0004 00000001"), // GM_SENDER_ID 1 (4 octets)
    ])
}

#[test]
fn gsa_example_encodes_to_hand_computed_bytes() {
    assert_eq!(kek_policy().to_bytes(), kek_policy_bytes());
    assert_eq!(tek_policy().to_bytes(), tek_policy_bytes());
    assert_eq!(gw_policy().to_bytes(), gw_policy_bytes());
    assert_eq!(example_gsa().to_bytes(), example_gsa_bytes());
}

#[test]
fn gsa_example_decodes_to_typed_policies() {
    let gsa = GsaPayload::read_bytes(&example_gsa_bytes()).unwrap();
    assert_eq!(gsa, example_gsa());
    let kek = gsa.kek().unwrap();
    assert_eq!(
        kek.spi,
        Spi::Rekey {
            spi_i: 0x0102_0304_0506_0708,
            spi_r: 0x1112_1314_1516_1718
        }
    );
    assert_eq!(kek.attributes.key_lifetime, Some(3600));
    assert_eq!(kek.attributes.initial_message_id, Some(5));
    assert_eq!(
        kek.transform(TransformType::GcAuth)
            .unwrap()
            .signature_algorithm_id(),
        Some(&ED25519_ALG_ID[..])
    );
    let teks: Vec<_> = gsa.teks().collect();
    assert_eq!(teks.len(), 1);
    assert_eq!(teks[0].spi, Spi::Ipsec(0x1234_5678));
    assert_eq!(teks[0].encr_id(), Some(EncrId::AesGcm16));
    let gw = gsa.gw().unwrap();
    assert_eq!(
        (gw.atd, gw.dtd, gw.sender_id_bits),
        (Some(5), Some(10), Some(16))
    );
    assert!(gsa.uses_counter_mode());
}

#[test]
fn kd_example_encodes_to_hand_computed_bytes_and_back() {
    assert_eq!(example_kd().to_bytes(), example_kd_bytes());
    let kd = KdPayload::read_bytes(&example_kd_bytes()).unwrap();
    assert_eq!(kd, example_kd());
    let member = kd.member().unwrap();
    assert_eq!(member.sender_ids, vec![1]);
    assert_eq!(member.auth_key.as_ref().unwrap().spki_der(), ed25519_spki());
    assert_eq!(member.wrap_keys[0].key_id, 7);
    assert_eq!(kd.kek().unwrap().sa_keys.len(), 1);
    assert!(
        kd.bag_for(ProtocolId::Esp, &Spi::Ipsec(0x1234_5678))
            .is_some()
    );
}

#[test]
fn key_material_never_in_debug_output() {
    let dump = format!("{:?}", example_kd());
    for secret in ["a5a5", "165, 165", "b6b6", "182, 182", "199, 199"] {
        assert!(!dump.contains(secret), "{secret} leaked in {dump}");
    }
    assert!(dump.contains("encrypted_len: 24"));
    assert_eq!(format!("{:?}", AuthKey(vec![1, 2, 3])), "AuthKey(3 octets)");
}

#[test]
fn gsa_non_canonical_attribute_order_decodes_and_reencodes_canonically() {
    // GSA_INITIAL_MESSAGE_ID before GSA_KEY_LIFETIME: valid, re-encoded in canonical order.
    let mut b = kek_policy_bytes();
    let n = b.len();
    let (lifetime, msgid) = (b[n - 16..n - 8].to_vec(), b[n - 8..].to_vec());
    b.truncate(n - 16);
    b.extend_from_slice(&msgid);
    b.extend_from_slice(&lifetime);
    let p = GsaPolicy::read_bytes(&b).unwrap();
    assert_eq!(p, kek_policy());
    assert_eq!(p.to_bytes(), kek_policy_bytes());
}

#[test]
fn gw_reserved_octet_ignored_on_receipt() {
    // RFC 9838 4.4.3: RESERVED MUST be ignored on receipt, zero on transmission.
    let mut b = gw_policy_bytes();
    b[1] = 0xff;
    let gw = GwPolicy::read_bytes(&b).unwrap();
    assert_eq!(gw, gw_policy());
    assert_eq!(gw.to_bytes(), gw_policy_bytes());
}

/// A TEK policy whose attribute list is `attrs` (raw).
fn tek_with_attrs(attrs: &[u8]) -> Vec<u8> {
    let base = tek_policy_bytes();
    let mut b = base[..base.len() - 8].to_vec();
    b.extend_from_slice(attrs);
    let len = u16::try_from(b.len()).unwrap().to_be_bytes();
    b[2..4].copy_from_slice(&len);
    b
}

fn gw_with_attrs(attrs: &[u8]) -> Vec<u8> {
    let mut b = h("00 00 0000");
    b.extend_from_slice(attrs);
    let len = u16::try_from(b.len()).unwrap().to_be_bytes();
    b[2..4].copy_from_slice(&len);
    b
}

#[test]
fn gsa_attr_formats_checked() {
    // RFC 9838 4.4.2.2: GSA_KEY_LIFETIME is TLV with a 4-octet value.
    assert!(matches!(
        GsaPolicy::read_bytes(&tek_with_attrs(&h("8001 0708"))),
        Err(DecodeError::InvalidValue { .. })
    ));
    assert_eq!(
        GsaPolicy::read_bytes(&tek_with_attrs(&h("0001 0002 0708"))),
        Err(DecodeError::InvalidLength {
            what: "GSA_KEY_LIFETIME",
            len: 2
        })
    );
    assert_eq!(
        GsaPolicy::read_bytes(&tek_with_attrs(&h("0002 0008 0000000000000001"))),
        Err(DecodeError::InvalidLength {
            what: "GSA_INITIAL_MESSAGE_ID",
            len: 8
        })
    );
    // RFC 9838 4.4.2.2.3: GSA_NEXT_SPI is as long as the policy's SPI (4 for ESP).
    let ok = GsaPolicy::read_bytes(&tek_with_attrs(&h("0003 0004 00001000"))).unwrap();
    assert_eq!(ok.attributes.next_spis, vec![Spi::Ipsec(0x1000)]);
    assert!(matches!(
        GsaPolicy::read_bytes(&tek_with_attrs(&h(
            "0003 0010 00000000000000000000000000001000"
        ))),
        Err(DecodeError::InvalidLength { .. })
    ));
    assert!(GsaPolicy::read_bytes(&tek_with_attrs(&h("8003 1000"))).is_err());
}

#[test]
fn gsa_single_valued_attributes_at_most_once() {
    let twice = h("0001 0004 00000708 0001 0004 00000709");
    assert_eq!(
        GsaPolicy::read_bytes(&tek_with_attrs(&twice)),
        Err(DecodeError::TooMany("GSA_KEY_LIFETIME"))
    );
    let twice = h("0002 0004 00000001 0002 0004 00000002");
    assert_eq!(
        GsaPolicy::read_bytes(&tek_with_attrs(&twice)),
        Err(DecodeError::TooMany("GSA_INITIAL_MESSAGE_ID"))
    );
    // GSA_NEXT_SPI is multi-valued.
    let many = h("0003 0004 00001000 0003 0004 00002000");
    let p = GsaPolicy::read_bytes(&tek_with_attrs(&many)).unwrap();
    assert_eq!(p.attributes.next_spis.len(), 2);
}

#[test]
fn gsa_unknown_attributes_kept_in_order() {
    let unk = h("0009 0002 abcd 8010 0001");
    let p = GsaPolicy::read_bytes(&tek_with_attrs(&unk)).unwrap();
    assert_eq!(
        p.attributes,
        GsaAttributes {
            unknown: vec![
                Attribute::tlv(9u16, vec![0xab, 0xcd]),
                Attribute::tv(0x10u16, 1)
            ],
            ..GsaAttributes::default()
        }
    );
    assert_eq!(p.to_bytes(), tek_with_attrs(&unk));
}

#[test]
fn gw_attr_formats_checked() {
    // RFC 9838 4.4.3.1: GWP_* are TV and single-valued.
    assert!(matches!(
        GwPolicy::read_bytes(&gw_with_attrs(&h("0001 0002 0005"))),
        Err(DecodeError::InvalidValue { .. })
    ));
    assert_eq!(
        GwPolicy::read_bytes(&gw_with_attrs(&h("8002 0001 8002 0002"))),
        Err(DecodeError::TooMany("GWP_DTD"))
    );
    assert_eq!(
        GwPolicy::read_bytes(&gw_with_attrs(&h("8003 0008 8003 0008"))),
        Err(DecodeError::TooMany("GWP_SENDER_ID_BITS"))
    );
    let gw = GwPolicy::read_bytes(&gw_with_attrs(&h("8007 0001"))).unwrap();
    assert_eq!(gw.unknown, vec![Attribute::tv(7u16, 1)]);
}

#[test]
fn gsa_policy_protocol_and_spi_size_checked() {
    // RFC 9838 4.4.2: valid protocols are GIKE_UPDATE (SPI 16), AH and ESP (SPI 4).
    let mut b = tek_policy_bytes();
    b[0] = 1; // IKE
    assert!(matches!(
        GsaPolicy::read_bytes(&b),
        Err(DecodeError::InvalidValue { .. })
    ));
    let mut b = tek_policy_bytes();
    b[0] = 6; // GIKE_UPDATE with a 4-octet SPI
    assert!(matches!(
        GsaPolicy::read_bytes(&b),
        Err(DecodeError::InvalidLength { .. })
    ));
    let mut b = tek_policy_bytes();
    b[1] = 8;
    assert!(GsaPolicy::read_bytes(&b).is_err());
}

#[test]
fn gsa_policy_length_bounds_the_substructure() {
    // Length 3 is less than the header.
    let mut b = tek_policy_bytes();
    b[2..4].copy_from_slice(&[0, 3]);
    assert!(matches!(
        GsaPayload::read_bytes(&b),
        Err(DecodeError::InvalidLength { .. })
    ));
    // Length beyond the payload.
    let mut b = tek_policy_bytes();
    b[2..4].copy_from_slice(&[0, 0x45]);
    assert_eq!(
        GsaPayload::read_bytes(&b),
        Err(DecodeError::Truncated("GSA policy"))
    );
    // Length that cuts the transform list: the TEK's attributes become part of the
    // next substructure, which is then malformed.
    let mut b = tek_policy_bytes();
    b[2..4].copy_from_slice(&[0, 0x3c]);
    assert!(GsaPayload::read_bytes(&b).is_err());
    // The policy's transform list must end with Last Substruc 0 inside the policy.
    let mut b = tek_policy_bytes();
    let sn = 4 + 4 + 16 + 16 + 12;
    b[sn] = 3;
    assert!(GsaPolicy::read_bytes(&b).is_err());
}

#[test]
fn gsa_payload_dispatches_on_first_octet() {
    // RFC 9838 4.4.1: zero is GW policy, non-zero a GSA policy.
    let gsa = GsaPayload::read_bytes(&cat(&[gw_policy_bytes(), tek_policy_bytes()])).unwrap();
    assert!(matches!(gsa.policies[0], GroupPolicy::Gw(_)));
    assert!(matches!(gsa.policies[1], GroupPolicy::Gsa(_)));
    assert_eq!(GsaPayload::read_bytes(&[]).unwrap().policies.len(), 0);
    assert!(GsaPayload::read_bytes(&[0]).is_err());
}

#[test]
fn gsa_payload_policy_count_is_bounded() {
    let mut b = Vec::new();
    for _ in 0..65 {
        b.extend_from_slice(&h("00 00 0004"));
    }
    assert_eq!(
        GsaPayload::read_bytes(&b),
        Err(DecodeError::TooMany("group policies"))
    );
    assert_eq!(GsaPayload::read_bytes(&b[4..]).unwrap().policies.len(), 64);
}

fn member_with_attrs(attrs: &[u8]) -> Vec<u8> {
    gw_with_attrs(attrs) // same header shape: Protocol 0, RESERVED, Length
}

#[test]
fn kd_attr_formats_checked() {
    // RFC 9838 4.5.3.2: AUTH_KEY MUST NOT appear twice.
    assert_eq!(
        MemberKeyBag::read_bytes(&member_with_attrs(&h("0002 0001 aa 0002 0001 bb"))),
        Err(DecodeError::TooMany("AUTH_KEY"))
    );
    // RFC 9838 4.5.4: a wrapped key has at least Key ID and KWK ID.
    assert_eq!(
        MemberKeyBag::read_bytes(&member_with_attrs(&h("0001 0007 00000001 000000"))),
        Err(DecodeError::Truncated("wrapped key KWK ID"))
    );
    // TV format for TLV attributes.
    assert!(matches!(
        MemberKeyBag::read_bytes(&member_with_attrs(&h("8003 0001"))),
        Err(DecodeError::InvalidValue { .. })
    ));
    let mut sa_key_tv = h("03 04 000c 12345678 8001 0000");
    assert!(GroupKeyBag::read_bytes(&sa_key_tv).is_err());
    sa_key_tv[8] = 0; // TLV with zero length: too short for a wrapped key
    assert!(GroupKeyBag::read_bytes(&sa_key_tv).is_err());
}

#[test]
fn kd_gm_sender_id_accepts_one_to_four_octets() {
    // Our reading of RFC 9838 4.5.3.3 (format unspecified): big-endian, 1..=4 octets in,
    // 4 octets out.
    let b = MemberKeyBag::read_bytes(&member_with_attrs(&h("0003 0002 0102"))).unwrap();
    assert_eq!(b.sender_ids, vec![0x0102]);
    assert_eq!(b.to_bytes(), member_with_attrs(&h("0003 0004 00000102")));
    for bad in ["0003 0000", "0003 0005 0000000001"] {
        assert!(matches!(
            MemberKeyBag::read_bytes(&member_with_attrs(&h(bad))),
            Err(DecodeError::InvalidLength {
                what: "GM_SENDER_ID",
                ..
            })
        ));
    }
}

#[test]
fn kd_member_bag_reserved_ignored_and_protocol_dispatch() {
    let mut b = member_with_attrs(&h("0003 0004 00000009"));
    b[1] = 0x5a;
    let kd = KdPayload::read_bytes(&b).unwrap();
    assert!(matches!(kd.bags[0], KeyBag::Member(_)));
    assert_eq!(kd.member().unwrap().sender_ids, vec![9]);
    // Group key bag with a protocol that has no group SA.
    assert!(KdPayload::read_bytes(&h("01 04 0008 12345678")).is_err());
}

#[test]
fn decode_errors_map_to_invalid_syntax() {
    for bad in [
        &h("06 10 0004")[..],
        &h("00 00 0003")[..],
        &member_with_attrs(&h("0002 0001 aa 0002 0001 bb"))[..],
    ] {
        let e = GsaPayload::read_bytes(bad)
            .err()
            .or_else(|| KdPayload::read_bytes(bad).err())
            .expect("malformed");
        assert_eq!(e.notify(), NotifyType::InvalidSyntax);
    }
}

// ---------------------------------------------------------------- property tests

fn arb_ts() -> impl Strategy<Value = TrafficSelector> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<[u8; 4]>()
        )
            .prop_map(|(p, sp, ep, s, e)| TrafficSelector::Range {
                ip_protocol: p,
                start_port: sp,
                end_port: ep,
                start: s.into(),
                end: e.into(),
            }),
        (any::<u8>(), any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(p, s, e)| {
            TrafficSelector::Range {
                ip_protocol: p,
                start_port: 0,
                end_port: u16::MAX,
                start: s.into(),
                end: e.into(),
            }
        }),
        (
            any::<u8>().prop_filter("unknown TS type", |t| *t != 7 && *t != 8),
            proptest::collection::vec(any::<u8>(), 1..12)
        )
            .prop_map(|(ty, body)| TrafficSelector::Unknown {
                ty: TsType::from(ty),
                body,
            }),
    ]
}

fn arb_attr(exclude: &'static [u16]) -> impl Strategy<Value = Attribute> {
    (
        (0u16..0x8000).prop_filter("known type", move |t| !exclude.contains(t)),
        prop_oneof![
            any::<u16>().prop_map(AttrValue::Tv),
            proptest::collection::vec(any::<u8>(), 0..10).prop_map(AttrValue::Tlv),
        ],
    )
        .prop_map(|(ty, value)| Attribute { ty, value })
}

fn arb_transform() -> impl Strategy<Value = Transform> {
    (
        any::<u8>(),
        any::<u16>(),
        proptest::collection::vec(arb_attr(&[]), 0..3),
    )
        .prop_map(|(ty, id, attributes)| Transform {
            ty: TransformType::from(ty),
            id,
            attributes,
        })
}

fn arb_protocol_spi() -> impl Strategy<Value = (ProtocolId, Spi)> {
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_map(|(spi_i, spi_r)| (ProtocolId::GikeUpdate, Spi::Rekey { spi_i, spi_r })),
        any::<u32>().prop_map(|s| (ProtocolId::Esp, Spi::Ipsec(s))),
        any::<u32>().prop_map(|s| (ProtocolId::Ah, Spi::Ipsec(s))),
    ]
}

fn arb_same_kind_spi(spi: Spi) -> BoxedStrategy<Spi> {
    match spi {
        Spi::Ipsec(_) => any::<u32>().prop_map(Spi::Ipsec).boxed(),
        Spi::Rekey { .. } => (any::<u64>(), any::<u64>())
            .prop_map(|(spi_i, spi_r)| Spi::Rekey { spi_i, spi_r })
            .boxed(),
    }
}

fn arb_gsa_policy() -> impl Strategy<Value = GsaPolicy> {
    arb_protocol_spi().prop_flat_map(|(protocol, spi)| {
        (
            arb_ts(),
            arb_ts(),
            proptest::collection::vec(arb_transform(), 1..5),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::collection::vec(arb_same_kind_spi(spi), 0..3),
            proptest::collection::vec(arb_attr(&[1, 2, 3]), 0..3),
        )
            .prop_map(
                move |(
                    src,
                    dst,
                    transforms,
                    key_lifetime,
                    initial_message_id,
                    next_spis,
                    unknown,
                )| {
                    GsaPolicy {
                        protocol,
                        spi,
                        src,
                        dst,
                        transforms,
                        attributes: GsaAttributes {
                            key_lifetime,
                            initial_message_id,
                            next_spis,
                            unknown,
                        },
                    }
                },
            )
    })
}

fn arb_gw_policy() -> impl Strategy<Value = GwPolicy> {
    (
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u16>()),
        proptest::collection::vec(arb_attr(&[1, 2, 3]), 0..3),
    )
        .prop_map(|(atd, dtd, sender_id_bits, unknown)| GwPolicy {
            atd,
            dtd,
            sender_id_bits,
            unknown,
        })
}

fn arb_gsa() -> impl Strategy<Value = GsaPayload> {
    proptest::collection::vec(
        prop_oneof![
            3 => arb_gsa_policy().prop_map(GroupPolicy::Gsa),
            1 => arb_gw_policy().prop_map(GroupPolicy::Gw),
        ],
        0..5,
    )
    .prop_map(|policies| GsaPayload { policies })
}

fn arb_wrapped() -> impl Strategy<Value = WrappedKey> {
    (
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(k, w, e)| WrappedKey::new(k, w, e))
}

fn arb_key_bag() -> impl Strategy<Value = KeyBag> {
    prop_oneof![
        (
            arb_protocol_spi(),
            proptest::collection::vec(arb_wrapped(), 0..3),
            proptest::collection::vec(arb_attr(&[1]), 0..2),
        )
            .prop_map(|((protocol, spi), sa_keys, unknown)| {
                KeyBag::Group(GroupKeyBag {
                    protocol,
                    spi,
                    sa_keys,
                    unknown,
                })
            }),
        (
            proptest::collection::vec(arb_wrapped(), 0..3),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..60)),
            proptest::collection::vec(any::<u32>(), 0..3),
            proptest::collection::vec(arb_attr(&[1, 2, 3]), 0..2),
        )
            .prop_map(|(wrap_keys, auth, sender_ids, unknown)| {
                KeyBag::Member(MemberKeyBag {
                    wrap_keys,
                    auth_key: auth.map(AuthKey),
                    sender_ids,
                    unknown,
                })
            }),
    ]
}

fn arb_kd() -> impl Strategy<Value = KdPayload> {
    proptest::collection::vec(arb_key_bag(), 0..5).prop_map(|bags| KdPayload { bags })
}

proptest! {
    #[test]
    fn gsa_round_trips(gsa in arb_gsa()) {
        let bytes = gsa.to_bytes();
        prop_assert_eq!(GsaPayload::read_bytes(&bytes)?, gsa);
    }

    #[test]
    fn kd_round_trips(kd in arb_kd()) {
        let bytes = kd.to_bytes();
        prop_assert_eq!(KdPayload::read_bytes(&bytes)?, kd);
    }

    #[test]
    fn gsa_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(gsa) = GsaPayload::read(&mut Reader::new(&bytes)) {
            // Whatever decodes re-encodes to the same typed value.
            prop_assert_eq!(GsaPayload::read_bytes(&gsa.to_bytes())?, gsa.clone());
            for ctx in [
                gikev2_proto::wire::gsa::PolicyContext::Registration,
                gikev2_proto::wire::gsa::PolicyContext::Rekey,
                gikev2_proto::wire::gsa::PolicyContext::InbandRekey,
            ] {
                let _ = gsa.validate(ctx);
            }
        }
    }

    #[test]
    fn kd_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(kd) = KdPayload::read(&mut Reader::new(&bytes)) {
            prop_assert_eq!(KdPayload::read_bytes(&kd.to_bytes())?, kd.clone());
            let _ = kd.validate(gikev2_proto::wire::gsa::PolicyContext::Registration);
        }
    }

    /// Mutations of valid encodings reach deeper than random bytes.
    #[test]
    fn mutated_examples_never_panic(pos in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
        for base in [example_gsa_bytes(), example_kd_bytes()] {
            let mut b = base.clone();
            let i = pos % b.len();
            b[i] = val;
            b.truncate(cut % (b.len() + 1));
            if let Ok(g) = GsaPayload::read_bytes(&b) {
                prop_assert_eq!(GsaPayload::read_bytes(&g.to_bytes())?, g.clone());
                let gsa = example_gsa();
                let _ = g.validate(gikev2_proto::wire::gsa::PolicyContext::Registration);
                let _ = example_kd().validate_against(&gsa, gikev2_proto::wire::gsa::PolicyContext::Registration);
            }
            if let Ok(k) = KdPayload::read_bytes(&b) {
                prop_assert_eq!(KdPayload::read_bytes(&k.to_bytes())?, k.clone());
                let _ = k.validate_against(&example_gsa(), gikev2_proto::wire::gsa::PolicyContext::Registration);
            }
        }
    }
}
