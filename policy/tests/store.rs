//! The policy store on both backends (see common/mod.rs for how each test runs twice).

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use common::{TestDb, key};
use gikev2_policy::*;
use gikev2_proto::crypto::{SecretBytes, SignatureScheme, SigningKey};
use gikev2_proto::registry::{EncrId, GcAuthId, IdType, IntegId, KwaId, SnId};

on_both_backends!(
    admin_round_trip,
    secrets_sealed_at_rest_and_bound_to_master_key,
    psk_ciphertext_cannot_move_between_rows,
    bad_sql_edits_fail_with_clear_errors,
    api_refuses_invalid_specs,
    sender_ids_never_collide_across_processes,
    sender_ids_bounded_exhausted_and_reset,
    rekey_message_ids_strictly_increase_across_processes,
    rekey_message_id_rules,
    rekey_lease_is_exclusive,
    generation_conflict_detected,
    audit_log_written,
    capacity_enforced_under_concurrency,
    deletes_cascade,
    plain_sql_administration,
    registration_batches_decide_in_order_and_commit_with_their_audit,
    registration_batches_respect_capacity_across_processes,
    member_count_follows_every_membership_change,
    sequence_numbers_auto_and_packet_rate_round_trip_and_are_checked,
    migration_0006_keeps_each_tek_policys_and_teks_sequence_numbers,
    member_ppk_sealed_bound_and_checked,
    sequential_teks_go_to_one_sender_registration_across_processes,
    migration_0008_counts_existing_sequential_teks_as_claimed,
);

const T0: u64 = 1_800_000_000;

/// A PostgreSQL URL nobody answers: the pool only knows it timed out; the error names the
/// cause instead.
#[tokio::test]
async fn an_unreachable_postgres_server_is_reported_with_the_cause() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = StoreOptions {
        busy_timeout: std::time::Duration::from_millis(300),
        ..StoreOptions::default()
    };
    let url = format!("postgres://nobody@127.0.0.1:{port}/none");
    let err = Store::open_with(&url, key(9), &opts).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(!msg.contains("pool timed out"), "{msg}");
}

fn group_spec(name: &str, idg: &str) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        idg: Identity::fqdn(idg),
        capacity: 100,
        rekey: RekeyConfig {
            mode: RekeyMode::Multicast,
            dst: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(239, 1, 1, 1)),
                8848,
            )),
            src_addr: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            src_port: Some(848),
            lifetime: 86_400,
            encr: EncrId::AesGcm16,
            encr_key_bits: Some(256),
            integ: None,
            kwa: KwaId::Kw5649_256,
            gcauth: GcAuthId::Implicit,
            signing_key: None,
        },
        tek_lifetime: 3_600,
        policy: GroupWidePolicy {
            atd: Some(5),
            dtd: Some(10),
            sender_id_bits: Some(16),
            max_sender_ids_per_member: 16,
            forward_access_control: false,
            require_pq_ike: false,
        },
    }
}

fn tek_spec() -> TekPolicySpec {
    TekPolicySpec {
        protocol: TekProtocol::Esp,
        ip_protocol: 17,
        src: Selector::any(false),
        dst: Selector::host_port(IpAddr::V4(Ipv4Addr::new(239, 2, 2, 2)), 5004),
        encr: EncrId::AesGcm16,
        encr_key_bits: Some(128),
        integ: None,
        sn: SnPolicy::Fixed(SnId::Unspecified32),
        mode: EspMode::TunnelAddressPreserving,
        max_packet_rate: DEFAULT_MAX_PACKET_RATE,
    }
}

fn psk(s: &str) -> NewCredential {
    NewCredential::Psk(SecretBytes::from_slice(s.as_bytes()))
}

/// A group with one TEK policy and a PSK sender member; returns (group, member, policy).
async fn fixture(store: &Store, bits: Option<u8>) -> (GroupId, MemberId, TekPolicyId) {
    let mut spec = group_spec("media", "media.example");
    spec.policy.sender_id_bits = bits;
    let g = store.create_group(&spec, T0).await.unwrap();
    let p = store.add_tek_policy(g, &tek_spec()).await.unwrap();
    let m = store
        .add_member(&Identity::fqdn("gm1.example"), None, &psk("gm1 secret"), T0)
        .await
        .unwrap();
    store.authorize(m, g, Role::Sender, T0).await.unwrap();
    (g, m, p)
}

fn rekey_sa(spi_byte: u8, keymat: &[u8]) -> RekeySaRecord {
    let mut spi = [spi_byte; 16];
    spi[0] = 0x11;
    RekeySaRecord {
        spi,
        keymat: SecretBytes::from_slice(keymat),
        expires: T0 + 86_400,
    }
}

fn tek(policy: TekPolicyId, spi: u32, keymat: &[u8]) -> TekSaRecord {
    TekSaRecord {
        policy,
        spi,
        keymat: SecretBytes::from_slice(keymat),
        sn: SnId::Unspecified32,
        created: T0,
        expires: T0 + 3_600,
    }
}

