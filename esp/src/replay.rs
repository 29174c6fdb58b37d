//! Anti-replay (RFC 4303 3.4.3): a sliding window over 32-bit sequence numbers, kept as a
//! ring of 64-bit words in the style of RFC 4303 Appendix A2 / RFC 6479, so that sliding the
//! window costs at most one pass over the words, never a shift of the whole bitmap.
//!
//! Two steps, as in RFC 4303 3.4.3 and STYLE D3: `check` before any cryptographic work
//! (rejects duplicates and packets left of the window), `commit` only after the ICV verified
//! ("the receive window is updated only if the integrity verification succeeds").
//!
//! `ReplayState` holds the windows of one inbound SA: none (replay disabled, RFC 9838 2.6
//! "32-bit Unspecified Numbers"), one per SA, or one per sender on multi-sender SAs (keyed by
//! source address or Sender-ID, capped in number).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Default window: 1024 packets (RFC 4303 3.4.3 asks for >= 32, prefers 64 and allows larger
/// for high-speed links).
pub const DEFAULT_WINDOW: u32 = 1024;
/// RFC 4303 3.4.3: "A minimum window size of 32 packets MUST be supported".
pub const MIN_WINDOW: u32 = 32;
/// Upper bound on a configured window (bounded allocation: 8 KiB of bitmap).
pub const MAX_WINDOW: u32 = 65536;

/// Why a sequence number is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// RFC 4303 3.3.3: the first packet carries 1; 0 is never sent with anti-replay enabled.
    #[error("sequence number 0 is never sent")]
    Zero,
    #[error("sequence number left of the replay window")]
    TooOld,
    #[error("duplicate sequence number")]
    Duplicate,
}

/// One sliding window.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest authenticated sequence number (0: none yet).
    top: u64,
    /// Window size in packets.
    size: u64,
    /// Ring of bits: sequence number `n` lives in word `(n / 64) % words.len()`, bit `n % 64`.
    /// One word more than `size / 64` so that the `size` newest numbers never share a word
    /// with numbers that fell out of the window.
    words: Box<[u64]>,
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &self.top)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// A window of `size` packets, rounded up to a multiple of 64 and clamped to
    /// [`MIN_WINDOW`]..=[`MAX_WINDOW`].
    pub fn new(size: u32) -> Self {
        let size = size.clamp(MIN_WINDOW, MAX_WINDOW).next_multiple_of(64);
        let words = (size / 64) as usize + 1;
        Self {
            top: 0,
            size: u64::from(size),
            words: vec![0u64; words].into_boxed_slice(),
        }
    }

    /// The window size in packets.
    pub fn size(&self) -> u32 {
        u32::try_from(self.size).unwrap_or(u32::MAX)
    }

    /// The highest sequence number committed so far (0 if none).
    pub fn top(&self) -> u32 {
        u32::try_from(self.top).unwrap_or(u32::MAX)
    }

    fn slot(&self, sn: u64) -> (usize, u64) {
        let n = self.words.len() as u64;
        (((sn / 64) % n) as usize, 1u64 << (sn % 64))
    }

    fn bit(&self, sn: u64) -> bool {
        let (w, m) = self.slot(sn);
        self.words.get(w).is_some_and(|word| word & m != 0)
    }

    /// The preliminary check of RFC 4303 3.4.3 (no state change).
    pub fn check(&self, sn: u32) -> Result<(), ReplayError> {
        let sn = u64::from(sn);
        if sn == 0 {
            return Err(ReplayError::Zero);
        }
        if sn > self.top {
            return Ok(());
        }
        if self.top - sn >= self.size {
            return Err(ReplayError::TooOld);
        }
        if self.bit(sn) {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// Records an authenticated sequence number, sliding the window if it is the new right
    /// edge. Checks again, since another packet with the same number may have been committed
    /// between `check` and `commit`.
    pub fn commit(&mut self, sn: u32) -> Result<(), ReplayError> {
        self.check(sn)?;
        let sn = u64::from(sn);
        if sn > self.top {
            let n = self.words.len() as u64;
            let old_block = self.top / 64;
            let new_block = sn / 64;
            // Clear every word the window slides over; a jump by more than the ring clears
            // all of them once.
            let steps = (new_block - old_block).min(n);
            for i in 1..=steps {
                let w = ((old_block + i) % n) as usize;
                if let Some(word) = self.words.get_mut(w) {
                    *word = 0;
                }
            }
            self.top = sn;
        }
        let (w, m) = self.slot(sn);
        if let Some(word) = self.words.get_mut(w) {
            *word |= m;
        }
        Ok(())
    }
}

/// How an inbound SA tells its senders apart for per-sender windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderKey {
    /// The outer source address.
    SourceAddress,
    /// The Sender-ID in the top `GWP_SENDER_ID_BITS` bits of the IV (RFC 6054 3,
    /// RFC 9838 2.5.2). Authenticated: the IV is part of the AEAD nonce.
    SenderId,
}

