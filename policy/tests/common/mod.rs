//! Test harness: every store test runs once on SQLite (a file in a fresh temporary
//! directory) and once on the local PostgreSQL (a fresh database per test, dropped at the
//! end, even when the test panics).
//!
//! PostgreSQL: `GIKEV2_PG_URL` (a URL of an existing database, used to create and drop the
//! test databases) or else `postgres://postgres@127.0.0.1:5432/test`, then
//! `postgres://root@127.0.0.1:5432/test`. When none answers, the PostgreSQL half is
//! skipped with a message, unless `GIKEV2_REQUIRE_ALL=1` (CI), where it fails.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use gikev2_policy::{MasterKey, Store};
use sqlx::Connection;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(unique("gikev2_policy_test"));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub enum Kind {
    Sqlite,
    Postgres { admin_url: String, name: String },
}

/// One test database.
pub struct TestDb {
    pub kind: Kind,
    pub url: String,
    pub dir: TempDir,
}

fn require_all() -> bool {
    std::env::var("GIKEV2_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = TempDir::new();
        let url = format!("sqlite://{}?mode=rwc", dir.0.join("gcks.db").display());
        Self {
            kind: Kind::Sqlite,
            url,
            dir,
        }
    }

    /// A fresh PostgreSQL database, or `None` (after saying why) when the server cannot
    /// be reached and `GIKEV2_REQUIRE_ALL` is not set.
    pub async fn postgres() -> Option<Self> {
        let candidates: Vec<String> = match std::env::var("GIKEV2_PG_URL") {
            Ok(u) => vec![u],
            Err(_) => vec![
                "postgres://postgres@127.0.0.1:5432/test".into(),
                "postgres://root@127.0.0.1:5432/test".into(),
            ],
        };
        let mut errors = Vec::new();
        for admin_url in candidates {
            match sqlx::PgConnection::connect(&admin_url).await {
                Ok(mut c) => {
                    let name = unique("gikev2");
                    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                        .execute(&mut c)
                        .await
                        .expect("CREATE DATABASE");
                    let _ = c.close().await;
                    let base = admin_url
                        .rsplit_once('/')
                        .map(|(b, _)| b.to_string())
                        .unwrap_or(admin_url.clone());
                    return Some(Self {
                        url: format!("{base}/{name}"),
                        kind: Kind::Postgres { admin_url, name },
                        dir: TempDir::new(),
                    });
                }
                Err(e) => errors.push(format!("{admin_url}: {e}")),
            }
        }
        let why = format!("PostgreSQL unreachable ({})", errors.join("; "));
        if require_all() {
            panic!("{why}, and GIKEV2_REQUIRE_ALL=1");
        }
        eprintln!("SKIPPED (PostgreSQL half): {why}");
        None
    }

    pub fn is_pg(&self) -> bool {
        matches!(self.kind, Kind::Postgres { .. })
    }

    pub async fn open(&self, key: MasterKey) -> Store {
        Store::open(&self.url, key).await.expect("open store")
    }

    /// Reads one BLOB/BYTEA column of every row, bypassing the store.
    pub async fn raw_blobs(&self, sql: &str) -> Vec<Vec<u8>> {
        match self.kind {
            Kind::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
            }
            Kind::Postgres { .. } => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
            }
        }
    }
}

impl TestDb {
    /// Reads one integer column of one row, bypassing the store.
    pub async fn raw_int(&self, sql: &str) -> i64 {
        match self.kind {
            Kind::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
            Kind::Postgres { .. } => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Kind::Postgres { admin_url, name } = &self.kind {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            let shown = name.clone();
            // Drop runs outside any async context we may block: use a thread with its own
            // runtime, and wait for it.
            let done = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let mut c = sqlx::PgConnection::connect(&admin_url).await?;
                    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await?;
                    c.close().await
                })
            })
            .join();
            if !matches!(done, Ok(Ok(()))) {
                eprintln!("could not drop test database {shown}");
            }
        }
    }
}

pub fn key(n: u8) -> MasterKey {
    MasterKey::from_bytes(&[n; 32]).unwrap()
}

/// Generates `#[tokio::test]`s running each `async fn NAME(db: &TestDb)` of the calling
/// file once per backend: `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::TestDb::sqlite();
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::common::TestDb::postgres().await else {
                        return;
                    };
                    super::$name(&db).await;
                }
            )*
        }
    };
}
