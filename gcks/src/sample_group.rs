//! The sample group that `gcks demo` and the `gcks-load` bench provision: multicast rekey
//! with an AES-GCM-256 Rekey SA and Ed25519-signed GSA_REKEY messages (GCAUTH Digital
//! Signature) to 239.192.0.9:848, and one AES-GCM-256 transport-mode TEK for UDP to
//! 239.192.0.1:5004. `gcks serve` does not use it.

use gikev2_policy::{
    DEFAULT_MAX_PACKET_RATE, EspMode, GroupId, GroupSpec, GroupWidePolicy, Identity, RekeyConfig,
    RekeyMode, Selector, SnPolicy, Store, TekPolicySpec, TekProtocol,
};
use gikev2_proto::crypto::{SignatureScheme, SigningKey};
use gikev2_proto::registry::{EncrId, GcAuthId, KwaId, SnId};

/// Creates the group `name` (IDg: ID_KEY_ID of the name) with its signing key `key_name`,
/// the given capacity and group-wide policy, and its TEK policy.
pub async fn create(
    store: &Store,
    name: &str,
    key_name: &str,
    capacity: u32,
    policy: GroupWidePolicy,
    now: u64,
) -> Result<GroupId, String> {
    let e = |e: gikev2_policy::StoreError| e.to_string();
    let (_, pkcs8) = SigningKey::generate(SignatureScheme::Ed25519).map_err(|e| e.to_string())?;
    let key = store
        .add_signing_key(key_name, SignatureScheme::Ed25519, &pkcs8, now)
        .await
        .map_err(e)?;
    let group = store
        .create_group(
            &GroupSpec {
                name: name.into(),
                idg: Identity::key_id(name.as_bytes()),
                capacity,
                rekey: RekeyConfig {
                    mode: RekeyMode::Multicast,
                    dst: Some("239.192.0.9:848".parse().map_err(|_| "address")?),
                    src_addr: None,
                    src_port: None,
                    lifetime: 86_400,
                    encr: EncrId::AesGcm16,
                    encr_key_bits: Some(256),
                    integ: None,
                    kwa: KwaId::Kw5649_256,
                    gcauth: GcAuthId::DigitalSignature,
                    signing_key: Some(key),
                },
                tek_lifetime: 3_600,
                policy,
            },
            now,
        )
        .await
        .map_err(e)?;
    store
        .add_tek_policy(
            group,
            &TekPolicySpec {
                protocol: TekProtocol::Esp,
                ip_protocol: 17,
                src: Selector::any(false),
                dst: Selector::host_port("239.192.0.1".parse().map_err(|_| "address")?, 5004),
                encr: EncrId::AesGcm16,
                encr_key_bits: Some(256),
                integ: None,
                sn: SnPolicy::Fixed(SnId::Unspecified32),
                mode: EspMode::Transport,
                max_packet_rate: DEFAULT_MAX_PACKET_RATE,
            },
        )
        .await
        .map_err(e)?;
    Ok(group)
}