/// The receiver's local anti-replay choice for one SA (RFC 9838 2.6: "a local matter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayPolicy {
    /// No anti-replay checks.
    Disabled,
    /// One window for the SA (single-sender SAs with "32-bit Sequential Numbers").
    PerSa { window: u32 },
    /// One window per sender, at most `max_senders` of them.
    PerSender {
        window: u32,
        key: SenderKey,
        max_senders: usize,
    },
}

impl ReplayPolicy {
    /// The default for an SN transform (RFC 9838 2.6, 4.4.2.1.3): a window of
    /// [`DEFAULT_WINDOW`] for "32-bit Sequential Numbers", none for "32-bit Unspecified
    /// Numbers" (uniqueness is not guaranteed, so replay protection is not possible).
    pub fn default_for(sn: crate::sa::SnTransform) -> Self {
        match sn {
            crate::sa::SnTransform::Sequential32 => Self::PerSa {
                window: DEFAULT_WINDOW,
            },
            crate::sa::SnTransform::Unspecified32 => Self::Disabled,
        }
    }
}

/// Identity of one sender on a multi-sender SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// Per-SA window, or replay disabled.
    Sa,
    Address(IpAddr),
    Id(u32),
}

/// Replay failures of `ReplayState`, which adds the per-sender cap to `ReplayError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayStateError {
    #[error(transparent)]
    Window(#[from] ReplayError),
    /// A new sender would exceed `max_senders`: refused rather than evicting a window
    /// (eviction would reopen replays for the evicted sender).
    #[error("too many senders for per-sender replay windows")]
    TooManySenders,
}

/// The replay windows of one inbound SA.
#[derive(Debug)]
pub(crate) enum ReplayState {
    Disabled,
    PerSa(Mutex<ReplayWindow>),
    PerSender {
        window: u32,
        key: SenderKey,
        max_senders: usize,
        windows: Mutex<HashMap<Sender, ReplayWindow, foldhash::fast::RandomState>>,
    },
}

impl ReplayState {
    pub(crate) fn new(policy: ReplayPolicy) -> Self {
        match policy {
            ReplayPolicy::Disabled => Self::Disabled,
            ReplayPolicy::PerSa { window } => Self::PerSa(Mutex::new(ReplayWindow::new(window))),
            ReplayPolicy::PerSender {
                window,
                key,
                max_senders,
            } => Self::PerSender {
                window,
                key,
                max_senders,
                windows: Mutex::new(HashMap::default()),
            },
        }
    }

    pub(crate) fn sender_key(&self) -> Option<SenderKey> {
        match self {
            Self::PerSender { key, .. } => Some(*key),
            _ => None,
        }
    }

    /// Preliminary check (before decryption).
    #[inline]
    pub(crate) fn check(&self, sender: Sender, sn: u32) -> Result<(), ReplayStateError> {
        // Without a window there is nothing to check: decided here, without a call.
        if let Self::Disabled = self {
            return Ok(());
        }
        self.check_window(sender, sn)
    }