async fn admin_round_trip(db: &TestDb) {
    let store = db.open(key(1)).await;
    let (sk, sk_pkcs8) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let skid = store
        .add_signing_key("gcks-2026", SignatureScheme::Ed25519, &sk_pkcs8, T0)
        .await
        .unwrap();
    let mut spec = group_spec("routing", "ospf.example");
    spec.rekey.gcauth = GcAuthId::DigitalSignature;
    spec.rekey.signing_key = Some(skid);
    spec.rekey.encr = EncrId::AesCbc;
    spec.rekey.integ = Some(IntegId::HmacSha2_256_128);
    let g = store.create_group(&spec, T0).await.unwrap();
    let p = store.add_tek_policy(g, &tek_spec()).await.unwrap();

    // Three kinds of credentials.
    let alice = Identity::fqdn("alice.example");
    let bob = Identity::ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    let carol = Identity::rfc822("carol@example.org");
    let ma = store
        .add_member(&alice, Some("Alice"), &psk("alice psk"), T0)
        .await
        .unwrap();
    let (bob_key, _) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let bob_spki = bob_key.public_key().to_spki().unwrap();
    let mb = store
        .add_member(
            &bob,
            None,
            &NewCredential::RawPublicKey {
                spki: bob_spki.clone(),
            },
            T0,
        )
        .await
        .unwrap();
    let ta = store
        .add_trust_anchor("root-ca", &[0x30, 0x03, 0x02, 0x01, 0x01])
        .await
        .unwrap();
    let mc = store
        .add_member(
            &carol,
            None,
            &NewCredential::X509 {
                trust_anchors: vec![ta],
            },
            T0,
        )
        .await
        .unwrap();
    store.authorize(ma, g, Role::Sender, T0).await.unwrap();
    store.authorize(mb, g, Role::Receiver, T0).await.unwrap();

    // Group configuration as the GCKS reads it.
    let cfg = store
        .group_config(&Identity::fqdn("ospf.example"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cfg.group.id, g);
    assert_eq!(cfg.group.spec, spec);
    assert_eq!(cfg.group.created, T0);
    assert_eq!(cfg.teks.len(), 1);
    assert_eq!(cfg.teks[0].id, p);
    assert_eq!(cfg.teks[0].spec, tek_spec());
    assert!(
        store
            .group_config(&Identity::fqdn("nope.example"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.groups().await.unwrap().len(), 1);
    assert_eq!(store.group_by_name("routing").await.unwrap().unwrap().id, g);
    assert_eq!(store.group(g).await.unwrap().unwrap().spec, spec);

    // Credentials, decrypted.
    let a = store.member_credential(&alice).await.unwrap().unwrap();
    assert_eq!(a.member.id, ma);
    assert_eq!(a.member.name.as_deref(), Some("Alice"));
    assert_eq!(
        a.credential,
        Credential::Psk(SecretBytes::from_slice(b"alice psk"))
    );
    assert!(!format!("{a:?}").contains("alice psk"));
    let b = store.member_credential(&bob).await.unwrap().unwrap();
    assert_eq!(b.credential, Credential::RawPublicKey { spki: bob_spki });
    let c = store.member_credential(&carol).await.unwrap().unwrap();
    match c.credential {
        Credential::X509 { trust_anchors } => {
            assert_eq!(trust_anchors.len(), 1);
            assert_eq!(trust_anchors[0].id, ta);
            assert_eq!(trust_anchors[0].name, "root-ca");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        store
            .member_credential(&Identity::fqdn("mallory.example"))
            .await
            .unwrap()
            .is_none()
    );
    // The same FQDN text under another ID type is another identity.
    assert!(
        store
            .member_credential(&Identity::new(IdType::KeyId, b"alice.example".to_vec()))
            .await
            .unwrap()
            .is_none()
    );

    // Authorizations.
    assert_eq!(
        store.authorization(&alice, g).await.unwrap(),
        Some(Role::Sender)
    );
    assert_eq!(
        store.authorization(&bob, g).await.unwrap(),
        Some(Role::Receiver)
    );
    assert_eq!(store.authorization(&carol, g).await.unwrap(), None);
    assert_eq!(
        store.authorized_identities(g).await.unwrap(),
        vec![alice.clone(), bob.clone()]
    );
    store.authorize(mb, g, Role::Sender, T0).await.unwrap();
    assert_eq!(
        store.authorization(&bob, g).await.unwrap(),
        Some(Role::Sender)
    );
    assert!(store.deauthorize(mb, g).await.unwrap());
    assert!(!store.deauthorize(mb, g).await.unwrap());
    assert_eq!(store.authorization(&bob, g).await.unwrap(), None);
    assert_eq!(
        store.authorized_identities(g).await.unwrap(),
        vec![alice.clone()]
    );
    assert_eq!(
        store.authorizations(g).await.unwrap(),
        vec![Authorization {
            member: ma,
            group: g,
            role: Role::Sender
        }]
    );
    let _ = mc;

    // Signing key: private half decrypts to what went in, public half matches.
    let rec = store.signing_key(skid).await.unwrap().unwrap();
    assert_eq!(rec.pkcs8, sk_pkcs8);
    assert_eq!(rec.info.public_spki, sk.public_key().to_spki().unwrap());
    assert_eq!(rec.info.scheme, SignatureScheme::Ed25519);
    assert_eq!(store.signing_keys().await.unwrap(), vec![rec.info.clone()]);

    // PSK rotation.
    assert!(
        store
            .set_member_psk(&alice, &SecretBytes::from_slice(b"new psk"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_member_psk(&bob, &SecretBytes::from_slice(b"x"))
            .await
            .unwrap()
    );
    let a = store.member_credential(&alice).await.unwrap().unwrap();
    assert_eq!(
        a.credential,
        Credential::Psk(SecretBytes::from_slice(b"new psk"))
    );
    assert_eq!(store.members().await.unwrap().len(), 3);
    assert_eq!(
        store.member(&bob).await.unwrap().unwrap().credential,
        CredentialKind::RawPublicKey
    );

    // Reopening runs the (already applied) migrations again without harm.
    store.close().await;
    let again = db.open(key(1)).await;
    assert_eq!(again.groups().await.unwrap().len(), 1);
    again.close().await;
}

async fn secrets_sealed_at_rest_and_bound_to_master_key(db: &TestDb) {
    let (g, p) = {
        let store = db.open(key(7)).await;
        let (g, _, p) = fixture(&store, Some(8)).await;
        let (_, pkcs8) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
        store
            .add_signing_key("k", SignatureScheme::Ed25519, &pkcs8, T0)
            .await
            .unwrap();
        let kek = b"KEK-KEYMAT-0123456789abcdef-KEK-KEYMAT";
        let tek_km = b"TEK-KEYMAT-0123456789abcdef-salt";
        store
            .commit_group_state(
                g,
                0,
                &NewGroupState {
                    rekey: Some(rekey_sa(1, kek)),
                    teks: vec![tek(p, 0x1000, tek_km)],
                },
                T0,
            )
            .await
            .unwrap();

        // The raw columns hold nonce | ciphertext | tag, never the clear value.
        let psks = db.raw_blobs("SELECT psk_enc FROM members").await;
        assert_eq!(psks.len(), 1);
        assert_eq!(psks[0].len(), 12 + b"gm1 secret".len() + 16);
        assert!(!psks[0].windows(10).any(|w| w == b"gm1 secret"));
        let keks = db
            .raw_blobs("SELECT rekey_keymat_enc FROM group_state")
            .await;
        assert!(!keks[0].windows(10).any(|w| w == &kek[..10]));
        let teks = db.raw_blobs("SELECT keymat_enc FROM tek_sas").await;
        assert!(!teks[0].windows(10).any(|w| w == &tek_km[..10]));
        let sks = db.raw_blobs("SELECT pkcs8_enc FROM signing_keys").await;
        assert!(
            !sks[0]
                .windows(16)
                .any(|w| pkcs8.as_bytes().windows(16).any(|x| x == w))
        );
        store.close().await;
        (g, p)
    };

    // Same master key after a restart: everything decrypts.
    let store = db.open(key(7)).await;
    let cred = store
        .member_credential(&Identity::fqdn("gm1.example"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cred.credential,
        Credential::Psk(SecretBytes::from_slice(b"gm1 secret"))
    );
    let st = store.group_state(g).await.unwrap().unwrap();
    assert_eq!(
        st.rekey.unwrap().keymat.as_bytes(),
        b"KEK-KEYMAT-0123456789abcdef-KEK-KEYMAT"
    );
    assert_eq!(st.teks[0].policy, p);
    assert_eq!(
        st.teks[0].keymat.as_bytes(),
        b"TEK-KEYMAT-0123456789abcdef-salt"
    );
    store.close().await;

    // Another master key: refused at open, with a clear error.
    let err = Store::open(&db.url, key(8)).await.unwrap_err();
    assert!(matches!(err, StoreError::WrongMasterKey), "{err}");
    assert!(err.to_string().contains("master key does not match"));

    // The key file path: created 0600 on first use, the same key on the next start.
    let path = db.dir.0.join("master.key");
    let mut rng = gikev2_proto::crypto::SystemRandom::new();
    let k1 = MasterKey::load_or_create(&path, &mut rng).unwrap();
    let fresh = TestDb::sqlite();
    let s1 = fresh.open(k1).await;
    fixture(&s1, None).await;
    s1.close().await;
    let k2 = MasterKey::load_or_create(&path, &mut rng).unwrap();
    let s2 = fresh.open(k2).await;
    assert!(matches!(
        s2.member_credential(&Identity::fqdn("gm1.example"))
            .await
            .unwrap()
            .unwrap()
            .credential,
        Credential::Psk(_)
    ));
    s2.close().await;
}

async fn psk_ciphertext_cannot_move_between_rows(db: &TestDb) {
    let store = db.open(key(2)).await;
    let a = Identity::fqdn("a.example");
    let b = Identity::fqdn("b.example");
    store
        .add_member(&a, None, &psk("psk of a"), T0)
        .await
        .unwrap();
    store
        .add_member(&b, None, &psk("psk of b"), T0)
        .await
        .unwrap();
    // An administrator copies a's sealed PSK into b's row with plain SQL.
    let n = store
        .execute_admin_sql(
            "UPDATE members SET psk_enc = (SELECT psk_enc FROM members WHERE id_value = \
             (SELECT id_value FROM members ORDER BY id LIMIT 1)) \
             WHERE id = (SELECT MAX(id) FROM members)",
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let err = store.member_credential(&b).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Secrets(SecretsError::Decrypt { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("members.psk_enc"));
    // a is untouched.
    assert!(store.member_credential(&a).await.is_ok());
    store.close().await;
}

async fn bad_sql_edits_fail_with_clear_errors(db: &TestDb) {
    let store = db.open(key(3)).await;
    let (g, m, p) = fixture(&store, Some(8)).await;

    // A role outside the allowed set.
    let err = store
        .execute_admin_sql("UPDATE authorizations SET role = 'admin'")
        .await
        .unwrap_err();
    assert_eq!(err.constraint_kind(), Some(ConstraintKind::Check), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("check constraint violated"), "{msg}");
    assert!(msg.contains("role"), "{msg}");

    // An authorization for a group that does not exist.
    let err = store
        .execute_admin_sql(&format!(
            "INSERT INTO authorizations (member_id, group_id, role, created_at) \
             VALUES ({}, 9999, 'receiver', 0)",
            m.0
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.constraint_kind(),
        Some(ConstraintKind::ForeignKey),
        "{err}"
    );
    assert!(err.to_string().contains("foreign key"), "{err}");

    // The same identity twice.
    let err = store
        .execute_admin_sql(
            "INSERT INTO members (id_type, id_value, credential_kind, public_spki, created_at) \
             SELECT id_type, id_value, 'raw_public_key', id_value, 0 FROM members",
        )
        .await
        .unwrap_err();
    assert_eq!(err.constraint_kind(), Some(ConstraintKind::Unique), "{err}");

    // Ranges and sets on groups.
    for bad in [
        "UPDATE groups SET capacity = 0",
        "UPDATE groups SET rekey_mode = 'broadcast'",
        "UPDATE groups SET rekey_dst_port = 70000",
        "UPDATE groups SET sender_id_bits = 33",
        "UPDATE groups SET atd_secs = -1",
        "UPDATE groups SET rekey_dst_addr = '10.1.2.3'",
        "UPDATE groups SET rekey_dst_addr = NULL",
        "UPDATE groups SET gcauth_id = 2",
        "UPDATE tek_policies SET mode = 'tunnel-without-preservation'",
        "UPDATE tek_policies SET src_port_start = 10, src_port_end = 9",
        "UPDATE tek_policies SET sn_id = 7",
        "UPDATE group_state SET rekey_spi = {00}",
        "UPDATE group_state SET rekey_spi = {00112233445566778899aabbccddeeff}",
    ] {
        let bad = blob_literals(db, bad);
        let err = store.execute_admin_sql(&bad).await.unwrap_err();
        assert_eq!(
            err.constraint_kind(),
            Some(ConstraintKind::Check),
            "{bad}: {err}"
        );
    }
    // A credential kind without its column, or with a foreign one.
    let err = store
        .execute_admin_sql("UPDATE members SET credential_kind = 'raw_public_key'")
        .await
        .unwrap_err();
    assert_eq!(err.constraint_kind(), Some(ConstraintKind::Check), "{err}");
    // A Sender-ID taken twice.
    store.allocate_sender_ids(g, m, 1, T0).await.unwrap();
    let err = store
        .execute_admin_sql(&format!(
            "INSERT INTO sender_ids (group_id, sender_id, member_id, epoch, allocated_at) \
             VALUES ({}, 0, {}, 0, 0)",
            g.0, m.0
        ))
        .await
        .unwrap_err();
    assert_eq!(err.constraint_kind(), Some(ConstraintKind::Unique), "{err}");
    // A TEK whose policy belongs to another group.
    let other = store
        .create_group(&group_spec("other", "other.example"), T0)
        .await
        .unwrap();
    let op = store.add_tek_policy(other, &tek_spec()).await.unwrap();
    let err = store
        .commit_group_state(
            g,
            0,
            &NewGroupState {
                rekey: None,
                teks: vec![tek(op, 4096, b"0123456789abcdef0123")],
            },
            T0,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.constraint_kind(),
        Some(ConstraintKind::ForeignKey),
        "{err}"
    );
    // ..and the failed commit changed nothing.
    assert_eq!(store.group_state(g).await.unwrap().unwrap().generation, 0);

    // A stored value the constraints cannot catch but the model can: reported by column.
    if !db.is_pg() {
        // (PostgreSQL's inet cast refuses this one already.)
        store
            .execute_admin_sql("UPDATE tek_policies SET src_addr_start = '1.2.3'")
            .await
            .unwrap();
        let err = store.tek_policies(g).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::InvalidData {
                    column: "tek_policies.src_addr_start",
                    ..
                }
            ),
            "{err}"
        );
        // ..and by row, so that the edit can be found.
        assert!(
            err.to_string().starts_with(&format!(
                "invalid stored value in tek_policies.src_addr_start of TEK policy {} (group id {}): ",
                p.0, g.0
            )),
            "{err}"
        );
        store
            .execute_admin_sql("UPDATE groups SET rekey_dst_addr = '239.0.0.999'")
            .await
            .unwrap();
        let err = store.groups().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid stored value in groups.rekey_dst_addr of group \"media\" (id {}): \
                 \"239.0.0.999\" is not an IP address",
                g.0
            )
        );
    } else {
        assert!(
            store
                .execute_admin_sql("UPDATE tek_policies SET src_addr_start = '1.2.3.4.5'")
                .await
                .is_err()
        );
        // PostgreSQL also checks that address ranges are ordered.
        let err = store
            .execute_admin_sql(
                "UPDATE tek_policies SET src_addr_start = '10.0.0.9', src_addr_end = '10.0.0.1'",
            )
            .await
            .unwrap_err();
        assert_eq!(err.constraint_kind(), Some(ConstraintKind::Check), "{err}");
        assert!(err.to_string().contains("src_addrs_ordered"), "{err}");
    }
    store.close().await;
}

/// Migrates `db` to the schema before migration `next` (from copies of the migration files
/// before it, `count` of them), then runs `script` (plain SQL, as data written by that
/// older version); opening the store afterwards applies `next` and what follows.
async fn store_before_migration(db: &TestDb, next: &str, count: usize, script: &str) {
    let backend = if db.is_pg() { "postgres" } else { "sqlite" };
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(backend);
    let old = db.dir.0.join(format!("migrations_before_{next}"));
    std::fs::create_dir_all(&old).unwrap();
    let mut copied = 0;
    for e in std::fs::read_dir(&src).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < next {
            std::fs::copy(&path, old.join(&name)).unwrap();
            copied += 1;
        }
    }
    assert_eq!(copied, count);
    let migrator = sqlx::migrate::Migrator::new(old.as_path()).await.unwrap();
    if db.is_pg() {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        migrator.run(&pool).await.unwrap();
        sqlx::raw_sql(script).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        migrator.run(&pool).await.unwrap();
        sqlx::raw_sql(script).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

/// `{hex}` as each dialect spells a binary literal.
fn blob_literals(db: &TestDb, sql: &str) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(i) = rest.find('{') {
        let j = rest[i..].find('}').unwrap() + i;
        out.push_str(&rest[..i]);
        let hex = &rest[i + 1..j];
        if db.is_pg() {
            out.push_str(&format!("'\\x{hex}'::bytea"));
        } else {
            out.push_str(&format!("X'{hex}'"));
        }
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

async fn api_refuses_invalid_specs(db: &TestDb) {
    let store = db.open(key(4)).await;
    let mut s = group_spec("x", "x.example");
    s.rekey.dst = None;
    assert!(matches!(
        store.create_group(&s, T0).await,
        Err(StoreError::Invalid {
            what: "rekey destination",
            ..
        })
    ));
    let mut s = group_spec("x", "x.example");
    s.rekey.dst = Some("10.0.0.1:848".parse().unwrap());
    assert!(matches!(
        store.create_group(&s, T0).await,
        Err(StoreError::Invalid { .. })
    ));
    // RFC 9838 4.4.2: GSA_REKEY comes from one unicast address of the GCKS.
    let mut s = group_spec("x", "x.example");
    s.rekey.src_addr = Some("239.1.1.1".parse().unwrap());
    assert!(matches!(
        store.create_group(&s, T0).await,
        Err(StoreError::Invalid {
            what: "rekey source",
            ..
        })
    ));
    let mut s = group_spec("x", "x.example");
    s.capacity = 0;
    assert!(store.create_group(&s, T0).await.is_err());
    let mut s = group_spec("x", "x.example");
    s.policy.sender_id_bits = Some(0);
    assert!(store.create_group(&s, T0).await.is_err());
    let mut s = group_spec("x", "x.example");
    s.rekey.gcauth = GcAuthId::DigitalSignature;
    assert!(store.create_group(&s, T0).await.is_err());
    // A signing key that does not exist: the foreign key refuses it.
    s.rekey.signing_key = Some(SigningKeyId(42));
    let err = store.create_group(&s, T0).await.unwrap_err();
    assert_eq!(
        err.constraint_kind(),
        Some(ConstraintKind::ForeignKey),
        "{err}"
    );
    // Inband groups need no rekey destination.
    let mut s = group_spec("inband", "inband.example");
    s.rekey.mode = RekeyMode::Inband;
    s.rekey.dst = None;
    let g = store.create_group(&s, T0).await.unwrap();
    assert_eq!(store.group(g).await.unwrap().unwrap().spec, s);
    // Duplicate name or IDg.
    let err = store.create_group(&s, T0).await.unwrap_err();
    assert_eq!(err.constraint_kind(), Some(ConstraintKind::Unique), "{err}");

    let mut t = tek_spec();
    t.src = Selector::any(true);
    assert!(store.add_tek_policy(g, &t).await.is_err());
    let mut t = tek_spec();
    t.encr_key_bits = Some(100);
    assert!(store.add_tek_policy(g, &t).await.is_err());
    // RFC 9838 4.4.2.1.3: 64-bit sequence numbers MUST NOT be used for a multicast
    // Data-Security SA; a unicast destination may have them.
    let mut t = tek_spec();
    t.sn = SnPolicy::Fixed(SnId::Seq64PartiallyTransmitted);
    let err = store.add_tek_policy(g, &t).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid { what: "TEK SN", .. })
            && err.to_string().contains("RFC 9838 4.4.2.1.3"),
        "{err}"
    );
    t.dst = Selector::host_port(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 5004);
    store.add_tek_policy(g, &t).await.unwrap();
    // Suites the crypto layer cannot run are refused when configured, not at registration.
    let mut t = tek_spec();
    t.integ = Some(IntegId::HmacSha2_256_128);
    let err = store.add_tek_policy(g, &t).await.unwrap_err();
    assert!(err.to_string().contains("AEAD"), "{err}");
    let mut t = tek_spec();
    t.encr = EncrId::AesCbc;
    assert!(store.add_tek_policy(g, &t).await.is_err());
    t.integ = Some(IntegId::HmacSha2_256_128);
    store.add_tek_policy(g, &t).await.unwrap();
    let mut t = tek_spec();
    t.encr = EncrId::TripleDes;
    t.encr_key_bits = None;
    t.integ = Some(IntegId::HmacSha2_256_128);
    assert!(store.add_tek_policy(g, &t).await.is_err());
    let mut s2 = group_spec("y", "y.example");
    s2.rekey.kwa = KwaId::KwArx;
    assert!(store.create_group(&s2, T0).await.is_err());
    let err = store
        .add_tek_policy(GroupId(999), &tek_spec())
        .await
        .unwrap_err();
    assert_eq!(err.constraint_kind(), Some(ConstraintKind::ForeignKey));

    let id = Identity::fqdn("m.example");
    assert!(
        store
            .add_member(
                &id,
                None,
                &NewCredential::RawPublicKey {
                    spki: vec![1, 2, 3]
                },
                T0
            )
            .await
            .is_err()
    );
    assert!(
        store
            .add_member(
                &id,
                None,
                &NewCredential::X509 {
                    trust_anchors: vec![]
                },
                T0
            )
            .await
            .is_err()
    );
    assert!(
        store
            .add_member(
                &Identity::new(IdType::Ipv4Addr, vec![1, 2, 3]),
                None,
                &psk("p"),
                T0
            )
            .await
            .is_err()
    );
    let err = store
        .add_member(
            &id,
            None,
            &NewCredential::X509 {
                trust_anchors: vec![TrustAnchorId(77)],
            },
            T0,
        )
        .await
        .unwrap_err();
    assert_eq!(err.constraint_kind(), Some(ConstraintKind::ForeignKey));
    // The failed insert left no member behind.
    assert!(store.member(&id).await.unwrap().is_none());
    // A PKCS#8 that is not of the named scheme.
    let (_, ed) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    assert!(
        store
            .add_signing_key("k", SignatureScheme::EcdsaP256Sha256, &ed, T0)
            .await
            .is_err()
    );
    assert!(matches!(
        Store::open("mysql://localhost/x", key(4)).await,
        Err(StoreError::UnsupportedUrl { .. })
    ));
    assert!(Store::open("sqlite::memory:", key(4)).await.is_err());
    store.close().await;
}

async fn sender_ids_never_collide_across_processes(db: &TestDb) {
    // Two stores on one database stand for two GCKS processes.
    let a = Arc::new(db.open(key(5)).await);
    let b = Arc::new(db.open(key(5)).await);
    let (g, m, _) = fixture(&a, Some(16)).await;
    let m2 = a
        .add_member(&Identity::fqdn("gm2.example"), None, &psk("x"), T0)
        .await
        .unwrap();
    let run = |s: Arc<Store>, member: MemberId| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..200 {
                got.extend(s.allocate_sender_ids(g, member, 1, T0).await.unwrap());
            }
            got
        })
    };
    let (ra, rb) = tokio::join!(run(a.clone(), m), run(b.clone(), m2));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.len(), 200);
    assert_eq!(rb.len(), 200);
    // Each process sees its own values increase; together they are all distinct and
    // exactly the first 400 values (sequential allocation, RFC 9838 2.5.1).
    assert!(ra.windows(2).all(|w| w[0] < w[1]));
    assert!(rb.windows(2).all(|w| w[0] < w[1]));
    let all: BTreeSet<u32> = ra.iter().chain(rb.iter()).copied().collect();
    assert_eq!(all.len(), 400);
    assert_eq!(all, (0..400).collect());
    let stored = a.sender_ids(g).await.unwrap();
    assert_eq!(stored.len(), 400);
    assert_eq!(stored.iter().filter(|s| s.member == Some(m)).count(), 200);
    assert_eq!(a.group_state(g).await.unwrap().unwrap().next_sender_id, 400);
    a.close().await;
    b.close().await;
}

async fn sender_ids_bounded_exhausted_and_reset(db: &TestDb) {
    let store = db.open(key(6)).await;
    let (g, m, _) = fixture(&store, Some(3)).await; // 8 values
    assert_eq!(
        store.allocate_sender_ids(g, m, 0, T0).await.unwrap(),
        Vec::<u32>::new()
    );
    // The per-member bound (16) is above the space; ask for 5, get 5.
    assert_eq!(
        store.allocate_sender_ids(g, m, 5, T0).await.unwrap(),
        vec![0, 1, 2, 3, 4]
    );
    // Fewer than asked once the space runs out, then none.
    assert_eq!(
        store.allocate_sender_ids(g, m, 5, T0).await.unwrap(),
        vec![5, 6, 7]
    );
    assert_eq!(
        store.allocate_sender_ids(g, m, 1, T0).await.unwrap(),
        Vec::<u32>::new()
    );
    // Leaving does not free Sender-IDs (the member may still send on the old SAs).
    store.admit_member(g, m, T0).await.unwrap();
    assert!(store.remove_member_from_group(g, m).await.unwrap());
    assert_eq!(
        store.allocate_sender_ids(g, m, 1, T0).await.unwrap(),
        Vec::<u32>::new()
    );
    // The two refused allocations are counted: the demand that starts a new epoch.
    let st = store.group_state(g).await.unwrap().unwrap();
    assert_eq!(st.sender_id_refusals, 2);
    // After excluding everyone (RFC 9838 2.5.1 step 5) a new epoch starts at zero.
    assert_eq!(store.reset_sender_ids(g).await.unwrap(), 1);
    let st = store.group_state(g).await.unwrap().unwrap();
    assert_eq!(
        (st.next_sender_id, st.sender_id_refusals, st.sender_id_epoch),
        (0, 0, 1)
    );
    let got = store.allocate_sender_ids(g, m, 2, T0 + 1).await.unwrap();
    assert_eq!(got, vec![0, 1]);
    let rows = store.sender_ids(g).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.epoch == 1 && r.allocated == T0 + 1));

    // The per-member bound.
    let mut spec = group_spec("bounded", "bounded.example");
    spec.policy.max_sender_ids_per_member = 2;
    let g2 = store.create_group(&spec, T0).await.unwrap();
    assert_eq!(
        store.allocate_sender_ids(g2, m, 10, T0).await.unwrap(),
        vec![0, 1]
    );
    // Groups without Sender-ID bits hand out none, with a clear error.
    let mut spec = group_spec("nobits", "nobits.example");
    spec.policy.sender_id_bits = None;
    let g3 = store.create_group(&spec, T0).await.unwrap();
    assert!(matches!(
        store.allocate_sender_ids(g3, m, 1, T0).await,
        Err(StoreError::NoSenderIdBits(_))
    ));
    assert!(matches!(
        store.allocate_sender_ids(GroupId(4242), m, 1, T0).await,
        Err(StoreError::NotFound(_))
    ));
    // 32 bits: the full space is representable.
    let mut spec = group_spec("wide", "wide.example");
    spec.policy.sender_id_bits = Some(32);
    let g4 = store.create_group(&spec, T0).await.unwrap();
    store
        .execute_admin_sql(&format!(
            "UPDATE group_state SET next_sender_id = 4294967294 WHERE group_id = {}",
            g4.0
        ))
        .await
        .unwrap();
    assert_eq!(
        store.allocate_sender_ids(g4, m, 5, T0).await.unwrap(),
        vec![u32::MAX - 1, u32::MAX]
    );
    assert_eq!(
        store.allocate_sender_ids(g4, m, 1, T0).await.unwrap(),
        Vec::<u32>::new()
    );
    store.close().await;
}

