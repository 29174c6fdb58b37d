//! Store errors. Constraint violations (from the API or from an administrator's SQL) are
//! classified so the message says which rule was broken.

use std::fmt;

use crate::secrets::SecretsError;

/// Which kind of schema rule a statement broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    /// A UNIQUE or PRIMARY KEY constraint (a duplicate identity, name, SPI, Sender-ID..).
    Unique,
    /// A FOREIGN KEY constraint (a reference to a missing group, member, key..).
    ForeignKey,
    /// A CHECK constraint (a value out of range or not in the allowed set).
    Check,
    /// A NOT NULL constraint.
    NotNull,
    /// A value of the wrong type for its column (SQLite STRICT tables).
    Type,
}

impl fmt::Display for ConstraintKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unique => "unique constraint",
            Self::ForeignKey => "foreign key constraint",
            Self::Check => "check constraint",
            Self::NotNull => "not-null constraint",
            Self::Type => "column type constraint",
        })
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported backend. Only the scheme is kept (a URL may carry a
    /// password).
    #[error("unsupported database URL scheme {scheme:?} (use sqlite://PATH or postgres://..)")]
    UnsupportedUrl { scheme: String },
    /// The statement broke a schema rule.
    #[error("{kind} violated{}: {message}", constraint.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Constraint {
        kind: ConstraintKind,
        /// The constraint's name where the backend reports it (PostgreSQL does).
        constraint: Option<String>,
        message: String,
    },
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The master key given at open is not the one this database's secrets were sealed
    /// with.
    #[error(
        "the master key does not match this database (its secrets were sealed with another key)"
    )]
    WrongMasterKey,
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// Optimistic concurrency: another writer committed the group state first.
    #[error("group state changed concurrently: expected generation {expected}, found {found}")]
    GenerationConflict { expected: u64, found: u64 },
    /// The Rekey SA the caller named is no longer the group's current one.
    #[error("the group's Rekey SA changed (stale SPI)")]
    StaleRekeySa,
    /// The group has no Rekey SA yet.
    #[error("the group has no Rekey SA")]
    NoRekeySa,
    /// Every 32-bit Message ID of this Rekey SA was used: replace the Rekey SA.
    #[error("GSA_REKEY Message IDs exhausted for this Rekey SA")]
    MessageIdsExhausted,
    /// The group hands out no Sender-IDs (no GWP_SENDER_ID_BITS configured).
    #[error("group {0} has no Sender-ID bits configured")]
    NoSenderIdBits(i64),
    #[error("{0} not found")]
    NotFound(String),
    /// An argument the store refuses before touching the database.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// A stored value that does not decode (for instance after a manual SQL edit). `row`
    /// names the row when known (" of group \"video\" (id 1)"), so that the operator can
    /// find the edit to undo.
    #[error("invalid stored value in {column}{row}: {reason}")]
    InvalidData {
        column: &'static str,
        row: String,
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn data(column: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidData {
            column,
            row: String::new(),
            reason: reason.into(),
        }
    }

    /// Names the row of an [`Self::InvalidData`] error (`row` as " of group ..").
    pub(crate) fn in_row(self, row: impl FnOnce() -> String) -> Self {
        match self {
            Self::InvalidData { column, reason, .. } => Self::InvalidData {
                column,
                row: row(),
                reason,
            },
            other => other,
        }
    }

    /// The constraint kind, when this is a constraint violation.
    pub fn constraint_kind(&self) -> Option<ConstraintKind> {
        match self {
            Self::Constraint { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::error::ErrorKind;
        if let Some(db) = e.as_database_error() {
            let kind = match db.kind() {
                ErrorKind::UniqueViolation => Some(ConstraintKind::Unique),
                ErrorKind::ForeignKeyViolation => Some(ConstraintKind::ForeignKey),
                ErrorKind::CheckViolation => Some(ConstraintKind::Check),
                ErrorKind::NotNullViolation => Some(ConstraintKind::NotNull),
                // SQLite enforces ON DELETE RESTRICT with an internal trigger and reports
                // SQLITE_CONSTRAINT_TRIGGER (1811) with the foreign-key message.
                _ if db.code().as_deref() == Some("1811")
                    && db.message().contains("FOREIGN KEY") =>
                {
                    Some(ConstraintKind::ForeignKey)
                }
                // SQLITE_CONSTRAINT_DATATYPE: a STRICT table refused the value's type.
                _ if db.code().as_deref() == Some("3091") => Some(ConstraintKind::Type),
                _ => None,
            };
            if let Some(kind) = kind {
                return Self::Constraint {
                    kind,
                    constraint: db.constraint().map(str::to_string),
                    message: db.message().to_string(),
                };
            }
        }
        Self::Database(e)
    }
}