    fn check_window(&self, sender: Sender, sn: u32) -> Result<(), ReplayStateError> {
        match self {
            Self::Disabled => Ok(()),
            Self::PerSa(w) => Ok(lock(w).check(sn)?),
            Self::PerSender { windows, .. } => {
                let map = lock(windows);
                match map.get(&sender) {
                    Some(w) => Ok(w.check(sn)?),
                    // A first packet from a new sender: only SN 0 is refused here; the cap is
                    // enforced at commit, after authentication, so that forgeries cannot
                    // fill the table.
                    None if sn == 0 => Err(ReplayError::Zero.into()),
                    None => Ok(()),
                }
            }
        }
    }

    /// Commit after the ICV verified.
    #[inline]
    pub(crate) fn commit(&self, sender: Sender, sn: u32) -> Result<(), ReplayStateError> {
        if let Self::Disabled = self {
            return Ok(());
        }
        self.commit_window(sender, sn)
    }

    fn commit_window(&self, sender: Sender, sn: u32) -> Result<(), ReplayStateError> {
        match self {
            Self::Disabled => Ok(()),
            Self::PerSa(w) => Ok(lock(w).commit(sn)?),
            Self::PerSender {
                window,
                max_senders,
                windows,
                ..
            } => {
                let mut map = lock(windows);
                if let Some(w) = map.get_mut(&sender) {
                    return Ok(w.commit(sn)?);
                }
                if map.len() >= *max_senders {
                    return Err(ReplayStateError::TooManySenders);
                }
                let mut w = ReplayWindow::new(*window);
                w.commit(sn)?;
                map.insert(sender, w);
                Ok(())
            }
        }
    }
}