async fn rekey_message_ids_strictly_increase_across_processes(db: &TestDb) {
    let a = Arc::new(db.open(key(9)).await);
    let b = Arc::new(db.open(key(9)).await);
    let (g, _, p) = fixture(&a, None).await;
    let kek = rekey_sa(2, &[0x42; 36]);
    a.commit_group_state(
        g,
        0,
        &NewGroupState {
            rekey: Some(kek.clone()),
            teks: vec![tek(p, 5000, &[1; 20])],
        },
        T0,
    )
    .await
    .unwrap();
    let spi = kek.spi;
    let run = |s: Arc<Store>| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..150 {
                got.push(s.next_rekey_message_id(g, &spi).await.unwrap());
            }
            got
        })
    };
    let (ra, rb) = tokio::join!(run(a.clone()), run(b.clone()));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.windows(2).all(|w| w[0] < w[1]), "{ra:?}");
    assert!(rb.windows(2).all(|w| w[0] < w[1]), "{rb:?}");
    let all: BTreeSet<u32> = ra.iter().chain(rb.iter()).copied().collect();
    assert_eq!(all, (0..300).collect());
    assert_eq!(
        a.group_state(g)
            .await
            .unwrap()
            .unwrap()
            .next_rekey_message_id,
        300
    );
    a.close().await;
    b.close().await;
}

