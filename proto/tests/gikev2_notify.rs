//! The G-IKEv2 notifications of RFC 9838 4.7: wire form (Protocol ID and SPI Size zero) and
//! receipt (Notification Data ignored for the error types).

use gikev2_proto::codec::Codec;
use gikev2_proto::registry::{NotifyType, ProtocolId};
use gikev2_proto::wire::NotifyPayload;

const GROUP_ERRORS: [(NotifyType, u16); 3] = [
    (NotifyType::InvalidGroupId, 45),
    (NotifyType::AuthorizationFailed, 46),
    (NotifyType::RegistrationFailed, 49),
];

#[test]
fn group_error_notifies_have_zero_protocol_and_spi_size() {
    // RFC 9838 4.7.1-4.7.3: "The Protocol ID and SPI Size fields ... MUST be zero", no data.
    for (ty, value) in GROUP_ERRORS {
        let body = NotifyPayload::error(ty).to_bytes();
        let [hi, lo] = value.to_be_bytes();
        assert_eq!(body, [0, 0, hi, lo], "{ty}");
    }
}

#[test]
fn group_error_notify_data_is_ignored_on_receipt() {
    // RFC 9838 4.7.1-4.7.3: "the content of the Notification Data field MUST be ignored on
    // receipt": a notify carrying data still decodes as the same error.
    for (ty, value) in GROUP_ERRORS {
        let [hi, lo] = value.to_be_bytes();
        let received = NotifyPayload::read_bytes(&[0, 0, hi, lo, 0xde, 0xad, 0xbe, 0xef]).unwrap();
        assert_eq!(received.ty, ty);
        assert!(received.is_error());
        assert_eq!(received.protocol, ProtocolId::Reserved);
    }
}

#[test]
fn group_sender_has_zero_protocol_and_spi_size_and_a_four_octet_count() {
    // RFC 9838 4.7.4: Protocol ID and SPI Size zero; the count is 4 octets, big endian.
    let body = NotifyPayload::group_sender(3).to_bytes();
    assert_eq!(body, [0, 0, 0x40, 0x2d, 0, 0, 0, 3]);
    assert_eq!(
        NotifyPayload::read_bytes(&body)
            .unwrap()
            .group_sender_count()
            .unwrap(),
        3
    );
}
