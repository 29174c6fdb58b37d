//! The store: opening, migrations, the master-key check, and the operations the GCKS
//! runs while serving (lookups, Sender-IDs, Message IDs, group state, leases, audit).
//! Administrative operations are in `admin.rs`.
//!
//! Concurrency: every write that reads before it writes runs in a transaction that first
//! locks the group's `group_state` row (PostgreSQL: `SELECT .. FOR UPDATE`; SQLite:
//! `BEGIN IMMEDIATE`, which takes the database write lock up front). Single-statement
//! counters (`next_rekey_message_id`) and the lease upsert are atomic by themselves.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use gikev2_proto::crypto::{Random, SecretBytes, SystemRandom};
use gikev2_proto::registry::SnId;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, Sqlite, Transaction};

use crate::error::StoreError;
use crate::model::*;
use crate::rows::*;
use crate::secrets::{MasterKey, RowRef};

/// The two backends, each with its own typed pool.
pub(crate) enum Backend {
    /// `writer` is one more connection, kept for registration batches (the hot write
    /// path, [`Store::commit_registrations`]): SQLite has one writer at a time anyway, and
    /// a connection that no other connection writes behind keeps its page cache, where
    /// one taken from the pool in turn finds the database changed and reads its pages
    /// again (docs/performance.md).
    Sqlite {
        pool: SqlitePool,
        writer: SqlitePool,
    },
    Postgres(PgPool),
}

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Pool size.
    pub max_connections: u32,
    /// How long an SQLite writer waits for the database lock (and a PostgreSQL caller for
    /// a pooled connection) before failing.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 5,
            busy_timeout: Duration::from_secs(10),
        }
    }
}

/// Transactions per backend: writers take the lock they need up front.
pub(crate) trait Begin {
    type Db: sqlx::Database;
    /// A transaction that will write: SQLite takes the write lock at BEGIN.
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
    /// A read-only transaction that sees one snapshot.
    async fn begin_read(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
}

impl Begin for SqlitePool {
    type Db = Sqlite;
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
    async fn begin_read(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin().await
    }
}

impl Begin for PgPool {
    type Db = Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
    async fn begin_read(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
    }
}

/// Locks a group's state row inside a write transaction (a no-op text on SQLite, whose
/// `BEGIN IMMEDIATE` already serializes writers).
pub(crate) fn lock_state(pg: bool) -> &'static str {
    if pg { " FOR UPDATE OF gs" } else { "" }
}

/// Inserts audit rows ([`audit_binds`]) inside the transaction `$tx`, a few statements
/// for any number of rows.
macro_rules! insert_audit {
    ($tx:ident, $rows:expr) => {
        for chunk in $rows.chunks(BATCH_BINDS / 7) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO audit_log (at, peer_id_type, peer_id_value, group_idg_type, \
                 group_idg_value, outcome, reason) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.0)
                    .push_bind(r.1)
                    .push_bind(r.2.clone())
                    .push_bind(r.3)
                    .push_bind(r.4.clone())
                    .push_bind(r.5)
                    .push_bind(r.6.clone());
            });
            q.build().execute(&mut *$tx).await?;
        }
    };
}

/// Marks the TEKs `$spis` (i64) of group `$group` (i64) as given to a sender
/// (`tek_sas.sender_claimed`, migrations 0008) within transaction `$tx`; evaluates to
/// how many were not marked before.
macro_rules! mark_sender_claimed {
    ($tx:ident, $group:expr, $spis:expr) => {{
        let mut marked: u64 = 0;
        for chunk in $spis.chunks(BATCH_BINDS - 2) {
            let mut q = sqlx::QueryBuilder::new("UPDATE tek_sas SET sender_claimed = ");
            q.push_bind(true)
                .push(" WHERE NOT sender_claimed AND group_id = ")
                .push_bind($group)
                .push(" AND spi IN (");
            let mut list = q.separated(", ");
            for s in chunk {
                list.push_bind(*s);
            }
            q.push(")");
            marked += q.build().execute(&mut *$tx).await?.rows_affected();
        }
        marked
    }};
}

const MASTER_KEY_CHECK: &[u8] = b"gikev2-policy master key check v1";
const MASTER_KEY_CHECK_NAME: &str = "master_key_check";

/// Largest rekey Message ID counter value: one past `u32::MAX` means exhausted.
const MESSAGE_ID_END: i64 = 1 << 32;