async fn rekey_message_id_rules(db: &TestDb) {
    let store = db.open(key(10)).await;
    let (g, _, p) = fixture(&store, None).await;
    let old = rekey_sa(3, &[7; 36]);
    assert!(matches!(
        store.next_rekey_message_id(g, &old.spi).await,
        Err(StoreError::NoRekeySa)
    ));
    let gen1 = store
        .commit_group_state(
            g,
            0,
            &NewGroupState {
                rekey: Some(old.clone()),
                teks: vec![tek(p, 6000, &[2; 20])],
            },
            T0,
        )
        .await
        .unwrap();
    assert_eq!(gen1, 1);
    for want in 0..3 {
        assert_eq!(
            store.next_rekey_message_id(g, &old.spi).await.unwrap(),
            want
        );
    }
    // A TEK rekey under the same Rekey SA keeps the counter.
    let gen2 = store
        .commit_group_state(
            g,
            gen1,
            &NewGroupState {
                rekey: Some(old.clone()),
                teks: vec![tek(p, 6001, &[3; 20])],
            },
            T0 + 10,
        )
        .await
        .unwrap();
    assert_eq!(store.next_rekey_message_id(g, &old.spi).await.unwrap(), 3);
    // A new Rekey SA starts at 0 (RFC 9838 2.4.1.3); the old SPI is stale now.
    let new = rekey_sa(4, &[8; 36]);
    store
        .commit_group_state(
            g,
            gen2,
            &NewGroupState {
                rekey: Some(new.clone()),
                teks: vec![tek(p, 6002, &[4; 20])],
            },
            T0 + 20,
        )
        .await
        .unwrap();
    assert!(matches!(
        store.next_rekey_message_id(g, &old.spi).await,
        Err(StoreError::StaleRekeySa)
    ));
    assert_eq!(store.next_rekey_message_id(g, &new.spi).await.unwrap(), 0);
    // The last 32-bit value is handed out once, then the SA is exhausted.
    store
        .execute_admin_sql("UPDATE group_state SET next_rekey_message_id = 4294967295")
        .await
        .unwrap();
    assert_eq!(
        store.next_rekey_message_id(g, &new.spi).await.unwrap(),
        u32::MAX
    );
    assert!(matches!(
        store.next_rekey_message_id(g, &new.spi).await,
        Err(StoreError::MessageIdsExhausted)
    ));
    assert!(matches!(
        store.next_rekey_message_id(GroupId(999), &new.spi).await,
        Err(StoreError::NotFound(_))
    ));
    // SPIs are unique store-wide: another group cannot take this Rekey SA SPI or TEK SPI.
    let g2 = store
        .create_group(&group_spec("g2", "g2.example"), T0)
        .await
        .unwrap();
    let p2 = store.add_tek_policy(g2, &tek_spec()).await.unwrap();
    let err = store
        .commit_group_state(
            g2,
            0,
            &NewGroupState {
                rekey: Some(new.clone()),
                teks: vec![],
            },
            T0,
        )
        .await
        .unwrap_err();
    assert_eq!(err.constraint_kind(), Some(ConstraintKind::Unique), "{err}");
    let err = store
        .commit_group_state(
            g2,
            0,
            &NewGroupState {
                rekey: None,
                teks: vec![tek(p2, 6002, &[5; 20])],
            },
            T0,
        )
        .await
        .unwrap_err();
    assert_eq!(err.constraint_kind(), Some(ConstraintKind::Unique), "{err}");
    assert!(matches!(
        store
            .commit_group_state(
                g2,
                0,
                &NewGroupState {
                    rekey: None,
                    teks: vec![tek(p2, 255, &[5; 20])],
                },
                T0,
            )
            .await,
        Err(StoreError::Invalid { .. })
    ));
    store.close().await;
}

async fn rekey_lease_is_exclusive(db: &TestDb) {
    let a = Arc::new(db.open(key(11)).await);
    let b = Arc::new(db.open(key(11)).await);
    let (g, _, _) = fixture(&a, None).await;
    assert!(a.acquire_rekey_lease(g, "gcks-a", 30, T0).await.unwrap());
    assert!(
        !b.acquire_rekey_lease(g, "gcks-b", 30, T0 + 10)
            .await
            .unwrap()
    );
    // The holder renews.
    assert!(
        a.acquire_rekey_lease(g, "gcks-a", 30, T0 + 20)
            .await
            .unwrap()
    );
    assert!(
        !b.acquire_rekey_lease(g, "gcks-b", 30, T0 + 49)
            .await
            .unwrap()
    );
    assert_eq!(
        b.rekey_lease(g).await.unwrap().unwrap(),
        RekeyLease {
            group: g,
            holder: "gcks-a".into(),
            expires: T0 + 50
        }
    );
    // Expired: another process takes over, and the old holder cannot renew.
    assert!(
        b.acquire_rekey_lease(g, "gcks-b", 30, T0 + 50)
            .await
            .unwrap()
    );
    assert!(
        !a.acquire_rekey_lease(g, "gcks-a", 30, T0 + 51)
            .await
            .unwrap()
    );
    assert!(!a.release_rekey_lease(g, "gcks-a").await.unwrap());
    assert!(b.release_rekey_lease(g, "gcks-b").await.unwrap());
    assert!(a.rekey_lease(g).await.unwrap().is_none());

    // Many contenders at the same instant: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.acquire_rekey_lease(g, &format!("gcks-{i}"), 30, T0 + 100)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1);
    assert!(a.acquire_rekey_lease(g, "", 30, T0).await.is_err());
    a.close().await;
    b.close().await;
}

async fn generation_conflict_detected(db: &TestDb) {
    let a = Arc::new(db.open(key(12)).await);
    let b = Arc::new(db.open(key(12)).await);
    let (g, _, p) = fixture(&a, None).await;
    let s0 = a.group_state(g).await.unwrap().unwrap();
    assert_eq!(s0.generation, 0);
    assert!(s0.rekey.is_none() && s0.teks.is_empty());
    // Both read generation 0; the first commit wins, the second is told.
    let first = NewGroupState {
        rekey: Some(rekey_sa(5, &[1; 36])),
        teks: vec![tek(p, 7000, &[1; 20])],
    };
    let second = NewGroupState {
        rekey: Some(rekey_sa(6, &[2; 36])),
        teks: vec![tek(p, 7001, &[2; 20])],
    };
    assert_eq!(a.commit_group_state(g, 0, &first, T0).await.unwrap(), 1);
    let err = b.commit_group_state(g, 0, &second, T0).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::GenerationConflict {
                expected: 0,
                found: 1
            }
        ),
        "{err}"
    );
    let s1 = b.group_state(g).await.unwrap().unwrap();
    assert_eq!(s1.generation, 1);
    assert_eq!(s1.rekey, first.rekey);
    assert_eq!(s1.teks, first.teks);
    assert_eq!(s1.updated, T0);

    // Racing read-modify-commit loops from two processes: every success is one
    // generation, every conflict is reported, nothing is lost.
    let run = |s: Arc<Store>, base: u32| {
        tokio::spawn(async move {
            let (mut ok, mut conflicts) = (0u64, 0u64);
            for i in 0..25u32 {
                let cur = s.group_state(g).await.unwrap().unwrap();
                let next = NewGroupState {
                    rekey: cur.rekey.clone(),
                    teks: vec![tek(p, base + i, &[3; 20])],
                };
                match s.commit_group_state(g, cur.generation, &next, T0).await {
                    Ok(n) => {
                        assert_eq!(n, cur.generation + 1);
                        ok += 1;
                    }
                    Err(StoreError::GenerationConflict { .. }) => conflicts += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (ok, conflicts)
        })
    };
    let (ra, rb) = tokio::join!(run(a.clone(), 10_000), run(b.clone(), 20_000));
    let ((oka, ca), (okb, cb)) = (ra.unwrap(), rb.unwrap());
    assert_eq!(oka + ca, 25);
    assert_eq!(okb + cb, 25);
    let end = a.group_state(g).await.unwrap().unwrap();
    assert_eq!(end.generation, 1 + oka + okb);
    assert_eq!(end.teks.len(), 1);
    assert!(matches!(
        a.commit_group_state(GroupId(999), 0, &NewGroupState::default(), T0)
            .await,
        Err(StoreError::NotFound(_))
    ));
    a.close().await;
    b.close().await;
}

async fn audit_log_written(db: &TestDb) {
    let store = db.open(key(13)).await;
    let refused = AuditEvent {
        at: T0,
        peer: Some(Identity::fqdn("mallory.example")),
        group: Some(Identity::fqdn("media.example")),
        outcome: AuditOutcome::Refused,
        reason: "AUTHORIZATION_FAILED: not authorized for the group".into(),
    };
    let registered = AuditEvent {
        at: T0 + 1,
        peer: Some(Identity::ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))),
        group: Some(Identity::key_id(b"\x01\x02")),
        outcome: AuditOutcome::Registered,
        reason: "receiver".into(),
    };
    let anonymous = AuditEvent {
        at: T0 + 2,
        peer: None,
        group: None,
        outcome: AuditOutcome::Refused,
        reason: "AUTHENTICATION_FAILED".into(),
    };
    let i1 = store.record_audit(&refused).await.unwrap();
    let i2 = store.record_audit(&registered).await.unwrap();
    let i3 = store.record_audit(&anonymous).await.unwrap();
    assert!(i1 < i2 && i2 < i3);
    let got = store.audit_events(10).await.unwrap();
    assert_eq!(
        got,
        vec![
            AuditRecord {
                id: i3,
                event: anonymous
            },
            AuditRecord {
                id: i2,
                event: registered
            },
            AuditRecord {
                id: i1,
                event: refused.clone()
            },
        ]
    );
    assert_eq!(store.audit_events(1).await.unwrap().len(), 1);
    let mut long = refused;
    long.reason = "x".repeat(2000);
    assert!(store.record_audit(&long).await.is_err());
    store.close().await;
}

