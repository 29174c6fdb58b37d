//! Group commit of registrations: every registration's store work (authorization,
//! capacity, Sender-IDs, audit row) goes through one writer task, which takes whatever
//! has queued up while the previous batch committed and decides and commits it in one
//! transaction ([`Store::commit_registrations`]). Nothing waits on purpose: a lone
//! registration is committed at once; under load the batch grows by itself and the
//! commit (an fsync on SQLite) and statements are shared (docs/performance.md, "gcks:
//! registration load"). Each caller gets its answer only after its batch committed, so
//! what it reveals to the member is durable first (RFC 9838 2.5.1 for Sender-IDs).
//!
//! A batch that fails as a whole (a constraint error, a lost connection) is retried one
//! write at a time, so one bad registration does not fail the others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use gikev2_policy::{AuditEvent, RegistrationOutcome, RegistrationWrite, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// Most registrations in one transaction.
const MAX_BATCH: usize = 256;

/// Makes the audit event of a decided registration.
pub type AuditFn =
    Box<dyn Fn(&RegistrationWrite, &RegistrationOutcome) -> AuditEvent + Send + Sync>;

enum Job {
    Register {
        write: RegistrationWrite,
        audit: AuditFn,
        reply: oneshot::Sender<Result<RegistrationOutcome, String>>,
    },
    Audit {
        event: AuditEvent,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// The queue in front of the writer task (started on first use, on the caller's
/// runtime).
pub struct CommitQueue {
    store: Arc<Store>,
    tx: OnceLock<mpsc::UnboundedSender<Job>>,
    stats: Arc<Counters>,
}

/// Batches committed and what they held, since the queue started.
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    registrations: AtomicU64,
}

/// Reads the queue's counters ([`CommitQueue::stats`]).
#[derive(Debug, Clone, Default)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    pub fn get(&self) -> QueueStats {
        QueueStats {
            batches: self.0.batches.load(Ordering::Relaxed),
            registrations: self.0.registrations.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of the queue's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Transactions committed (batches holding at least one registration).
    pub batches: u64,
    /// Registrations decided in them.
    pub registrations: u64,
}

impl CommitQueue {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            tx: OnceLock::new(),
            stats: Arc::default(),
        }
    }

    /// How many batches and registrations the writer committed so far; the handle
    /// stays valid after the queue moved into a server.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle(self.stats.clone())
    }

    fn sender(&self) -> &mpsc::UnboundedSender<Job> {
        self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(writer(self.store.clone(), rx, self.stats.clone()));
            tx
        })
    }

    /// Decides and commits one registration with whatever else is queued.
    pub async fn register(
        &self,
        write: RegistrationWrite,
        audit: AuditFn,
    ) -> Result<RegistrationOutcome, String> {
        let (reply, rx) = oneshot::channel();
        self.sender()
            .send(Job::Register {
                write,
                audit,
                reply,
            })
            .map_err(|_| "the store writer stopped".to_string())?;
        rx.await
            .map_err(|_| "the store writer stopped".to_string())?
    }

    /// Appends an event to the audit log with the next batch; returns once committed.
    pub async fn audit(&self, event: AuditEvent) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.sender()
            .send(Job::Audit { event, reply })
            .map_err(|_| "the store writer stopped".to_string())?;
        rx.await
            .map_err(|_| "the store writer stopped".to_string())?
    }
}

async fn writer(store: Arc<Store>, mut rx: mpsc::UnboundedReceiver<Job>, stats: Arc<Counters>) {
    while let Some(first) = rx.recv().await {
        // Let the tasks that are ready now (the endpoint with its queued datagrams, other
        // registrations) run first, so that what they queue joins this batch: a larger
        // batch for no added wait.
        tokio::task::yield_now().await;
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let registrations = jobs
            .iter()
            .filter(|j| matches!(j, Job::Register { .. }))
            .count() as u64;
        commit(&store, jobs).await;
        if registrations > 0 {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats
                .registrations
                .fetch_add(registrations, Ordering::Relaxed);
        }
    }
}

/// Registrations waiting for one batch: what is written, how it is audited, who hears.
type Pending = (
    Vec<RegistrationWrite>,
    Vec<AuditFn>,
    Vec<oneshot::Sender<Result<RegistrationOutcome, String>>>,
);

async fn commit(store: &Store, jobs: Vec<Job>) {
    let (mut writes, mut audits, mut replies): Pending = (Vec::new(), Vec::new(), Vec::new());
    let mut events = Vec::new();
    let mut event_replies = Vec::new();
    for j in jobs {
        match j {
            Job::Register {
                write,
                audit,
                reply,
            } => {
                writes.push(write);
                audits.push(audit);
                replies.push(reply);
            }
            Job::Audit { event, reply } => {
                events.push(event);
                event_replies.push(reply);
            }
        }
    }
    if !writes.is_empty() {
        debug!(registrations = writes.len(), "committing a batch");
        match store
            .commit_registrations(&writes, |i, w, o| audits[i](w, o))
            .await
        {
            Ok(outcomes) => {
                for (reply, o) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(o));
                }
            }
            Err(e) if writes.len() == 1 => {
                if let Some(reply) = replies.pop() {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
            Err(e) => {
                warn!(error = %e, registrations = writes.len(), "batch failed; committing one by one");
                for ((w, a), reply) in writes.iter().zip(&audits).zip(replies) {
                    let one = store
                        .commit_registrations(std::slice::from_ref(w), |_, w, o| a(w, o))
                        .await
                        .map_err(|e: StoreError| e.to_string())
                        .and_then(|mut o| o.pop().ok_or_else(|| "no outcome".to_string()));
                    let _ = reply.send(one);
                }
            }
        }
    }
    if !events.is_empty() {
        let r = store
            .record_audits(&events)
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &r {
            warn!(error = %e, "cannot write the audit log");
        }
        for reply in event_replies {
            let _ = reply.send(r.clone());
        }
    }
}
