//! gikev2-policy: the GCKS's SQL policy store (see README.md and docs/sql-admin.md).
//!
//! One [`Store`] API over SQLite (the embedded default) and PostgreSQL (several GCKS
//! processes sharing one database). The typed model lives in [`model`]; secrets are
//! sealed at rest with a [`MasterKey`] kept in a file outside the database.
//!
//! Every operation that hands out something the GCKS promises to peers (Sender-IDs,
//! GSA_REKEY Message IDs, SPIs through [`Store::commit_group_state`]) commits before it
//! returns, so the caller may reveal the value as soon as it has it. Time is always an
//! argument (seconds on the caller's clock); the store never reads a clock.

#![forbid(unsafe_code)]

/// Runs `$body` once per backend with `$pool` bound to the concrete pool type, so one
/// source text serves both drivers (the SQL is shared: `$n` placeholders work in both).
macro_rules! on_backend {
    // On SQLite, the store's own writer connection (see `Backend`); only for a single
    // write transaction that calls no other store method (the writer has one connection).
    ($store:expr, writer |$pool:ident, $pg:ident| $body:block) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite { writer: $pool, .. } => {
                let $pg = false;
                $body
            }
            $crate::store::Backend::Postgres($pool) => {
                let $pg = true;
                $body
            }
        }
    };
    ($store:expr, |$pool:ident| $body:block) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite { pool: $pool, .. } => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
    ($store:expr, |$pool:ident, $pg:ident| $body:block) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite { pool: $pool, .. } => {
                let $pg = false;
                $body
            }
            $crate::store::Backend::Postgres($pool) => {
                let $pg = true;
                $body
            }
        }
    };
}

mod admin;
mod convert;
mod error;
pub mod model;
mod rows;
pub mod secrets;
mod store;

pub use error::{ConstraintKind, StoreError};
pub use model::*;
pub use secrets::{MasterKey, SecretsError};
pub use store::{BackendKind, Store, StoreOptions};