async fn capacity_enforced_under_concurrency(db: &TestDb) {
    let a = Arc::new(db.open(key(14)).await);
    let b = Arc::new(db.open(key(14)).await);
    let mut spec = group_spec("small", "small.example");
    spec.capacity = 5;
    let g = a.create_group(&spec, T0).await.unwrap();
    let mut members = Vec::new();
    for i in 0..20 {
        members.push(
            a.add_member(
                &Identity::fqdn(&format!("m{i}.example")),
                None,
                &psk("p"),
                T0,
            )
            .await
            .unwrap(),
        );
    }
    let mut tasks = Vec::new();
    for (i, m) in members.iter().copied().enumerate() {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.admit_member(g, m, T0).await.unwrap()
        }));
    }
    let mut admitted = Vec::new();
    for (t, m) in tasks.into_iter().zip(members.iter()) {
        match t.await.unwrap() {
            Admission::Admitted => admitted.push(*m),
            Admission::GroupFull { capacity } => assert_eq!(capacity, 5),
            Admission::AlreadyMember => panic!("each member asks once"),
        }
    }
    assert_eq!(admitted.len(), 5);
    assert_eq!(a.member_count(g).await.unwrap(), 5);
    assert_eq!(
        a.admit_member(g, admitted[0], T0).await.unwrap(),
        Admission::AlreadyMember
    );
    // Leaving frees a place.
    assert!(a.remove_member_from_group(g, admitted[0]).await.unwrap());
    assert!(!a.remove_member_from_group(g, admitted[0]).await.unwrap());
    assert_eq!(a.member_count(g).await.unwrap(), 4);
    let outsider = members.iter().find(|m| !admitted.contains(m)).unwrap();
    assert_eq!(
        b.admit_member(g, *outsider, T0).await.unwrap(),
        Admission::Admitted
    );
    a.close().await;
    b.close().await;
}

async fn deletes_cascade(db: &TestDb) {
    let store = db.open(key(15)).await;
    let (g, m, p) = fixture(&store, Some(8)).await;
    store.admit_member(g, m, T0).await.unwrap();
    store.allocate_sender_ids(g, m, 2, T0).await.unwrap();
    store
        .commit_group_state(
            g,
            0,
            &NewGroupState {
                rekey: Some(rekey_sa(9, &[9; 36])),
                teks: vec![tek(p, 9000, &[9; 20])],
            },
            T0,
        )
        .await
        .unwrap();
    store.acquire_rekey_lease(g, "me", 10, T0).await.unwrap();
    store
        .record_audit(&AuditEvent {
            at: T0,
            peer: Some(Identity::fqdn("gm1.example")),
            group: Some(Identity::fqdn("media.example")),
            outcome: AuditOutcome::Registered,
            reason: String::new(),
        })
        .await
        .unwrap();
    // Deleting the member: authorizations and memberships go, its Sender-IDs stay taken.
    assert!(
        store
            .delete_member(&Identity::fqdn("gm1.example"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_member(&Identity::fqdn("gm1.example"))
            .await
            .unwrap()
    );
    assert!(store.authorizations(g).await.unwrap().is_empty());
    assert_eq!(store.member_count(g).await.unwrap(), 0);
    let ids = store.sender_ids(g).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|s| s.member.is_none()));
    // A signing key in use cannot be deleted.
    let (_, pkcs8) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let k = store
        .add_signing_key("k", SignatureScheme::Ed25519, &pkcs8, T0)
        .await
        .unwrap();
    let mut spec = group_spec("signed", "signed.example");
    spec.rekey.gcauth = GcAuthId::DigitalSignature;
    spec.rekey.signing_key = Some(k);
    let g2 = store.create_group(&spec, T0).await.unwrap();
    let err = store.delete_signing_key(k).await.unwrap_err();
    assert_eq!(
        err.constraint_kind(),
        Some(ConstraintKind::ForeignKey),
        "{err}"
    );
    assert!(store.delete_group(g2).await.unwrap());
    assert!(store.delete_signing_key(k).await.unwrap());
    // Deleting a TEK policy takes its TEKs with it.
    assert!(store.delete_tek_policy(p).await.unwrap());
    assert!(store.group_state(g).await.unwrap().unwrap().teks.is_empty());
    // Deleting the group takes everything of it; the audit log stays.
    assert!(store.delete_group(g).await.unwrap());
    assert!(!store.delete_group(g).await.unwrap());
    assert!(store.group_state(g).await.unwrap().is_none());
    assert!(store.sender_ids(g).await.unwrap().is_empty());
    assert!(store.rekey_lease(g).await.unwrap().is_none());
    assert_eq!(store.audit_events(10).await.unwrap().len(), 1);
    // Trust anchors in use cannot be deleted either.
    let ta = store.add_trust_anchor("ca", &[0x30, 0]).await.unwrap();
    store
        .add_member(
            &Identity::fqdn("x509.example"),
            None,
            &NewCredential::X509 {
                trust_anchors: vec![ta],
            },
            T0,
        )
        .await
        .unwrap();
    assert!(store.delete_trust_anchor(ta).await.is_err());
    assert!(
        store
            .delete_member(&Identity::fqdn("x509.example"))
            .await
            .unwrap()
    );
    assert!(store.delete_trust_anchor(ta).await.unwrap());
    assert!(store.trust_anchors().await.unwrap().is_empty());
    store.close().await;
}