/// Locks a mutex, recovering from poisoning: replay state stays consistent across a panic
/// elsewhere because every mutation is a single `commit`.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn accept(w: &mut ReplayWindow, sn: u32) -> Result<(), ReplayError> {
        w.check(sn)?;
        w.commit(sn)
    }

    #[test]
    fn first_packet_and_zero() {
        let mut w = ReplayWindow::new(64);
        assert_eq!(accept(&mut w, 0), Err(ReplayError::Zero));
        assert_eq!(accept(&mut w, 1), Ok(()));
        assert_eq!(accept(&mut w, 1), Err(ReplayError::Duplicate));
        let mut w = ReplayWindow::new(64);
        // The first packet may be far ahead (a late joiner on a running group).
        assert_eq!(accept(&mut w, 1_000_000), Ok(()));
        assert_eq!(w.top(), 1_000_000);
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new(64);
        accept(&mut w, 100).unwrap();
        // 100 - 63 = 37 is the left edge: inside.
        assert_eq!(accept(&mut w, 37), Ok(()));
        assert_eq!(accept(&mut w, 36), Err(ReplayError::TooOld));
        assert_eq!(accept(&mut w, 37), Err(ReplayError::Duplicate));
        // Out of order inside the window.
        assert_eq!(accept(&mut w, 99), Ok(()));
        assert_eq!(accept(&mut w, 50), Ok(()));
        assert_eq!(accept(&mut w, 50), Err(ReplayError::Duplicate));
    }

    #[test]
    fn slide_by_more_than_window_clears_old_bits() {
        let mut w = ReplayWindow::new(64);
        for sn in 1..=64 {
            accept(&mut w, sn).unwrap();
        }
        accept(&mut w, 64 + 1000).unwrap();
        // Everything old is too old; recent numbers are fresh, not stale bits.
        assert_eq!(accept(&mut w, 64), Err(ReplayError::TooOld));
        for sn in 1001..1064 {
            assert_eq!(accept(&mut w, sn), Ok(()), "sn {sn}");
        }
        // Exactly one ring length ahead: same word index as an old, set word.
        let mut w = ReplayWindow::new(64);
        accept(&mut w, 1).unwrap();
        accept(&mut w, 2).unwrap();
        accept(&mut w, 1 + 128).unwrap();
        assert_eq!(accept(&mut w, 2), Err(ReplayError::TooOld));
        assert_eq!(accept(&mut w, 130), Ok(()));
        // 130 - 63 = 67 is the left edge.
        assert_eq!(accept(&mut w, 66), Err(ReplayError::TooOld));
        assert_eq!(accept(&mut w, 67), Ok(()));
    }

    #[test]
    fn top_of_the_sequence_space() {
        let mut w = ReplayWindow::new(1024);
        accept(&mut w, u32::MAX - 5).unwrap();
        accept(&mut w, u32::MAX).unwrap();
        assert_eq!(accept(&mut w, u32::MAX), Err(ReplayError::Duplicate));
        assert_eq!(accept(&mut w, u32::MAX - 3), Ok(()));
        // No wrap without ESN: a small number after the top is simply too old.
        assert_eq!(accept(&mut w, 1), Err(ReplayError::TooOld));
    }

    #[test]
    fn check_does_not_commit() {
        let mut w = ReplayWindow::new(64);
        w.check(5).unwrap();
        w.check(5).unwrap();
        assert_eq!(w.top(), 0);
        w.commit(5).unwrap();
        assert_eq!(w.commit(5), Err(ReplayError::Duplicate));
    }

    #[test]
    fn sizes_are_rounded_and_clamped() {
        assert_eq!(ReplayWindow::new(0).size(), 64);
        assert_eq!(ReplayWindow::new(100).size(), 128);
        assert_eq!(ReplayWindow::new(1024).size(), 1024);
        assert_eq!(ReplayWindow::new(u32::MAX).size(), MAX_WINDOW);
    }

    #[test]
    fn per_sender_windows_are_independent_and_capped() {
        let s = ReplayState::new(ReplayPolicy::PerSender {
            window: 64,
            key: SenderKey::SenderId,
            max_senders: 2,
        });
        s.commit(Sender::Id(1), 10).unwrap();
        s.commit(Sender::Id(2), 10).unwrap();
        assert_eq!(
            s.check(Sender::Id(1), 10),
            Err(ReplayStateError::Window(ReplayError::Duplicate))
        );
        assert_eq!(
            s.commit(Sender::Id(3), 10),
            Err(ReplayStateError::TooManySenders)
        );
        // A check for an unknown sender passes (cap enforced at commit).
        assert_eq!(s.check(Sender::Id(3), 10), Ok(()));
        assert_eq!(
            s.check(Sender::Id(3), 0),
            Err(ReplayStateError::Window(ReplayError::Zero))
        );
        let d = ReplayState::new(ReplayPolicy::Disabled);
        d.commit(Sender::Sa, 0).unwrap();
        d.commit(Sender::Sa, 0).unwrap();
    }

    /// The naive model: every number seen, and the maximum.
    struct Model {
        seen: BTreeSet<u32>,
        max: u32,
        size: u32,
    }

    impl Model {
        fn accept(&mut self, sn: u32) -> Result<(), ReplayError> {
            if sn == 0 {
                return Err(ReplayError::Zero);
            }
            if sn <= self.max && self.max - sn >= self.size {
                return Err(ReplayError::TooOld);
            }
            if !self.seen.insert(sn) {
                return Err(ReplayError::Duplicate);
            }
            self.max = self.max.max(sn);
            Ok(())
        }
    }

    fn sn_stream() -> impl Strategy<Value = Vec<u32>> {
        // Mostly near each other (so the window matters), with occasional far jumps.
        prop::collection::vec(
            prop_oneof![
                8 => 0u32..400,
                1 => any::<u32>(),
                1 => (u32::MAX - 300)..=u32::MAX,
            ],
            1..300,
        )
    }

    proptest! {
        #[test]
        fn window_matches_naive_model(size in prop_oneof![Just(32u32), Just(64), Just(128), Just(1024)],
                                      sns in sn_stream()) {
            let mut w = ReplayWindow::new(size);
            let mut m = Model { seen: BTreeSet::new(), max: 0, size: w.size() };
            for sn in sns {
                prop_assert_eq!(accept(&mut w, sn), m.accept(sn), "sn {}", sn);
            }
        }

        #[test]
        fn unauthenticated_checks_never_move_the_window(sns in sn_stream(), probe in sn_stream()) {
            let mut w = ReplayWindow::new(64);
            for sn in sns { let _ = accept(&mut w, sn); }
            let before = (w.top(), w.words.clone());
            for sn in probe { let _ = w.check(sn); }
            prop_assert_eq!((w.top(), w.words.clone()), before);
        }
    }
}