/// The policy store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    pub(crate) backend: Backend,
    key: MasterKey,
    rng: Mutex<Box<dyn Random + Send>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.kind())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The URL `gcks serve` uses when no database is given: `./gcks.db`, created if
    /// missing.
    pub const DEFAULT_URL: &'static str = "sqlite://gcks.db?mode=rwc";

    /// Opens `url` (`sqlite://PATH?mode=rwc`, `sqlite::memory:` is refused because each
    /// pooled connection would see its own database; `postgres://..`), runs the embedded
    /// migrations and checks that `key` is the database's master key (a new database
    /// adopts it).
    pub async fn open(url: &str, key: MasterKey) -> Result<Self, StoreError> {
        Self::open_with(url, key, &StoreOptions::default()).await
    }

    pub async fn open_with(
        url: &str,
        key: MasterKey,
        opts: &StoreOptions,
    ) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        let backend = match scheme {
            "sqlite" => {
                if url.contains(":memory:") || url.contains("mode=memory") {
                    return Err(StoreError::invalid(
                        "database URL",
                        "in-memory SQLite is not supported (use a file)",
                    ));
                }
                let co = SqliteConnectOptions::from_str(url)?
                    .foreign_keys(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(opts.busy_timeout);
                let pool = SqlitePoolOptions::new()
                    .max_connections(opts.max_connections)
                    .acquire_timeout(opts.busy_timeout)
                    .connect_with(co.clone())
                    .await?;
                sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
                let writer = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(opts.busy_timeout)
                    .connect_with(co)
                    .await?;
                Backend::Sqlite { pool, writer }
            }
            "postgres" | "postgresql" => {
                let co = PgConnectOptions::from_str(url)?;
                let pool = match PgPoolOptions::new()
                    .max_connections(opts.max_connections)
                    .acquire_timeout(opts.busy_timeout)
                    .connect_with(co.clone())
                    .await
                {
                    Ok(p) => p,
                    // The pool retries until its timeout and then says only "pool timed
                    // out": one direct connection names the cause (connection refused, an
                    // unknown host, a refused login).
                    Err(sqlx::Error::PoolTimedOut) => {
                        use sqlx::Connection as _;
                        let direct = tokio::time::timeout(
                            opts.busy_timeout,
                            sqlx::PgConnection::connect_with(&co),
                        )
                        .await;
                        return Err(match direct {
                            Ok(Err(e)) => e.into(),
                            _ => sqlx::Error::PoolTimedOut.into(),
                        });
                    }
                    Err(e) => return Err(e.into()),
                };
                sqlx::migrate!("../migrations/postgres").run(&pool).await?;
                Backend::Postgres(pool)
            }
            other => {
                return Err(StoreError::UnsupportedUrl {
                    scheme: other.chars().take(32).collect(),
                });
            }
        };
        let store = Self {
            backend,
            key,
            rng: Mutex::new(Box::new(SystemRandom::new())),
        };
        store.check_master_key().await?;
        Ok(store)
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        if let Backend::Sqlite { writer, .. } = &self.backend {
            writer.close().await;
        }
        on_backend!(self, |pool| { pool.close().await })
    }

    /// A new database records a value sealed with the key; later opens must unseal it.
    /// Two processes creating the record at once: one insert wins, both then verify.
    async fn check_master_key(&self) -> Result<(), StoreError> {
        let row = RowRef::new("store_meta.value", &[MASTER_KEY_CHECK_NAME.as_bytes()]);
        let sealed = self.seal(&row, MASTER_KEY_CHECK)?;
        let stored: Vec<u8> = on_backend!(self, |pool| {
            sqlx::query(
                "INSERT INTO store_meta (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(MASTER_KEY_CHECK_NAME)
            .bind(&sealed)
            .execute(pool)
            .await?;
            sqlx::query_scalar("SELECT value FROM store_meta WHERE name = $1")
                .bind(MASTER_KEY_CHECK_NAME)
                .fetch_one(pool)
                .await?
        });
        match self.key.open(&row, &stored) {
            Ok(v) if v.as_bytes() == MASTER_KEY_CHECK => Ok(()),
            _ => Err(StoreError::WrongMasterKey),
        }
    }

    pub(crate) fn seal(&self, row: &RowRef, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.key.seal(&mut **rng, row, plaintext)?)
    }

    pub(crate) fn open_sealed(
        &self,
        row: &RowRef,
        sealed: &[u8],
    ) -> Result<SecretBytes, StoreError> {
        Ok(self.key.open(row, sealed)?)
    }

    // ----- lookups at registration -----

    /// The member with this IKE identity and its credential (the PSK decrypted, the
    /// trust anchors of an X.509 member loaded), or `None` for an unknown identity.
    pub async fn member_credential(
        &self,
        identity: &Identity,
    ) -> Result<Option<MemberCredential>, StoreError> {
        let id_type = i64::from(identity.id_type.value());
        let found = on_backend!(self, |pool| {
            let mut tx = pool.begin_read().await?;
            let row: Option<MemberRow> = sqlx::query_as(&format!(
                "SELECT {MEMBER_COLUMNS} FROM members WHERE id_type = $1 AND id_value = $2"
            ))
            .bind(id_type)
            .bind(&identity.value)
            .fetch_optional(&mut *tx)
            .await?;
            let anchors: Vec<TrustAnchorRow> = match &row {
                Some(r) => {
                    sqlx::query_as(
                        "SELECT t.id, t.name, t.cert_der FROM member_trust_anchors m \
                         JOIN trust_anchors t ON t.id = m.trust_anchor_id \
                         WHERE m.member_id = $1 ORDER BY t.id",
                    )
                    .bind(r.id)
                    .fetch_all(&mut *tx)
                    .await?
                }
                None => Vec::new(),
            };
            tx.commit().await?;
            row.map(|r| (r, anchors))
        });
        let Some((row, anchors)) = found else {
            return Ok(None);
        };
        let member = row.member()?;
        let credential = match member.credential {
            CredentialKind::Psk => {
                let sealed = row
                    .psk_enc
                    .as_deref()
                    .ok_or_else(|| StoreError::data("members.psk_enc", "missing"))?;
                Credential::Psk(self.open_sealed(&psk_row(&member.identity), sealed)?)
            }
            CredentialKind::RawPublicKey => Credential::RawPublicKey {
                spki: row
                    .public_spki
                    .clone()
                    .ok_or_else(|| StoreError::data("members.public_spki", "missing"))?,
            },
            CredentialKind::X509 => {
                if anchors.is_empty() {
                    return Err(StoreError::data(
                        "member_trust_anchors",
                        format!("X.509 member {} has no trust anchor", member.identity),
                    ));
                }
                Credential::X509 {
                    trust_anchors: anchors.into_iter().map(TrustAnchor::from).collect(),
                }
            }
        };
        let ppk = match (&row.ppk_id, &row.ppk_enc) {
            (Some(id), Some(sealed)) => Some(MemberPpk {
                id: id.clone(),
                secret: self.open_sealed(&ppk_row(&member.identity, id), sealed)?,
                required: row.ppk_required,
            }),
            (None, None) => None,
            _ => return Err(StoreError::data("members.ppk_enc", "without ppk_id")),
        };
        Ok(Some(MemberCredential {
            member,
            credential,
            ppk,
        }))
    }

    /// The identities authorized for `group`, in any role.
    pub async fn authorized_identities(&self, group: GroupId) -> Result<Vec<Identity>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = on_backend!(self, |pool| {
            sqlx::query_as(
                "SELECT m.id_type, m.id_value FROM authorizations a \
                 JOIN members m ON m.id = a.member_id WHERE a.group_id = $1 ORDER BY m.id",
            )
            .bind(group.0)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(t, v)| identity(t, v, "members.id_type"))
            .collect()
    }

    /// The role `identity` holds in `group`, or `None` when it is not authorized.
    pub async fn authorization(
        &self,
        identity: &Identity,
        group: GroupId,
    ) -> Result<Option<Role>, StoreError> {
        let id_type = i64::from(identity.id_type.value());
        let role: Option<String> = on_backend!(self, |pool| {
            sqlx::query_scalar(
                "SELECT a.role FROM authorizations a JOIN members m ON m.id = a.member_id \
                 WHERE m.id_type = $1 AND m.id_value = $2 AND a.group_id = $3",
            )
            .bind(id_type)
            .bind(&identity.value)
            .bind(group.0)
            .fetch_optional(pool)
            .await?
        });
        role.map(|r| {
            Role::from_db(&r)
                .ok_or_else(|| StoreError::data("authorizations.role", format!("{r:?}")))
        })
        .transpose()
    }

    /// The group with this IDg and its TEK policies, read in one snapshot.
    pub async fn group_config(&self, idg: &Identity) -> Result<Option<GroupConfig>, StoreError> {
        let id_type = i64::from(idg.id_type.value());
        let found = on_backend!(self, |pool| {
            let mut tx = pool.begin_read().await?;
            let g: Option<GroupRow> = sqlx::query_as(&format!(
                "SELECT {GROUP_COLUMNS} FROM groups WHERE idg_type = $1 AND idg_value = $2"
            ))
            .bind(id_type)
            .bind(&idg.value)
            .fetch_optional(&mut *tx)
            .await?;
            let teks: Vec<TekPolicyRow> = match &g {
                Some(_) => {
                    sqlx::query_as(&format!(
                        "SELECT {TEK_POLICY_COLUMNS} FROM tek_policies WHERE group_id = \
                         (SELECT id FROM groups WHERE idg_type = $1 AND idg_value = $2) \
                         ORDER BY id"
                    ))
                    .bind(id_type)
                    .bind(&idg.value)
                    .fetch_all(&mut *tx)
                    .await?
                }
                None => Vec::new(),
            };
            tx.commit().await?;
            g.map(|g| (g, teks))
        });
        let Some((g, teks)) = found else {
            return Ok(None);
        };
        Ok(Some(GroupConfig {
            group: Group::try_from(g)?,
            teks: teks
                .into_iter()
                .map(TekPolicy::try_from)
                .collect::<Result<_, _>>()?,
        }))
    }

    // ----- group state -----

    /// The group's current key state (keys decrypted), read in one snapshot.
    pub async fn group_state(&self, group: GroupId) -> Result<Option<GroupState>, StoreError> {
        let found = on_backend!(self, |pool| {
            let mut tx = pool.begin_read().await?;
            let s: Option<GroupStateRow> = sqlx::query_as(&format!(
                "SELECT {GROUP_STATE_COLUMNS} FROM group_state WHERE group_id = $1"
            ))
            .bind(group.0)
            .fetch_optional(&mut *tx)
            .await?;
            let teks: Vec<TekSaRow> = sqlx::query_as(
                "SELECT spi, policy_id, keymat_enc, sn_id, created_at, expires_at FROM tek_sas \
                 WHERE group_id = $1 ORDER BY policy_id, created_at, spi",
            )
            .bind(group.0)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            s.map(|s| (s, teks))
        });
        let Some((s, teks)) = found else {
            return Ok(None);
        };
        let rekey = match (s.rekey_spi, s.rekey_keymat_enc, s.rekey_expires_at) {
            (Some(spi), Some(enc), Some(exp)) => {
                let spi: [u8; REKEY_SPI_LEN] = spi
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::data("group_state.rekey_spi", "not 16 octets"))?;
                Some(RekeySaRecord {
                    keymat: self.open_sealed(&rekey_row(group, &spi), &enc)?,
                    spi,
                    expires: int(exp, "group_state.rekey_expires_at")?,
                })
            }
            (None, None, None) => None,
            _ => {
                return Err(StoreError::data(
                    "group_state.rekey_spi",
                    "Rekey SA columns only partly set",
                ));
            }
        };
        let teks = teks
            .into_iter()
            .map(|t| {
                let spi: u32 = int(t.spi, "tek_sas.spi")?;
                Ok(TekSaRecord {
                    policy: TekPolicyId(t.policy_id),
                    spi,
                    keymat: self.open_sealed(&tek_row(group, spi), &t.keymat_enc)?,
                    sn: SnId::from_value(int(t.sn_id, "tek_sas.sn_id")?),
                    created: int(t.created_at, "tek_sas.created_at")?,
                    expires: int(t.expires_at, "tek_sas.expires_at")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(GroupState {
            group: GroupId(s.group_id),
            generation: int(s.generation, "group_state.generation")?,
            rekey,
            teks,
            next_rekey_message_id: int(
                s.next_rekey_message_id,
                "group_state.next_rekey_message_id",
            )?,
            next_sender_id: int(s.next_sender_id, "group_state.next_sender_id")?,
            sender_id_epoch: int(s.sender_id_epoch, "group_state.sender_id_epoch")?,
            sender_id_refusals: int(s.sender_id_refusals, "group_state.sender_id_refusals")?,
            members_removed: int(s.members_removed, "group_state.members_removed")?,
            updated: int(s.updated_at, "group_state.updated_at")?,
        }))
    }

    /// Replaces the group's Rekey SA and TEKs if its generation is still
    /// `expected_generation` (optimistic concurrency), and returns the new generation.
    /// Another writer having committed first yields [`StoreError::GenerationConflict`]:
    /// re-read the state and decide again. The GSA_REKEY Message ID counter restarts at 0
    /// when the Rekey SA SPI changes (RFC 9838 2.4.1.3) and is kept otherwise. SPIs are
    /// unique store-wide (a collision is a constraint error).
    pub async fn commit_group_state(
        &self,
        group: GroupId,
        expected_generation: u64,
        state: &NewGroupState,
        now: Seconds,
    ) -> Result<u64, StoreError> {
        let expected = to_db(expected_generation, "generation")?;
        let now_db = to_db(now, "time")?;
        let (rekey_spi, rekey_enc, rekey_exp) = match &state.rekey {
            Some(r) => {
                if r.keymat.is_empty() {
                    return Err(StoreError::invalid("Rekey SA", "empty keying material"));
                }
                (
                    Some(r.spi.to_vec()),
                    Some(self.seal(&rekey_row(group, &r.spi), r.keymat.as_bytes())?),
                    Some(to_db(r.expires, "expiry")?),
                )
            }
            None => (None, None, None),
        };
        let mut teks = Vec::with_capacity(state.teks.len());
        for t in &state.teks {
            if t.spi < 256 {
                return Err(StoreError::invalid(
                    "TEK SPI",
                    format!("{} is reserved (RFC 4303 2.1)", t.spi),
                ));
            }
            if t.keymat.is_empty() {
                return Err(StoreError::invalid("TEK", "empty keying material"));
            }
            teks.push((
                i64::from(t.spi),
                t.policy.0,
                self.seal(&tek_row(group, t.spi), t.keymat.as_bytes())?,
                i64::from(t.sn.value()),
                to_db(t.created, "time")?,
                to_db(t.expires, "expiry")?,
            ));
        }
        let result: Result<i64, StoreError> = on_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let new_gen: Option<i64> = sqlx::query_scalar(
                "UPDATE group_state SET generation = generation + 1, rekey_spi = $3, \
                 rekey_keymat_enc = $4, rekey_expires_at = $5, \
                 next_rekey_message_id = CASE WHEN rekey_spi = $3 \
                     THEN next_rekey_message_id ELSE 0 END, \
                 updated_at = $6 \
                 WHERE group_id = $1 AND generation = $2 RETURNING generation",
            )
            .bind(group.0)
            .bind(expected)
            .bind(&rekey_spi)
            .bind(&rekey_enc)
            .bind(rekey_exp)
            .bind(now_db)
            .fetch_optional(&mut *tx)
            .await?;
            match new_gen {
                None => {
                    let found: Option<i64> = sqlx::query_scalar(
                        "SELECT generation FROM group_state WHERE group_id = $1",
                    )
                    .bind(group.0)
                    .fetch_optional(&mut *tx)
                    .await?;
                    tx.rollback().await?;
                    Err(match found {
                        Some(f) => StoreError::GenerationConflict {
                            expected: expected_generation,
                            found: int(f, "group_state.generation")?,
                        },
                        None => StoreError::NotFound(format!("group {group}")),
                    })
                }
                Some(new_gen) => {
                    // A TEK that stays keeps its claim by a sender (migrations 0008); claims
                    // are made with the state row locked, which this transaction holds
                    // now, so none is lost between this read and the rewrite.
                    let claimed: Vec<i64> = sqlx::query_scalar(
                        "SELECT spi FROM tek_sas WHERE group_id = $1 AND sender_claimed",
                    )
                    .bind(group.0)
                    .fetch_all(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM tek_sas WHERE group_id = $1")
                        .bind(group.0)
                        .execute(&mut *tx)
                        .await?;
                    for (spi, policy, enc, sn, created, expires) in &teks {
                        sqlx::query(
                            "INSERT INTO tek_sas (spi, group_id, policy_id, keymat_enc, \
                             sn_id, created_at, expires_at, sender_claimed) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        )
                        .bind(*spi)
                        .bind(group.0)
                        .bind(*policy)
                        .bind(enc)
                        .bind(*sn)
                        .bind(*created)
                        .bind(*expires)
                        .bind(claimed.contains(spi))
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(new_gen)
                }
            }
        });
        int(result?, "group_state.generation")
    }

    /// Marks the group's TEKs `spis` as given to a sender (`tek_sas.sender_claimed`,
    /// migrations 0008): a GSA_REKEY that carries a TEK with "32-bit Sequential Numbers"
    /// reaches the group's senders too, so no later sender registration may get it (RFC
    /// 9838 4.4.2.1.3, R077; [`RegistrationWrite::sequential_teks`]). Commit this before
    /// the message is sent. SPIs the group does not have are skipped; returns how many
    /// TEKs were newly marked.
    pub async fn mark_teks_sender_claimed(
        &self,
        group: GroupId,
        spis: &[u32],
    ) -> Result<u64, StoreError> {
        if spis.is_empty() {
            return Ok(0);
        }
        let spis: Vec<i64> = spis.iter().map(|&s| i64::from(s)).collect();
        on_backend!(self, |pool, pg| {
            // With the group's state row locked, as claims in a registration batch are
            // made: a state commit running at the same time keeps the mark.
            let mut tx = pool.begin_write().await?;
            let locked: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT gs.group_id FROM group_state gs WHERE gs.group_id = $1{}",
                lock_state(pg)
            ))
            .bind(group.0)
            .fetch_optional(&mut *tx)
            .await?;
            if locked.is_none() {
                return Err(StoreError::NotFound(format!("group {group}")));
            }
            let marked = mark_sender_claimed!(tx, group.0, spis);
            tx.commit().await?;
            Ok(marked)
        })
    }

    /// The group's TEKs a sender was given (`tek_sas.sender_claimed`, migrations 0008),
    /// by SPI.
    pub async fn sender_claimed_teks(&self, group: GroupId) -> Result<Vec<u32>, StoreError> {
        let spis: Vec<i64> = on_backend!(self, |pool| {
            sqlx::query_scalar(
                "SELECT spi FROM tek_sas WHERE group_id = $1 AND sender_claimed ORDER BY spi",
            )
            .bind(group.0)
            .fetch_all(pool)
            .await?
        });
        spis.into_iter().map(|s| int(s, "tek_sas.spi")).collect()
    }

    /// Takes the next GSA_REKEY Message ID of the group's Rekey SA `rekey_spi` and commits
    /// the increment before returning: the value is never handed out twice, by this
    /// process or another sharing the database. Fails with [`StoreError::StaleRekeySa`]
    /// when `rekey_spi` is no longer current, [`StoreError::MessageIdsExhausted`] after
    /// 2^32 messages (the Rekey SA must be replaced).
    pub async fn next_rekey_message_id(
        &self,
        group: GroupId,
        rekey_spi: &[u8; REKEY_SPI_LEN],
    ) -> Result<u32, StoreError> {
        let taken: Option<i64> = on_backend!(self, |pool| {
            sqlx::query_scalar(
                "UPDATE group_state SET next_rekey_message_id = next_rekey_message_id + 1 \
                 WHERE group_id = $1 AND rekey_spi = $2 AND next_rekey_message_id < $3 \
                 RETURNING next_rekey_message_id - 1",
            )
            .bind(group.0)
            .bind(&rekey_spi[..])
            .bind(MESSAGE_ID_END)
            .fetch_optional(pool)
            .await?
        });
        if let Some(id) = taken {
            return int(id, "group_state.next_rekey_message_id");
        }
        let why: Option<(Option<Vec<u8>>, i64)> = on_backend!(self, |pool| {
            sqlx::query_as(
                "SELECT rekey_spi, next_rekey_message_id FROM group_state WHERE group_id = $1",
            )
            .bind(group.0)
            .fetch_optional(pool)
            .await?
        });
        Err(match why {
            None => StoreError::NotFound(format!("group {group}")),
            Some((None, _)) => StoreError::NoRekeySa,
            Some((Some(spi), _)) if spi != rekey_spi[..] => StoreError::StaleRekeySa,
            Some(_) => StoreError::MessageIdsExhausted,
        })
    }

    // ----- Sender-IDs (RFC 9838 2.5.1) -----

    /// Allocates up to `count` Sender-IDs for `member` in `group`, sequentially from the
    /// group's counter, and commits them before returning. Fewer come back when the
    /// group's per-member bound (`max_sender_ids_per_member`) or the Sender-ID space
    /// (`2^sender_id_bits` values) runs out; none once it is exhausted, when RFC 9838
    /// 2.5.1 step 5 applies (exclude every member, then [`Self::reset_sender_ids`]).
    /// A value is never handed out twice within an epoch, across processes.
    pub async fn allocate_sender_ids(
        &self,
        group: GroupId,
        member: MemberId,
        count: u32,
        now: Seconds,
    ) -> Result<Vec<u32>, StoreError> {
        let now_db = to_db(now, "time")?;
        on_backend!(self, |pool, pg| {
            let mut tx = pool.begin_write().await?;
            let row: Option<(i64, i64, Option<i64>, i64)> = sqlx::query_as(&format!(
                "SELECT gs.next_sender_id, gs.sender_id_epoch, g.sender_id_bits, \
                 g.max_sender_ids_per_member FROM group_state gs \
                 JOIN groups g ON g.id = gs.group_id WHERE gs.group_id = $1{}",
                lock_state(pg)
            ))
            .bind(group.0)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((next, epoch, bits, per_member)) = row else {
                return Err(StoreError::NotFound(format!("group {group}")));
            };
            let Some(bits) = bits else {
                return Err(StoreError::NoSenderIdBits(group.0));
            };
            let bits: u32 = int(bits, "groups.sender_id_bits")?;
            let space: i64 = 1i64 << bits.min(32);
            let granted = i64::from(count).min(per_member).min((space - next).max(0));
            let mut out = Vec::new();
            for id in next..next + granted {
                sqlx::query(
                    "INSERT INTO sender_ids (group_id, sender_id, member_id, epoch, \
                     allocated_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(group.0)
                .bind(id)
                .bind(member.0)
                .bind(epoch)
                .bind(now_db)
                .execute(&mut *tx)
                .await?;
                out.push(int(id, "sender_ids.sender_id")?);
            }
            if granted > 0 {
                sqlx::query("UPDATE group_state SET next_sender_id = $2 WHERE group_id = $1")
                    .bind(group.0)
                    .bind(next + granted)
                    .execute(&mut *tx)
                    .await?;
            } else if count > 0 && next >= space {
                // Demand the space could not meet: the rekey sender's cue to start a new
                // epoch (RFC 9838 2.5.1 step 5; migrations 0004).
                sqlx::query(
                    "UPDATE group_state SET sender_id_refusals = sender_id_refusals + 1 \
                     WHERE group_id = $1",
                )
                .bind(group.0)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    /// Starts a new Sender-ID epoch: forgets every allocation and restarts the counter at
    /// zero. Only after every member was excluded and new Data-Security SAs replaced the
    /// old ones (RFC 9838 2.5.1 step 5). Returns the new epoch.
    pub async fn reset_sender_ids(&self, group: GroupId) -> Result<u64, StoreError> {
        let epoch: Option<i64> = on_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM sender_ids WHERE group_id = $1")
                .bind(group.0)
                .execute(&mut *tx)
                .await?;
            let e: Option<i64> = sqlx::query_scalar(
                "UPDATE group_state SET next_sender_id = 0, sender_id_refusals = 0, \
                 sender_id_epoch = sender_id_epoch + 1 WHERE group_id = $1 \
                 RETURNING sender_id_epoch",
            )
            .bind(group.0)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            e
        });
        match epoch {
            Some(e) => int(e, "group_state.sender_id_epoch"),
            None => Err(StoreError::NotFound(format!("group {group}"))),
        }
    }

    /// Takes `seen` off the group's count of ended memberships
    /// ([`GroupState::members_removed`]) once the rekey sender excluded every member for
    /// them (forward access control, RFC 9838 3.2.1); departures counted meanwhile stay
    /// for the next exclusion.
    pub async fn acknowledge_members_removed(
        &self,
        group: GroupId,
        seen: u64,
    ) -> Result<(), StoreError> {
        let seen = i64::try_from(seen).map_err(|_| StoreError::invalid("seen", "too large"))?;
        on_backend!(self, |pool| {
            sqlx::query(
                "UPDATE group_state SET members_removed = CASE WHEN members_removed >= $2 \
                 THEN members_removed - $2 ELSE 0 END WHERE group_id = $1",
            )
            .bind(group.0)
            .bind(seen)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The group's policy as the rekey sender last announced it to the members
    /// (`group_state.announced_policy`, migrations 0009): the sender's own text, `None`
    /// before its first look at the group or for a group without state.
    pub async fn announced_policy(&self, group: GroupId) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = on_backend!(self, |pool| {
            sqlx::query_as("SELECT announced_policy FROM group_state WHERE group_id = $1")
                .bind(group.0)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.and_then(|(t,)| t))
    }

    /// Records the policy the members now hold (see [`Store::announced_policy`]).
    pub async fn set_announced_policy(&self, group: GroupId, text: &str) -> Result<(), StoreError> {
        on_backend!(self, |pool| {
            sqlx::query("UPDATE group_state SET announced_policy = $2 WHERE group_id = $1")
                .bind(group.0)
                .bind(text)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The group's current Sender-ID allocations, by value.
    pub async fn sender_ids(&self, group: GroupId) -> Result<Vec<SenderIdAllocation>, StoreError> {
        let rows: Vec<SenderIdRow> = on_backend!(self, |pool| {
            sqlx::query_as(
                "SELECT group_id, sender_id, member_id, epoch, allocated_at FROM sender_ids \
                 WHERE group_id = $1 ORDER BY sender_id",
            )
            .bind(group.0)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(SenderIdAllocation::try_from).collect()
    }

    // ----- membership and capacity -----

    /// Counts `member` against `group`'s capacity, atomically with the capacity check.
    pub async fn admit_member(
        &self,
        group: GroupId,
        member: MemberId,
        now: Seconds,
    ) -> Result<Admission, StoreError> {
        let now_db = to_db(now, "time")?;
        on_backend!(self, |pool, pg| {
            let mut tx = pool.begin_write().await?;
            // The count is kept in the locked row (migrations 0003), read in its newest
            // version.
            let row: Option<(i64, i64)> = sqlx::query_as(&format!(
                "SELECT g.capacity, gs.member_count FROM group_state gs \
                 JOIN groups g ON g.id = gs.group_id WHERE gs.group_id = $1{}",
                lock_state(pg)
            ))
            .bind(group.0)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((cap, n)) = row else {
                return Err(StoreError::NotFound(format!("group {group}")));
            };
            let already: Option<i64> = sqlx::query_scalar(
                "SELECT member_id FROM memberships WHERE group_id = $1 AND member_id = $2",
            )
            .bind(group.0)
            .bind(member.0)
            .fetch_optional(&mut *tx)
            .await?;
            if already.is_some() {
                tx.commit().await?;
                return Ok(Admission::AlreadyMember);
            }
            if n >= cap {
                tx.commit().await?;
                return Ok(Admission::GroupFull {
                    capacity: int(cap, "groups.capacity")?,
                });
            }
            sqlx::query(
                "INSERT INTO memberships (group_id, member_id, joined_at) VALUES ($1, $2, $3)",
            )
            .bind(group.0)
            .bind(member.0)
            .bind(now_db)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Admission::Admitted)
        })
    }

    /// Removes `member` from `group` (leave or exclusion); false if it was not a member.
    /// Its Sender-IDs stay taken until the epoch ends.
    pub async fn remove_member_from_group(
        &self,
        group: GroupId,
        member: MemberId,
    ) -> Result<bool, StoreError> {
        let n = on_backend!(self, |pool| {
            sqlx::query("DELETE FROM memberships WHERE group_id = $1 AND member_id = $2")
                .bind(group.0)
                .bind(member.0)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Members currently counted against `group`'s capacity.
    pub async fn member_count(&self, group: GroupId) -> Result<u64, StoreError> {
        let n: i64 = on_backend!(self, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE group_id = $1")
                .bind(group.0)
                .fetch_one(pool)
                .await?
        });
        int(n, "memberships")
    }

    /// Authorizations with the `sender` role in `group` (whether a group has several
    /// senders decides its GWP policy, RFC 9838 4.4.3).
    pub async fn sender_count(&self, group: GroupId) -> Result<u64, StoreError> {
        let n: i64 = on_backend!(self, |pool| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM authorizations WHERE group_id = $1 AND role = 'sender'",
            )
            .bind(group.0)
            .fetch_one(pool)
            .await?
        });
        int(n, "authorizations")
    }

    // ----- registrations, decided and committed in batches -----

    /// Decides and commits a batch of registrations in one write transaction (group
    /// commit): for each [`RegistrationWrite`], in order, the member must exist and be
    /// authorized for the group (with the `sender` role to send), then
    /// [`RegistrationWrite::refused_before`] applies, then the group's capacity (a member
    /// already counted is not refused), then the Sender-IDs (as
    /// [`Self::allocate_sender_ids`] allocates them), then a sender's claims on TEKs with
    /// sequential numbers ([`RegistrationWrite::sequential_teks`]; one already claimed
    /// leaves the write undecided, [`RegistrationOutcome::SequentialTekTaken`], with
    /// nothing committed for it). The memberships, Sender-IDs, claims and one
    /// audit event per write (`audit` makes it from the write's index and outcome) are committed together
    /// before this returns, so the caller may reveal what it got. Each group's
    /// `group_state` row is locked for the batch, as every other state write does.
    ///
    /// The work per batch is a fixed number of statements per group touched, not per
    /// registration: at N registrations in flight the store's cost per registration
    /// shrinks with the batch (docs/performance.md, "gcks: registration load").
    pub async fn commit_registrations<F>(
        &self,
        batch: &[RegistrationWrite],
        mut audit: F,
    ) -> Result<Vec<RegistrationOutcome>, StoreError>
    where
        F: FnMut(usize, &RegistrationWrite, &RegistrationOutcome) -> AuditEvent,
    {
        use std::collections::{BTreeMap, HashMap, HashSet};
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for w in batch {
            to_db(w.now, "time")?;
        }
        let mut identities: Vec<&Identity> = Vec::new();
        {
            let mut seen = HashSet::new();
            for w in batch {
                if seen.insert(&w.member) {
                    identities.push(&w.member);
                }
            }
        }
        let mut groups: Vec<GroupId> = batch.iter().map(|w| w.group).collect();
        groups.sort_by_key(|g| g.0);
        groups.dedup();
        on_backend!(
            self,
            writer | pool,
            pg | {
                let mut tx = pool.begin_write().await?;
                // 1. Lock the groups' state rows (as every state write does), with what the
                // batch needs of each: capacity, the members counted (kept in the row by
                // triggers, migrations 0003) and the Sender-ID counter. A locked row is read in
                // its newest version, also on PostgreSQL after waiting for the lock, so the
                // count is current; counting memberships here instead would read them as of
                // the statement's start there, and costs a scan as long as the group.
                let mut sql = String::from(
                    "SELECT gs.group_id, g.capacity, gs.member_count, gs.next_sender_id, \
                 gs.sender_id_epoch, g.sender_id_bits, g.max_sender_ids_per_member \
                 FROM group_state gs JOIN groups g ON g.id = gs.group_id \
                 WHERE gs.group_id IN (",
                );
                for (i, g) in groups.iter().enumerate() {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&g.0.to_string());
                }
                sql.push(')');
                sql.push_str(lock_state(pg));
                let locked: Vec<GroupLockRow> = sqlx::query_as(&sql).fetch_all(&mut *tx).await?;
                let locked: HashMap<i64, GroupLockRow> =
                    locked.into_iter().map(|r| (r.0, r)).collect();
                // 2. The members, every authorization they hold, and whether they are already
                // counted in that group: one statement.
                let mut rows: Vec<MemberRoleRow> = Vec::new();
                for chunk in identities.chunks(BATCH_BINDS / 2) {
                    // The identities as a table joined to `members`: one index lookup each.
                    // (`(id_type, id_value) IN (VALUES ...)` made SQLite scan every member.)
                    let mut q =
                        sqlx::QueryBuilder::new("WITH wanted (id_type, id_value) AS (VALUES ");
                    for (i, id) in chunk.iter().enumerate() {
                        if i > 0 {
                            q.push(", ");
                        }
                        q.push("(")
                            .push_bind(i64::from(id.id_type.value()))
                            .push(", ")
                            .push_bind(id.value.clone())
                            .push(")");
                    }
                    q.push(
                        ") SELECT m.id, m.id_type, m.id_value, a.group_id, a.role, \
                     ms.member_id IS NOT NULL FROM wanted w \
                     JOIN members m ON m.id_type = w.id_type AND m.id_value = w.id_value \
                     LEFT JOIN authorizations a ON a.member_id = m.id \
                     LEFT JOIN memberships ms ON ms.member_id = m.id AND ms.group_id = a.group_id",
                    );
                    rows.extend(q.build_query_as().fetch_all(&mut *tx).await?);
                }
                let mut members: HashMap<Identity, (MemberId, HashMap<i64, String>)> =
                    HashMap::new();
                // (group, member) pairs counted against the group's capacity.
                let mut present: HashSet<(i64, i64)> = HashSet::new();
                for (id, ty, value, group, role, counted) in rows {
                    let ty: u8 = int(ty, "members.id_type")?;
                    let e = members
                        .entry(Identity::new(ty.into(), value))
                        .or_insert_with(|| (MemberId(id), HashMap::new()));
                    if let (Some(g), Some(r)) = (group, role) {
                        e.1.insert(g, r);
                        if counted == Some(true) {
                            present.insert((g, id));
                        }
                    }
                }
                // 3. Authorization, in the registrar's order.
                let mut outcome: Vec<Option<RegistrationOutcome>> = Vec::with_capacity(batch.len());
                for w in batch {
                    let refused = match members.get(&w.member) {
                        None => Some(RegistrationRefusal::UnknownMember),
                        Some((_, roles)) => match roles.get(&w.group.0) {
                            None => Some(RegistrationRefusal::NotAuthorized),
                            Some(r) => {
                                let role = Role::from_db(r).ok_or_else(|| {
                                    StoreError::data("authorizations.role", format!("{r:?}"))
                                })?;
                                if w.wants_sender && !role.allows(Role::Sender) {
                                    Some(RegistrationRefusal::NotSender)
                                } else {
                                    w.refused_before
                                        .clone()
                                        .map(RegistrationRefusal::RefusedBefore)
                                }
                            }
                        },
                    };
                    outcome.push(refused.map(RegistrationOutcome::Refused));
                }
                // 4. Per group: capacity, Sender-IDs and the claims on TEKs with sequential
                // numbers.
                let mut joins: Vec<(i64, i64, i64)> = Vec::new();
                // Per group: the TEKs with sequential numbers sender registrations claimed.
                let mut claimed: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
                let mut allocations: Vec<(i64, i64, i64, i64, i64)> = Vec::new();
                // Per group: the next Sender-ID and the refusals for want of one.
                let mut counters: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
                for g in &groups {
                    let wanted: Vec<usize> = (0..batch.len())
                        .filter(|&i| batch[i].group == *g && outcome[i].is_none())
                        .collect();
                    if wanted.is_empty() {
                        continue;
                    }
                    let Some(&(_, cap, mut count, mut next, epoch, bits, per_member)) =
                        locked.get(&g.0)
                    else {
                        for &i in &wanted {
                            outcome[i] = Some(RegistrationOutcome::Refused(
                                RegistrationRefusal::Unavailable(format!(
                                    "group {g} has no state row"
                                )),
                            ));
                        }
                        continue;
                    };
                    let space: Option<i64> = match bits {
                        Some(b) => Some(1i64 << int::<u32>(b, "groups.sender_id_bits")?.min(32)),
                        None => None,
                    };
                    // RFC 9838 4.4.2.1.3 (R077): a TEK with sequential numbers goes to one
                    // sender registration (migrations 0008). Those of the group that no
                    // sender registration was given yet, among those the batch's senders
                    // would get; locked until the commit on PostgreSQL.
                    let mut wanted_claims: Vec<i64> = wanted
                        .iter()
                        .filter(|&&i| batch[i].wants_sender)
                        .flat_map(|&i| batch[i].sequential_teks.iter().map(|&s| i64::from(s)))
                        .collect();
                    wanted_claims.sort_unstable();
                    wanted_claims.dedup();
                    let mut unclaimed: HashSet<u32> = HashSet::new();
                    for chunk in wanted_claims.chunks(BATCH_BINDS - 1) {
                        let mut q =
                            sqlx::QueryBuilder::new("SELECT spi FROM tek_sas WHERE group_id = ");
                        q.push_bind(g.0)
                            .push(" AND NOT sender_claimed AND spi IN (");
                        let mut spis = q.separated(", ");
                        for s in chunk {
                            spis.push_bind(*s);
                        }
                        q.push(")");
                        if pg {
                            q.push(" FOR UPDATE");
                        }
                        let found: Vec<i64> = q.build_query_scalar().fetch_all(&mut *tx).await?;
                        for s in found {
                            unclaimed.insert(int(s, "tek_sas.spi")?);
                        }
                    }
                    for &i in &wanted {
                        let w = &batch[i];
                        let member = members[&w.member].0;
                        let newly = !present.contains(&(g.0, member.0));
                        if newly && count >= cap {
                            outcome[i] = Some(RegistrationOutcome::Refused(
                                RegistrationRefusal::GroupFull {
                                    capacity: int(cap, "groups.capacity")?,
                                },
                            ));
                            continue;
                        }
                        let mut granted = 0;
                        if let Some(n) = w.sender_ids {
                            let Some(space) = space else {
                                outcome[i] = Some(RegistrationOutcome::Refused(
                                    RegistrationRefusal::Unavailable(format!(
                                        "group {g} has no Sender-ID bits (groups.sender_id_bits)"
                                    )),
                                ));
                                continue;
                            };
                            granted = i64::from(n.max(1))
                                .min(per_member)
                                .min((space - next).max(0));
                            if granted == 0 {
                                outcome[i] = Some(RegistrationOutcome::Refused(
                                    RegistrationRefusal::SenderIdsExhausted,
                                ));
                                if next >= space {
                                    counters.entry(g.0).or_insert((next, 0)).1 += 1;
                                }
                                continue;
                            }
                        }
                        // Last, so that a registration refused anyway costs no TEK: one
                        // another sender registration was given (in an earlier batch or
                        // earlier in this one) leaves this one undecided.
                        let claims: &[u32] = if w.wants_sender {
                            &w.sequential_teks
                        } else {
                            &[]
                        };
                        let taken: Vec<u32> = claims
                            .iter()
                            .copied()
                            .filter(|s| !unclaimed.contains(s))
                            .collect();
                        if !taken.is_empty() {
                            outcome[i] =
                                Some(RegistrationOutcome::SequentialTekTaken { spis: taken });
                            continue;
                        }
                        for s in claims {
                            unclaimed.remove(s);
                            claimed.entry(g.0).or_default().push(i64::from(*s));
                        }
                        let mut granted_ids = Vec::new();
                        if granted > 0 {
                            for id in next..next + granted {
                                allocations.push((g.0, id, member.0, epoch, to_db(w.now, "time")?));
                                granted_ids.push(int(id, "sender_ids.sender_id")?);
                            }
                            next += granted;
                            counters.entry(g.0).or_insert((next, 0)).0 = next;
                        }
                        if newly {
                            count += 1;
                            present.insert((g.0, member.0));
                            joins.push((g.0, member.0, to_db(w.now, "time")?));
                        }
                        outcome[i] = Some(RegistrationOutcome::Admitted {
                            member,
                            newly,
                            sender_ids: granted_ids,
                        });
                    }
                }
                // 4. The writes: a few multi-row statements for the whole batch.
                for chunk in joins.chunks(BATCH_BINDS / 3) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO memberships (group_id, member_id, joined_at) ",
                    );
                    q.push_values(chunk, |mut b, (g, m, at)| {
                        b.push_bind(*g).push_bind(*m).push_bind(*at);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                for chunk in allocations.chunks(BATCH_BINDS / 5) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO sender_ids (group_id, sender_id, member_id, epoch, \
                     allocated_at) ",
                    );
                    q.push_values(chunk, |mut b, (g, id, m, e, at)| {
                        b.push_bind(*g)
                            .push_bind(*id)
                            .push_bind(*m)
                            .push_bind(*e)
                            .push_bind(*at);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                for (g, spis) in &claimed {
                    mark_sender_claimed!(tx, *g, spis);
                }
                for (g, (next, refused)) in &counters {
                    sqlx::query(
                        "UPDATE group_state SET next_sender_id = $2, \
                         sender_id_refusals = sender_id_refusals + $3 WHERE group_id = $1",
                    )
                    .bind(*g)
                    .bind(*next)
                    .bind(*refused)
                    .execute(&mut *tx)
                    .await?;
                }
                let outcome: Vec<RegistrationOutcome> = outcome
                    .into_iter()
                    .map(|o| {
                        o.unwrap_or(RegistrationOutcome::Refused(
                            RegistrationRefusal::Unavailable("not decided".into()),
                        ))
                    })
                    .collect();
                // An undecided registration is decided again: its audit event comes then.
                let events: Vec<AuditRow7> = batch
                    .iter()
                    .zip(&outcome)
                    .enumerate()
                    .filter(|(_, (_, o))| {
                        !matches!(o, RegistrationOutcome::SequentialTekTaken { .. })
                    })
                    .map(|(i, (w, o))| audit_binds(&audit(i, w, o)))
                    .collect::<Result<_, _>>()?;
                insert_audit!(tx, events);
                tx.commit().await?;
                Ok(outcome)
            }
        )
    }

    // ----- rekey-sender lease -----

    /// Takes or renews the right to send GSA_REKEY messages for `group` until
    /// `now + ttl`. True when `holder` now holds the lease (it was free, expired, or
    /// already `holder`'s); false when another holder's lease is still running. One
    /// atomic upsert: two processes never both get `true` for overlapping times (given
    /// clocks that agree).
    pub async fn acquire_rekey_lease(
        &self,
        group: GroupId,
        holder: &str,
        ttl: Seconds,
        now: Seconds,
    ) -> Result<bool, StoreError> {
        if holder.is_empty() || holder.len() > 255 {
            return Err(StoreError::invalid("lease holder", "1..=255 octets"));
        }
        let until = to_db(
            now.checked_add(ttl)
                .ok_or_else(|| StoreError::invalid("lease", "time overflow"))?,
            "lease expiry",
        )?;
        let now_db = to_db(now, "time")?;
        let n = on_backend!(self, |pool| {
            sqlx::query(
                "INSERT INTO rekey_leases (group_id, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (group_id) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE rekey_leases.holder = excluded.holder OR rekey_leases.expires_at <= $4",
            )
            .bind(group.0)
            .bind(holder)
            .bind(until)
            .bind(now_db)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Gives the lease up early; false if `holder` did not hold it.
    pub async fn release_rekey_lease(
        &self,
        group: GroupId,
        holder: &str,
    ) -> Result<bool, StoreError> {
        let n = on_backend!(self, |pool| {
            sqlx::query("DELETE FROM rekey_leases WHERE group_id = $1 AND holder = $2")
                .bind(group.0)
                .bind(holder)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// The lease row, expired or not.
    pub async fn rekey_lease(&self, group: GroupId) -> Result<Option<RekeyLease>, StoreError> {
        let row: Option<LeaseRow> = on_backend!(self, |pool| {
            sqlx::query_as(
                "SELECT group_id, holder, expires_at FROM rekey_leases WHERE group_id = $1",
            )
            .bind(group.0)
            .fetch_optional(pool)
            .await?
        });
        row.map(RekeyLease::try_from).transpose()
    }

    // ----- audit -----

    /// Appends an event to the audit log; returns its id.
    pub async fn record_audit(&self, event: &AuditEvent) -> Result<i64, StoreError> {
        if event.reason.len() > 1024 {
            return Err(StoreError::invalid(
                "audit reason",
                "longer than 1024 octets",
            ));
        }
        let at = to_db(event.at, "time")?;
        let split = |i: &Option<Identity>| match i {
            Some(i) => (Some(i64::from(i.id_type.value())), Some(i.value.clone())),
            None => (None, None),
        };
        let (pt, pv) = split(&event.peer);
        let (gt, gv) = split(&event.group);
        let id: i64 = on_backend!(self, |pool| {
            sqlx::query_scalar(
                "INSERT INTO audit_log (at, peer_id_type, peer_id_value, group_idg_type, \
                 group_idg_value, outcome, reason) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 RETURNING id",
            )
            .bind(at)
            .bind(pt)
            .bind(&pv)
            .bind(gt)
            .bind(&gv)
            .bind(event.outcome.as_db())
            .bind(&event.reason)
            .fetch_one(pool)
            .await?
        });
        Ok(id)
    }

    /// Appends several events to the audit log in one transaction (reasons longer than
    /// 1024 octets are clipped).
    pub async fn record_audits(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let events: Vec<AuditRow7> = events.iter().map(audit_binds).collect::<Result<_, _>>()?;
        on_backend!(
            self,
            writer | pool,
            _pg | {
                let mut tx = pool.begin_write().await?;
                insert_audit!(tx, events);
                tx.commit().await?;
            }
        );
        Ok(())
    }

    /// The newest `limit` audit events, newest first.
    pub async fn audit_events(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows: Vec<AuditRow> = on_backend!(self, |pool| {
            sqlx::query_as(
                "SELECT id, at, peer_id_type, peer_id_value, group_idg_type, group_idg_value, \
                 outcome, reason FROM audit_log ORDER BY id DESC LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(AuditRecord::try_from).collect()
    }
}

/// Bound parameters per multi-row statement (well under SQLite's 32766 and PostgreSQL's
/// 65535).
const BATCH_BINDS: usize = 4096;

/// A member (id, identity) and one group it is authorized for, with the role and whether
/// it is counted in that group.
type MemberRoleRow = (i64, i64, Vec<u8>, Option<i64>, Option<String>, Option<bool>);

/// A group's state row as a registration batch locks it: group, capacity, members
/// counted, next Sender-ID, Sender-ID epoch, Sender-ID bits, per-member bound.
type GroupLockRow = (i64, i64, i64, i64, i64, Option<i64>, i64);

/// The columns of one audit row, ready to bind.
type AuditRow7 = (
    i64,
    Option<i64>,
    Option<Vec<u8>>,
    Option<i64>,
    Option<Vec<u8>>,
    &'static str,
    String,
);

/// An event's audit-row columns; the reason clipped to the column's 1024 octets.
fn audit_binds(event: &AuditEvent) -> Result<AuditRow7, StoreError> {
    let split = |i: &Option<Identity>| match i {
        Some(i) => (Some(i64::from(i.id_type.value())), Some(i.value.clone())),
        None => (None, None),
    };
    let (pt, pv) = split(&event.peer);
    let (gt, gv) = split(&event.group);
    let mut reason = event.reason.clone();
    if reason.len() > 1024 {
        let mut end = 1021;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    Ok((
        to_db(event.at, "time")?,
        pt,
        pv,
        gt,
        gv,
        event.outcome.as_db(),
        reason,
    ))
}

/// Where a member's PSK is sealed: bound to its identity, so a ciphertext copied to
/// another member's row does not open.
pub(crate) fn psk_row(identity: &Identity) -> RowRef {
    RowRef::new(
        "members.psk_enc",
        &[&[identity.id_type.value()], &identity.value],
    )
}

/// Where a member's PPK is sealed: bound to its identity and its PPK_ID, so neither a
/// ciphertext copied to another row nor a changed PPK_ID opens it.
pub(crate) fn ppk_row(identity: &Identity, ppk_id: &[u8]) -> RowRef {
    RowRef::new(
        "members.ppk_enc",
        &[&[identity.id_type.value()], &identity.value, ppk_id],
    )
}

/// A signing key's private half is bound to its public half.
pub(crate) fn signing_key_row(public_spki: &[u8]) -> RowRef {
    RowRef::new("signing_keys.pkcs8_enc", &[public_spki])
}

pub(crate) fn rekey_row(group: GroupId, spi: &[u8; REKEY_SPI_LEN]) -> RowRef {
    RowRef::new(
        "group_state.rekey_keymat_enc",
        &[&group.0.to_be_bytes(), spi],
    )
}

pub(crate) fn tek_row(group: GroupId, spi: u32) -> RowRef {
    RowRef::new(
        "tek_sas.keymat_enc",
        &[&group.0.to_be_bytes(), &spi.to_be_bytes()],
    )
}