/// What docs/sql-admin.md shows an administrator doing with plain SQL works with the
/// store: a group, a TEK policy, a raw-key member and an authorization inserted by hand.
async fn plain_sql_administration(db: &TestDb) {
    let store = db.open(key(16)).await;
    let (_, pkcs8) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let spki = SigningKey::from_pkcs8(SignatureScheme::Ed25519, pkcs8.as_bytes())
        .unwrap()
        .public_key()
        .to_spki()
        .unwrap();
    let hex: String = spki.iter().map(|b| format!("{b:02x}")).collect();
    let text = |t: &str| {
        if db.is_pg() {
            format!("convert_to('{t}', 'UTF8')")
        } else {
            format!("CAST('{t}' AS BLOB)")
        }
    };
    let script = format!(
        "INSERT INTO groups (name, idg_type, idg_value, capacity, rekey_mode, rekey_dst_addr, \
             rekey_dst_port, rekey_lifetime_secs, rekey_encr_id, rekey_encr_key_bits, \
             rekey_kwa_id, gcauth_id, tek_lifetime_secs, sender_id_bits, created_at) \
         VALUES ('video', 2, {idg}, 50, 'multicast', '239.0.0.9', 848, 86400, 20, 256, 3, 1, \
             3600, 8, 0); \
         INSERT INTO tek_policies (group_id, ip_protocol, src_addr_start, src_addr_end, \
             dst_addr_start, dst_addr_end, dst_port_start, dst_port_end, encr_id, \
             encr_key_bits, sn_id, mode) \
         SELECT id, 17, '0.0.0.0', '255.255.255.255', '239.0.0.10', '239.0.0.10', 5004, 5004, \
             20, 128, 2, 'transport' FROM groups WHERE name = 'video'; \
         INSERT INTO members (id_type, id_value, credential_kind, public_spki, created_at) \
         VALUES (2, {member}, 'raw_public_key', {blob}, 0); \
         INSERT INTO authorizations (member_id, group_id, role, created_at) \
         SELECT m.id, g.id, 'sender', 0 FROM members m, groups g \
         WHERE m.id_value = {member} AND g.name = 'video';",
        idg = text("video.example"),
        member = text("cam1.example"),
        blob = if db.is_pg() {
            format!("'\\x{hex}'::bytea")
        } else {
            format!("X'{hex}'")
        },
    );
    store.execute_admin_sql(&script).await.unwrap();
    let cfg = store
        .group_config(&Identity::fqdn("video.example"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cfg.group.spec.rekey.encr, EncrId::AesGcm16);
    assert_eq!(cfg.group.spec.policy.sender_id_bits, Some(8));
    assert_eq!(cfg.teks.len(), 1);
    assert_eq!(cfg.teks[0].spec.sn, SnPolicy::Fixed(SnId::Unspecified32));
    assert_eq!(cfg.teks[0].spec.mode, EspMode::Transport);
    let cam = Identity::fqdn("cam1.example");
    let m = store.member_credential(&cam).await.unwrap().unwrap();
    assert_eq!(m.credential, Credential::RawPublicKey { spki });
    let g = cfg.group.id;
    assert_eq!(
        store.authorization(&cam, g).await.unwrap(),
        Some(Role::Sender)
    );
    // The trigger gave the group its state row: counters and leases work at once.
    assert_eq!(store.group_state(g).await.unwrap().unwrap().generation, 0);
    assert_eq!(
        store
            .allocate_sender_ids(g, m.member.id, 2, T0)
            .await
            .unwrap(),
        vec![0, 1]
    );
    assert!(store.acquire_rekey_lease(g, "a", 5, T0).await.unwrap());
    // And an API-created group does not get a second state row.
    let g2 = store
        .create_group(&group_spec("api", "api.example"), T0)
        .await
        .unwrap();
    assert_eq!(store.group_state(g2).await.unwrap().unwrap().updated, T0);
    store.close().await;
}

fn write(group: GroupId, who: &str, sender_ids: Option<u32>) -> RegistrationWrite {
    RegistrationWrite {
        group,
        member: Identity::fqdn(who),
        wants_sender: sender_ids.is_some(),
        sender_ids,
        refused_before: None,
        sequential_teks: Vec::new(),
        now: T0,
    }
}

/// The audit event the tests ask the store to write for an outcome.
fn audit_of(_: usize, w: &RegistrationWrite, o: &RegistrationOutcome) -> AuditEvent {
    let (outcome, reason) = match o {
        RegistrationOutcome::Admitted { sender_ids, .. } => {
            (AuditOutcome::Registered, format!("ids {sender_ids:?}"))
        }
        RegistrationOutcome::Refused(r) => (AuditOutcome::Refused, format!("{r:?}")),
        // Decided again by the caller: the store asks for no event.
        RegistrationOutcome::SequentialTekTaken { .. } => panic!("audit event asked for {o:?}"),
    };
    AuditEvent {
        at: w.now,
        peer: Some(w.member.clone()),
        group: None,
        outcome,
        reason,
    }
}

async fn registration_batches_decide_in_order_and_commit_with_their_audit(db: &TestDb) {
    let store = db.open(key(21)).await;
    let mut spec = group_spec("batch", "batch.example");
    spec.capacity = 3;
    spec.policy.sender_id_bits = Some(2); // 4 Sender-IDs
    let g = store.create_group(&spec, T0).await.unwrap();
    for (name, role) in [
        ("a.example", Some(Role::Sender)),
        ("b.example", Some(Role::Receiver)),
        ("c.example", Some(Role::Receiver)),
        ("d.example", Some(Role::Receiver)),
        ("e.example", Some(Role::Receiver)),
        ("x.example", None),
    ] {
        let m = store
            .add_member(&Identity::fqdn(name), None, &psk("p"), T0)
            .await
            .unwrap();
        if let Some(role) = role {
            store.authorize(m, g, role, T0).await.unwrap();
        }
    }
    let mut sag = write(g, "b.example", None);
    sag.refused_before = Some("SAg lacks AES-GCM".into());
    let mut sag_unauthorized = write(g, "x.example", None);
    sag_unauthorized.refused_before = Some("SAg lacks AES-GCM".into());
    let batch = vec![
        write(g, "nobody.example", None),
        write(g, "b.example", Some(1)),
        write(g, "a.example", Some(3)),
        sag,
        sag_unauthorized,
        write(g, "c.example", None),
        write(g, "c.example", None),
        write(g, "d.example", None),
        write(g, "e.example", None),
    ];
    let before = store.audit_events(100).await.unwrap().len();
    let got = store.commit_registrations(&batch, audit_of).await.unwrap();
    let refused = |r| RegistrationOutcome::Refused(r);
    let a = store
        .member(&Identity::fqdn("a.example"))
        .await
        .unwrap()
        .unwrap()
        .id;
    let c = store
        .member(&Identity::fqdn("c.example"))
        .await
        .unwrap()
        .unwrap()
        .id;
    let d = store
        .member(&Identity::fqdn("d.example"))
        .await
        .unwrap()
        .unwrap()
        .id;
    assert_eq!(
        got,
        vec![
            refused(RegistrationRefusal::UnknownMember),
            refused(RegistrationRefusal::NotSender),
            RegistrationOutcome::Admitted {
                member: a,
                newly: true,
                sender_ids: vec![0, 1, 2]
            },
            refused(RegistrationRefusal::RefusedBefore(
                "SAg lacks AES-GCM".into()
            )),
            // Authorization is checked before the caller's own refusal.
            refused(RegistrationRefusal::NotAuthorized),
            RegistrationOutcome::Admitted {
                member: c,
                newly: true,
                sender_ids: vec![]
            },
            RegistrationOutcome::Admitted {
                member: c,
                newly: false,
                sender_ids: vec![]
            },
            RegistrationOutcome::Admitted {
                member: d,
                newly: true,
                sender_ids: vec![]
            },
            refused(RegistrationRefusal::GroupFull { capacity: 3 }),
        ]
    );
    assert_eq!(store.member_count(g).await.unwrap(), 3);
    let ids = store.sender_ids(g).await.unwrap();
    assert_eq!(
        ids.iter()
            .map(|s| (s.sender_id, s.member))
            .collect::<Vec<_>>(),
        vec![(0, Some(a)), (1, Some(a)), (2, Some(a))]
    );
    assert_eq!(
        store.group_state(g).await.unwrap().unwrap().next_sender_id,
        3
    );
    // One audit row per write, in order, committed with the batch.
    let audit = store.audit_events(100).await.unwrap();
    assert_eq!(audit.len(), before + batch.len());
    let newest: Vec<String> = audit[..batch.len()]
        .iter()
        .rev()
        .map(|r| r.event.reason.clone())
        .collect();
    let expected: Vec<String> = batch
        .iter()
        .zip(&got)
        .enumerate()
        .map(|(i, (w, o))| audit_of(i, w, o).reason)
        .collect();
    assert_eq!(newest, expected);
    // A member already counted is admitted at capacity; the last Sender-ID, then none.
    let again = store
        .commit_registrations(
            &[
                write(g, "a.example", Some(5)),
                write(g, "a.example", Some(1)),
            ],
            audit_of,
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![
            RegistrationOutcome::Admitted {
                member: a,
                newly: false,
                sender_ids: vec![3]
            },
            refused(RegistrationRefusal::SenderIdsExhausted),
        ]
    );
    // The refusal is counted with the batch (migrations 0004), the counter is at the end.
    let st = store.group_state(g).await.unwrap().unwrap();
    assert_eq!((st.next_sender_id, st.sender_id_refusals), (4, 1));
    assert!(
        store
            .commit_registrations(&[], audit_of)
            .await
            .unwrap()
            .is_empty()
    );
    // Long reasons are clipped, not refused, in the batch path.
    let long = AuditEvent {
        at: T0,
        peer: None,
        group: None,
        outcome: AuditOutcome::Refused,
        reason: "x".repeat(2000),
    };
    store.record_audits(&[long.clone(), long]).await.unwrap();
    let last = store.audit_events(2).await.unwrap();
    assert!(last.iter().all(|r| r.event.reason.len() == 1024));
    store.close().await;
}

async fn registration_batches_respect_capacity_across_processes(db: &TestDb) {
    let a = Arc::new(db.open(key(22)).await);
    let b = Arc::new(db.open(key(22)).await);
    let mut spec = group_spec("crowd", "crowd.example");
    spec.capacity = 25;
    let g = a.create_group(&spec, T0).await.unwrap();
    for i in 0..60 {
        let m = a
            .add_member(
                &Identity::fqdn(&format!("m{i}.example")),
                None,
                &psk("p"),
                T0,
            )
            .await
            .unwrap();
        a.authorize(m, g, Role::Sender, T0).await.unwrap();
    }
    // Six batches of ten, from two stores at once; every member also asks for a
    // Sender-ID.
    let mut tasks = Vec::new();
    for k in 0..6 {
        let s = if k % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let batch: Vec<RegistrationWrite> = (k * 10..k * 10 + 10)
                .map(|i| write(g, &format!("m{i}.example"), Some(1)))
                .collect();
            s.commit_registrations(&batch, audit_of).await.unwrap()
        }));
    }
    let mut ids = BTreeSet::new();
    let mut admitted = 0;
    for t in tasks {
        for o in t.await.unwrap() {
            match o {
                RegistrationOutcome::Admitted {
                    newly, sender_ids, ..
                } => {
                    assert!(newly);
                    admitted += 1;
                    for id in sender_ids {
                        assert!(ids.insert(id), "Sender-ID {id} handed out twice");
                    }
                }
                RegistrationOutcome::Refused(r) => {
                    assert_eq!(r, RegistrationRefusal::GroupFull { capacity: 25 })
                }
                o => panic!("{o:?}"),
            }
        }
    }
    assert_eq!(admitted, 25);
    assert_eq!(a.member_count(g).await.unwrap(), 25);
    assert_eq!(ids, (0..25).collect());
    a.close().await;
    b.close().await;
}

/// The members counted against capacity live in `group_state.member_count`, kept by
/// triggers (migrations 0003) so that a registration batch need not count the group's
/// memberships. Every way memberships change, through the store or plain SQL, keeps it
/// equal to the count, and capacity is enforced from it.
async fn member_count_follows_every_membership_change(db: &TestDb) {
    let store = db.open(key(23)).await;
    let mut spec = group_spec("counted", "counted.example");
    spec.capacity = 6;
    let g = store.create_group(&spec, T0).await.unwrap();
    let g2 = store
        .create_group(&group_spec("other", "other.example"), T0)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..8 {
        let m = store
            .add_member(
                &Identity::fqdn(&format!("c{i}.example")),
                None,
                &psk("p"),
                T0,
            )
            .await
            .unwrap();
        store.authorize(m, g, Role::Receiver, T0).await.unwrap();
        store.authorize(m, g2, Role::Receiver, T0).await.unwrap();
        ids.push(m.0);
    }
    let check = async |what: &str, expected: i64| {
        for group in [g, g2] {
            let kept = db
                .raw_int(&format!(
                    "SELECT member_count FROM group_state WHERE group_id = {}",
                    group.0
                ))
                .await;
            let counted = db
                .raw_int(&format!(
                    "SELECT COUNT(*) FROM memberships WHERE group_id = {}",
                    group.0
                ))
                .await;
            assert_eq!(kept, counted, "{what}: group {group}");
        }
        assert_eq!(
            store.member_count(g).await.unwrap(),
            expected as u64,
            "{what}"
        );
    };
    check("no members", 0).await;
    // Through the store: a batch of three (one twice) and a single admission.
    let batch: Vec<RegistrationWrite> = ["c0", "c1", "c2", "c0"]
        .iter()
        .map(|n| write(g, &format!("{n}.example"), None))
        .collect();
    store.commit_registrations(&batch, audit_of).await.unwrap();
    check("batch", 3).await;
    assert_eq!(
        store.admit_member(g, MemberId(ids[3]), T0).await.unwrap(),
        Admission::Admitted
    );
    check("admit_member", 4).await;
    // Plain SQL: a multi-row insert, a move to another group, a delete.
    store
        .execute_admin_sql(&format!(
            "INSERT INTO memberships (group_id, member_id, joined_at) VALUES \
             ({g}, {a}, 0), ({g}, {b}, 0), ({g2}, {c}, 0)",
            g = g.0,
            g2 = g2.0,
            a = ids[4],
            b = ids[5],
            c = ids[6],
        ))
        .await
        .unwrap();
    check("SQL insert", 6).await;
    // The group is full by the kept count: the next registration is refused.
    let full = store
        .commit_registrations(&[write(g, "c7.example", None)], audit_of)
        .await
        .unwrap();
    assert_eq!(
        full,
        vec![RegistrationOutcome::Refused(
            RegistrationRefusal::GroupFull { capacity: 6 }
        )]
    );
    store
        .execute_admin_sql(&format!(
            "UPDATE memberships SET group_id = {g2} WHERE group_id = {g} AND member_id = {m}",
            g = g.0,
            g2 = g2.0,
            m = ids[5],
        ))
        .await
        .unwrap();
    check("SQL move", 5).await;
    store
        .execute_admin_sql(&format!(
            "DELETE FROM memberships WHERE group_id = {} AND member_id IN ({}, {})",
            g.0, ids[0], ids[1]
        ))
        .await
        .unwrap();
    check("SQL delete", 3).await;
    // The store's leave, and a member deleted outright (cascade).
    assert!(
        store
            .remove_member_from_group(g, MemberId(ids[2]))
            .await
            .unwrap()
    );
    check("leave", 2).await;
    store
        .execute_admin_sql(&format!("DELETE FROM members WHERE id = {}", ids[3]))
        .await
        .unwrap();
    check("member deleted", 1).await;
    // Every membership that ended above is counted for forward access control
    // (migrations 0005): the move, two deletes, the leave and the deleted member.
    let removed = async |g: GroupId| store.group_state(g).await.unwrap().unwrap().members_removed;
    assert_eq!(removed(g).await, 5);
    assert_eq!(
        removed(g2).await,
        0,
        "a move adds to the group it leaves only"
    );
    // A withdrawn authorization ends the membership it allowed.
    assert!(store.deauthorize(MemberId(ids[4]), g).await.unwrap());
    check("authorization withdrawn", 0).await;
    assert_eq!(removed(g).await, 6);
    store.acknowledge_members_removed(g, 4).await.unwrap();
    assert_eq!(removed(g).await, 2, "departures counted meanwhile stay");
    store.acknowledge_members_removed(g, 10).await.unwrap();
    assert_eq!(removed(g).await, 0);
    // A state row re-created by hand starts from the memberships that exist.
    store
        .execute_admin_sql(&format!(
            "DELETE FROM group_state WHERE group_id = {g}; \
             INSERT INTO group_state (group_id, updated_at) VALUES ({g}, 0)",
            g = g.0
        ))
        .await
        .unwrap();
    check("state row re-created", 0).await;
    // A hand edit that would make the count negative fails the CHECK.
    assert!(
        store
            .execute_admin_sql(&format!(
                "UPDATE group_state SET member_count = -1 WHERE group_id = {}",
                g.0
            ))
            .await
            .is_err()
    );
    store.close().await;
}

/// Migrations 0006 (RFC 9838 2.6, 4.4.2.1.3; R049, R077): `tek_policies.sn_id` NULL is
/// `auto`, `tek_policies.max_packet_rate` (default 1,000,000) bounds a Seq32 TEK's
/// lifetime, `tek_sas.sn_id` keeps each TEK's transform. The API and the constraints
/// refuse a rate that would leave a Seq32 TEK less than a minute, and transforms other
/// than 0..2.
async fn sequence_numbers_auto_and_packet_rate_round_trip_and_are_checked(db: &TestDb) {
    let store = db.open(key(21)).await;
    let (g, _, fixed) = fixture(&store, Some(8)).await;
    let mut spec = tek_spec();
    spec.sn = SnPolicy::Auto;
    spec.max_packet_rate = 5_000;
    spec.dst = Selector::host_port(IpAddr::V4(Ipv4Addr::new(239, 2, 2, 3)), 5004);
    let auto = store.add_tek_policy(g, &spec).await.unwrap();
    let teks = store.tek_policies(g).await.unwrap();
    assert_eq!(teks[0].id, fixed);
    assert_eq!(
        (teks[0].spec.sn, teks[0].spec.max_packet_rate),
        (
            SnPolicy::Fixed(SnId::Unspecified32),
            DEFAULT_MAX_PACKET_RATE
        )
    );
    assert_eq!(teks[1].id, auto);
    assert_eq!(teks[1].spec, spec);
    assert_eq!(
        db.raw_int(&format!(
            "SELECT COUNT(*) FROM tek_policies WHERE sn_id IS NULL AND id = {}",
            auto.0
        ))
        .await,
        1,
        "auto is stored as NULL"
    );

    // Each TEK keeps its own transform, whatever its policy says.
    let mut a = tek(fixed, 4096, b"0123456789abcdef0123");
    a.sn = SnId::Unspecified32;
    let mut b = tek(auto, 4097, b"0123456789abcdef0123");
    b.sn = SnId::Seq32;
    b.expires = T0 + 429;
    store
        .commit_group_state(
            g,
            0,
            &NewGroupState {
                rekey: None,
                teks: vec![a.clone(), b.clone()],
            },
            T0,
        )
        .await
        .unwrap();
    assert_eq!(
        store.group_state(g).await.unwrap().unwrap().teks,
        vec![a, b]
    );

    // The API refuses rates out of 1..=MAX_PACKET_RATE, naming the field.
    for rate in [0, MAX_PACKET_RATE + 1, u32::MAX] {
        spec.max_packet_rate = rate;
        let err = store.add_tek_policy(g, &spec).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Invalid {
                    what: "TEK max_packet_rate",
                    ..
                }
            ),
            "{rate}: {err}"
        );
    }
    spec.max_packet_rate = MAX_PACKET_RATE;
    spec.dst = Selector::host_port(IpAddr::V4(Ipv4Addr::new(239, 2, 2, 4)), 5004);
    let fastest = store.add_tek_policy(g, &spec).await.unwrap();
    assert_eq!(
        store.tek_policies(g).await.unwrap()[2]
            .spec
            .seq32_lifetime(),
        MIN_SEQ32_LIFETIME,
        "the highest rate leaves a Seq32 TEK one minute"
    );
    assert!(store.delete_tek_policy(fastest).await.unwrap());

    // So do the constraints, for SQL edits.
    for bad in [
        "UPDATE tek_policies SET max_packet_rate = 0",
        "UPDATE tek_policies SET max_packet_rate = 71582789",
        "UPDATE tek_policies SET sn_id = 3",
        "UPDATE tek_sas SET sn_id = 3",
    ] {
        let err = store.execute_admin_sql(bad).await.unwrap_err();
        assert_eq!(
            err.constraint_kind(),
            Some(ConstraintKind::Check),
            "{bad}: {err}"
        );
    }
    let err = store
        .execute_admin_sql("UPDATE tek_sas SET sn_id = NULL")
        .await
        .unwrap_err();
    assert_eq!(
        err.constraint_kind(),
        Some(ConstraintKind::NotNull),
        "a TEK always has a transform: {err}"
    );
    // A policy set to auto or to a rate with plain SQL reads back as such.
    store
        .execute_admin_sql(&format!(
            "UPDATE tek_policies SET sn_id = NULL, max_packet_rate = 71582788 WHERE id = {}",
            fixed.0
        ))
        .await
        .unwrap();
    let p = &store.tek_policies(g).await.unwrap()[0];
    assert_eq!(
        (p.spec.sn, p.spec.max_packet_rate),
        (SnPolicy::Auto, 71_582_788)
    );
    store.close().await;
}

/// Migrations 0006 on a store that has TEK policies and TEKs: every policy keeps its
/// transform (no policy becomes `auto`), gets the default packet rate, and each TEK gets
/// its policy's transform. (SQLite replaces the `sn_id` column in place: nothing cascades
/// to `tek_sas`.)
async fn migration_0006_keeps_each_tek_policys_and_teks_sequence_numbers(db: &TestDb) {
    let blob = |hex: &str| blob_literals(db, &format!("{{{hex}}}"));
    let script = format!(
        "INSERT INTO groups (name, idg_type, idg_value, capacity, rekey_mode, rekey_dst_addr, \
             rekey_dst_port, rekey_lifetime_secs, rekey_encr_id, rekey_encr_key_bits, \
             rekey_kwa_id, gcauth_id, tek_lifetime_secs, sender_id_bits, created_at) \
         VALUES ('old', 11, {idg}, 50, 'multicast', '239.0.0.9', 848, 86400, 20, 256, 3, 1, \
             3600, 8, 0); \
         INSERT INTO tek_policies (id, group_id, ip_protocol, src_addr_start, src_addr_end, \
             dst_addr_start, dst_addr_end, encr_id, encr_key_bits, sn_id, mode) \
         SELECT 7, id, 17, '0.0.0.0', '255.255.255.255', '239.0.0.10', '239.0.0.10', 20, \
             128, 0, 'transport' FROM groups; \
         INSERT INTO tek_policies (id, group_id, ip_protocol, src_addr_start, src_addr_end, \
             dst_addr_start, dst_addr_end, encr_id, encr_key_bits, sn_id, mode) \
         SELECT 8, id, 17, '0.0.0.0', '255.255.255.255', '239.0.0.11', '239.0.0.11', 20, \
             128, 2, 'transport' FROM groups; \
         INSERT INTO tek_sas (spi, group_id, policy_id, keymat_enc, created_at, expires_at) \
         SELECT 4096, id, 7, {keys}, 0, 3600 FROM groups; \
         INSERT INTO tek_sas (spi, group_id, policy_id, keymat_enc, created_at, expires_at) \
         SELECT 4097, id, 8, {keys}, 0, 3600 FROM groups;",
        idg = blob("6f6c64"),
        keys = blob(&"ab".repeat(48)),
    );
    store_before_migration(db, "0006", 5, &script).await;

    // Opening the store applies 0006.
    let store = db.open(key(22)).await;
    let cfg = store
        .group_config(&Identity::key_id(b"old"))
        .await
        .unwrap()
        .unwrap();
    let kept: Vec<_> = cfg
        .teks
        .iter()
        .map(|p| (p.id.0, p.spec.sn, p.spec.max_packet_rate))
        .collect();
    assert_eq!(
        kept,
        vec![
            (7, SnPolicy::Fixed(SnId::Seq32), DEFAULT_MAX_PACKET_RATE),
            (
                8,
                SnPolicy::Fixed(SnId::Unspecified32),
                DEFAULT_MAX_PACKET_RATE
            ),
        ]
    );
    for (spi, sn) in [(4096, 0), (4097, 2)] {
        assert_eq!(
            db.raw_int(&format!("SELECT sn_id FROM tek_sas WHERE spi = {spi}"))
                .await,
            sn,
            "TEK {spi}"
        );
    }
    // The column is still checked, and NULL (auto) is now allowed.
    assert_eq!(
        store
            .execute_admin_sql("UPDATE tek_policies SET sn_id = 5")
            .await
            .unwrap_err()
            .constraint_kind(),
        Some(ConstraintKind::Check)
    );
    store
        .execute_admin_sql("UPDATE tek_policies SET sn_id = NULL WHERE id = 8")
        .await
        .unwrap();
    assert_eq!(
        store.tek_policies(cfg.group.id).await.unwrap()[1].spec.sn,
        SnPolicy::Auto
    );
    store.close().await;
}

/// Migrations 0007: a member's PPK (RFC 8784) is sealed like its PSK, bound to its identity
/// and PPK_ID, read back with the credential; the API and the CHECK constraints refuse a
/// short PPK, a PPK_ID without PPK (or the reverse) and a required PPK that is not there;
/// `groups.require_pq_ike` round-trips (R129).
async fn member_ppk_sealed_bound_and_checked(db: &TestDb) {
    let store = db.open(key(9)).await;
    let a = Identity::fqdn("a.example");
    let b = Identity::fqdn("b.example");
    for m in [&a, &b] {
        store.add_member(m, None, &psk("psk"), T0).await.unwrap();
    }
    let secret = SecretBytes::from_slice(b"a 32-octet PPK of high entropy!!");
    assert!(
        store
            .set_member_ppk(&a, Some((b"ppk-a", &secret)), true)
            .await
            .unwrap()
    );
    let c = store.member_credential(&a).await.unwrap().unwrap();
    assert_eq!(
        c.ppk,
        Some(MemberPpk {
            id: b"ppk-a".to_vec(),
            secret: secret.clone(),
            required: true
        })
    );
    let m = store.member(&a).await.unwrap().unwrap();
    assert_eq!(
        (m.ppk_id.as_deref(), m.ppk_required),
        (Some(&b"ppk-a"[..]), true)
    );
    assert_eq!(
        store.member_credential(&b).await.unwrap().unwrap().ppk,
        None
    );
    // Encrypted at rest.
    let blobs = db
        .raw_blobs("SELECT ppk_enc FROM members WHERE ppk_enc IS NOT NULL")
        .await;
    assert_eq!(blobs.len(), 1);
    assert!(!blobs[0].windows(8).any(|w| w == &secret.as_bytes()[..8]));
    // The API refuses what makes no PPK.
    let short = SecretBytes::from_slice(b"too short");
    let e = store
        .set_member_ppk(&b, Some((b"x", &short)), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("PPK"), "{e}");
    assert!(store.set_member_ppk(&b, None, true).await.is_err());
    assert!(
        store
            .set_member_ppk(&b, Some((b"", &secret)), false)
            .await
            .is_err()
    );
    assert!(
        !store
            .set_member_ppk(
                &Identity::fqdn("nobody.example"),
                Some((b"p", &secret)),
                false
            )
            .await
            .unwrap()
    );
    // And so do the CHECK constraints of plain SQL edits.
    let required = if db.is_pg() { "TRUE" } else { "1" };
    for bad in [
        format!("UPDATE members SET ppk_required = {required} WHERE ppk_enc IS NULL"),
        "UPDATE members SET ppk_id = NULL WHERE ppk_enc IS NOT NULL".to_string(),
        blob_literals(db, "UPDATE members SET ppk_id = {01} WHERE ppk_enc IS NULL"),
        blob_literals(
            db,
            "UPDATE members SET ppk_id = {} WHERE ppk_enc IS NOT NULL",
        ),
    ] {
        let err = store.execute_admin_sql(&bad).await.unwrap_err();
        assert_eq!(
            err.constraint_kind(),
            Some(ConstraintKind::Check),
            "{bad}: {err}"
        );
    }
    // The sealed PPK is bound to its PPK_ID: renaming it in SQL does not open.
    let n = store
        .execute_admin_sql(&blob_literals(
            db,
            "UPDATE members SET ppk_id = {7070}  WHERE ppk_enc IS NOT NULL",
        ))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let e = store.member_credential(&a).await.unwrap_err();
    assert!(e.to_string().contains("members.ppk_enc"), "{e}");
    // Removed.
    assert!(store.set_member_ppk(&a, None, false).await.unwrap());
    assert_eq!(
        store.member_credential(&a).await.unwrap().unwrap().ppk,
        None
    );
    // R129: the group setting round-trips.
    let mut spec = group_spec("pq", "pq.example");
    spec.policy.require_pq_ike = true;
    let g = store.create_group(&spec, T0).await.unwrap();
    let got = store.groups().await.unwrap();
    let pq = got.iter().find(|x| x.id == g).unwrap();
    assert!(pq.spec.policy.require_pq_ike);
    store.close().await;
}

fn seq_tek(policy: TekPolicyId, spi: u32) -> TekSaRecord {
    TekSaRecord {
        sn: SnId::Seq32,
        ..tek(policy, spi, &[spi as u8; 20])
    }
}

fn claiming(group: GroupId, who: &str, sender: bool, spis: &[u32]) -> RegistrationWrite {
    RegistrationWrite {
        sequential_teks: spis.to_vec(),
        ..write(group, who, sender.then_some(1))
    }
}

/// Migrations 0008 (RFC 9838 4.4.2.1.3, R077; RFC 4303 3.4.3): a TEK with "32-bit
/// Sequential Numbers" goes to at most one sender registration. In a batch, the first
/// sender that claims it is admitted; a second sender (another member, or the same one
/// again, from this process or another) is left undecided, `SequentialTekTaken`, with no
/// membership, Sender-ID, claim or audit row committed for it. A receiver claims nothing.
/// Concurrent claims from two processes admit exactly one; a state commit keeps the claim
/// of a TEK that stays; a GSA_REKEY's mark is idempotent; the column is checked.
async fn sequential_teks_go_to_one_sender_registration_across_processes(db: &TestDb) {
    let a = Arc::new(db.open(key(31)).await);
    let b = Arc::new(db.open(key(31)).await);
    let (g, _, p) = fixture(&a, Some(8)).await;
    for (name, role) in [
        ("gm2.example", Role::Sender),
        ("rx.example", Role::Receiver),
    ] {
        let m = a
            .add_member(&Identity::fqdn(name), None, &psk("p"), T0)
            .await
            .unwrap();
        a.authorize(m, g, role, T0).await.unwrap();
    }
    let state = NewGroupState {
        rekey: Some(rekey_sa(5, &[1; 36])),
        teks: vec![seq_tek(p, 4096), tek(p, 4097, &[7; 20])],
    };
    a.commit_group_state(g, 0, &state, T0).await.unwrap();
    assert_eq!(a.sender_claimed_teks(g).await.unwrap(), Vec::<u32>::new());

    let audits = a.audit_events(1000).await.unwrap().len();
    let got = a
        .commit_registrations(
            &[
                claiming(g, "rx.example", false, &[4096]),
                claiming(g, "gm1.example", true, &[4096]),
                claiming(g, "gm2.example", true, &[4096]),
            ],
            audit_of,
        )
        .await
        .unwrap();
    assert!(
        matches!(&got[0], RegistrationOutcome::Admitted { sender_ids, .. } if sender_ids.is_empty()),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], RegistrationOutcome::Admitted { sender_ids, .. } if sender_ids == &[0]),
        "{got:?}"
    );
    assert_eq!(
        got[2],
        RegistrationOutcome::SequentialTekTaken { spis: vec![4096] },
        "a second sender in the same batch"
    );
    assert_eq!(a.sender_claimed_teks(g).await.unwrap(), vec![4096]);
    assert_eq!(a.member_count(g).await.unwrap(), 2, "gm2 is not admitted");
    assert_eq!(
        a.sender_ids(g).await.unwrap().len(),
        1,
        "nor given a Sender-ID"
    );
    assert_eq!(
        a.audit_events(1000).await.unwrap().len(),
        audits + 2,
        "no audit row for the undecided one"
    );
    // The same sender again, through another process: taken too.
    let again = b
        .commit_registrations(&[claiming(g, "gm1.example", true, &[4096])], audit_of)
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![RegistrationOutcome::SequentialTekTaken { spis: vec![4096] }]
    );
    // A TEK that is gone cannot be claimed either; a refusal comes before the claim.
    let gone = b
        .commit_registrations(
            &[
                claiming(g, "gm2.example", true, &[9999]),
                claiming(g, "nobody.example", true, &[4096]),
            ],
            audit_of,
        )
        .await
        .unwrap();
    assert_eq!(
        gone,
        vec![
            RegistrationOutcome::SequentialTekTaken { spis: vec![9999] },
            RegistrationOutcome::Refused(RegistrationRefusal::UnknownMember),
        ]
    );

    // A state commit keeps the claim of a TEK that stays; a new TEK starts unclaimed.
    let cur = a.group_state(g).await.unwrap().unwrap();
    let next = NewGroupState {
        rekey: cur.rekey.clone(),
        teks: vec![seq_tek(p, 4096), seq_tek(p, 4098)],
    };
    a.commit_group_state(g, cur.generation, &next, T0 + 1)
        .await
        .unwrap();
    assert_eq!(a.sender_claimed_teks(g).await.unwrap(), vec![4096]);

    // Two processes, one sender registration each, at once: exactly one gets each TEK.
    for (round, spi) in (4100..4108).enumerate() {
        let cur = a.group_state(g).await.unwrap().unwrap();
        let next = NewGroupState {
            rekey: cur.rekey.clone(),
            teks: vec![seq_tek(p, spi)],
        };
        a.commit_group_state(g, cur.generation, &next, T0 + 2)
            .await
            .unwrap();
        let one = |s: Arc<Store>, who: &'static str| {
            tokio::spawn(async move {
                s.commit_registrations(&[claiming(g, who, true, &[spi])], audit_of)
                    .await
                    .unwrap()
                    .remove(0)
            })
        };
        let (x, y) = tokio::join!(one(a.clone(), "gm1.example"), one(b.clone(), "gm2.example"));
        let outcomes = [x.unwrap(), y.unwrap()];
        let admitted = outcomes
            .iter()
            .filter(|o| matches!(o, RegistrationOutcome::Admitted { .. }))
            .count();
        let taken = outcomes
            .iter()
            .filter(|o| **o == RegistrationOutcome::SequentialTekTaken { spis: vec![spi] })
            .count();
        assert_eq!((admitted, taken), (1, 1), "round {round}: {outcomes:?}");
        assert_eq!(a.sender_claimed_teks(g).await.unwrap(), vec![spi]);
    }

    // The mark a GSA_REKEY makes: once, and only on the group's TEKs.
    let cur = a.group_state(g).await.unwrap().unwrap();
    let next = NewGroupState {
        rekey: cur.rekey.clone(),
        teks: vec![seq_tek(p, 4200)],
    };
    a.commit_group_state(g, cur.generation, &next, T0 + 3)
        .await
        .unwrap();
    assert_eq!(
        a.mark_teks_sender_claimed(g, &[4200, 77_777])
            .await
            .unwrap(),
        1
    );
    assert_eq!(a.mark_teks_sender_claimed(g, &[4200]).await.unwrap(), 0);
    assert_eq!(b.sender_claimed_teks(g).await.unwrap(), vec![4200]);
    let taken = b
        .commit_registrations(&[claiming(g, "gm2.example", true, &[4200])], audit_of)
        .await
        .unwrap();
    assert_eq!(
        taken,
        vec![RegistrationOutcome::SequentialTekTaken { spis: vec![4200] }]
    );

    // The column is checked (SQLite: 0 or 1; PostgreSQL: a boolean, so 2 is refused
    // before any constraint).
    let err = a
        .execute_admin_sql("UPDATE tek_sas SET sender_claimed = 2")
        .await
        .unwrap_err();
    if !db.is_pg() {
        assert_eq!(err.constraint_kind(), Some(ConstraintKind::Check), "{err}");
    }
    a.close().await;
    b.close().await;
}

/// Migrations 0008: a TEK with sequential numbers made before it may already be in a
/// sender's hands, so it counts as claimed (the next sender registration gets a new one);
/// other TEKs do not.
async fn migration_0008_counts_existing_sequential_teks_as_claimed(db: &TestDb) {
    let blob = |hex: &str| blob_literals(db, &format!("{{{hex}}}"));
    let script = format!(
        "INSERT INTO groups (name, idg_type, idg_value, capacity, rekey_mode, rekey_dst_addr, \
             rekey_dst_port, rekey_lifetime_secs, rekey_encr_id, rekey_encr_key_bits, \
             rekey_kwa_id, gcauth_id, tek_lifetime_secs, sender_id_bits, created_at) \
         VALUES ('old', 11, {idg}, 50, 'multicast', '239.0.0.9', 848, 86400, 20, 256, 3, 1, \
             3600, 8, 0); \
         INSERT INTO tek_policies (id, group_id, ip_protocol, src_addr_start, src_addr_end, \
             dst_addr_start, dst_addr_end, encr_id, encr_key_bits, sn_id, mode) \
         SELECT 7, id, 17, '0.0.0.0', '255.255.255.255', '239.0.0.10', '239.0.0.10', 20, \
             128, NULL, 'transport' FROM groups; \
         INSERT INTO tek_sas (spi, group_id, policy_id, keymat_enc, sn_id, created_at, \
             expires_at) SELECT 4096, id, 7, {keys}, 0, 0, 3600 FROM groups; \
         INSERT INTO tek_sas (spi, group_id, policy_id, keymat_enc, sn_id, created_at, \
             expires_at) SELECT 4097, id, 7, {keys}, 2, 0, 3600 FROM groups;",
        idg = blob("6f6c64"),
        keys = blob(&"ab".repeat(48)),
    );
    store_before_migration(db, "0008", 7, &script).await;
    // Opening the store applies 0008.
    let store = db.open(key(32)).await;
    let g = store.group_by_name("old").await.unwrap().unwrap();
    assert_eq!(store.sender_claimed_teks(g.id).await.unwrap(), vec![4096]);
    store.close().await;
}
