//! The Security Association Database for inbound ESP (RFC 4301 4.1, 4.4.2; RFC 5374 4.1.2,
//! 5.2 item 3aa).
//!
//! Each entry says whether it is found by SPI alone, by SPI + destination, or by SPI +
//! destination + source. Lookup returns the *longest* match, in the order RFC 4301 4.1 gives:
//! (1) SPI + destination + source, (2) SPI + destination, (3) SPI. Group SPIs are chosen by
//! the GCKS and may collide with unicast SPIs; the longest match keeps them apart.
//!
//! Concurrency: the index is an `scc::HashIndex` keyed by SPI. Readers (`peek_with`) take no
//! lock and never wait for a hit: they run under an epoch guard and see the old or the new
//! value of a slot (a miss is confirmed under the bucket's shared lock, see `lookup_with`). Writers lock one bucket; a value is never mutated in place but replaced, and the
//! old one is reclaimed once no reader can see it. An install costs O(1) whatever the size of
//! the table (no snapshot copy), which matters at 1M SAs. The SA records themselves are shared
//! (`Arc`), so every version of a slot points at the same live SA state.
//!
//! Layout (the RFC 4301 4.1 suggestion of "a hash table by the SPI" whose buckets hold the
//! entries of one SPI, longest first): `spi -> Slot`. Almost every SPI has exactly one entry,
//! stored inline with its key, so a lookup is one probe and one comparison. An SPI shared by
//! several entries (a group SPI colliding with a unicast one, or per-source SAs under one SPI)
//! gets a `Many` slot with one map per key length, searched longest first.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use scc::hash_index::Entry;

type Hasher = foldhash::fast::RandomState;

/// A canonical address key: IPv4 as its IPv4-mapped IPv6 form, as 16 octets (alignment 1,
/// so that an inline entry stays small). An IPv6 packet addressed to `::ffff:a.b.c.d` thus
/// matches the entry for `a.b.c.d`; such addresses never appear in outer IPv6 headers
/// (RFC 4291 2.5.5.2 reserves them for IPv4-only nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Addr([u8; 16]);

impl From<IpAddr> for Addr {
    #[inline]
    fn from(a: IpAddr) -> Self {
        Self(match a {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        })
    }
}

impl Addr {
    fn ip(self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

/// How an SAD entry is matched (RFC 4301 4.1: "Each entry in the SAD must indicate whether
/// the SA lookup makes use of the destination IP address, or the destination and source IP
/// addresses, in addition to the SPI").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SadKey {
    /// Unicast: the SPI alone.
    Spi(u32),
    /// Multicast (any-source): SPI + group address.
    SpiDst { spi: u32, dst: IpAddr },
    /// Multicast (source-specific): SPI + group address + sender address.
    SpiDstSrc { spi: u32, dst: IpAddr, src: IpAddr },
}

impl SadKey {
    pub fn spi(&self) -> u32 {
        match *self {
            Self::Spi(spi) | Self::SpiDst { spi, .. } | Self::SpiDstSrc { spi, .. } => spi,
        }
    }

    fn kind(&self) -> Kind {
        match *self {
            Self::Spi(_) => Kind::Spi,
            Self::SpiDst { dst, .. } => Kind::Dst(dst.into()),
            Self::SpiDstSrc { dst, src, .. } => Kind::DstSrc(dst.into(), src.into()),
        }
    }
}

/// SAD errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SadError {
    #[error("an entry with this key already exists")]
    Exists,
}

/// The part of the key after the SPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Spi,
    Dst(Addr),
    DstSrc(Addr, Addr),
}

impl Kind {
    fn key(self, spi: u32) -> SadKey {
        match self {
            Kind::Spi => SadKey::Spi(spi),
            Kind::Dst(d) => SadKey::SpiDst { spi, dst: d.ip() },
            Kind::DstSrc(d, s) => SadKey::SpiDstSrc {
                spi,
                dst: d.ip(),
                src: s.ip(),
            },
        }
    }
}

/// The single entry of an SPI, stored flat so that matching needs no branch on the key
/// length (`len`: 0 SPI only, 1 + destination, 2 + destination and source; unused
/// addresses are zero).
#[derive(Clone)]
struct One<V> {
    len: u8,
    dst: Addr,
    src: Addr,
    v: V,
}

impl<V> One<V> {
    fn new(kind: Kind, v: V) -> Self {
        let zero = Addr([0; 16]);
        let (len, dst, src) = match kind {
            Kind::Spi => (0, zero, zero),
            Kind::Dst(d) => (1, d, zero),
            Kind::DstSrc(d, s) => (2, d, s),
        };
        Self { len, dst, src, v }
    }

    fn kind(&self) -> Kind {
        match self.len {
            0 => Kind::Spi,
            1 => Kind::Dst(self.dst),
            _ => Kind::DstSrc(self.dst, self.src),
        }
    }

    #[inline]
    fn matches(&self, dst: Addr, src: Addr) -> bool {
        // Non-short-circuit `&`/`|`: both comparisons always run, no data-dependent branch.
        ((self.len == 0) | (self.dst == dst)) & ((self.len < 2) | (self.src == src))
    }
}

/// Several entries under one SPI, one map per key length.
#[derive(Clone)]
struct Many<V> {
    any: Option<V>,
    dst: HashMap<Addr, V, Hasher>,
    dst_src: HashMap<(Addr, Addr), V, Hasher>,
}

impl<V: Clone> Many<V> {
    fn new(h: &Hasher) -> Self {
        Self {
            any: None,
            dst: HashMap::with_hasher(h.clone()),
            dst_src: HashMap::with_hasher(h.clone()),
        }
    }

    fn insert(&mut self, kind: Kind, v: V) -> Result<(), SadError> {
        let taken = match kind {
            Kind::Spi => self.any.is_some(),
            Kind::Dst(d) => self.dst.contains_key(&d),
            Kind::DstSrc(d, s) => self.dst_src.contains_key(&(d, s)),
        };
        if taken {
            return Err(SadError::Exists);
        }
        match kind {
            Kind::Spi => self.any = Some(v),
            Kind::Dst(d) => {
                self.dst.insert(d, v);
            }
            Kind::DstSrc(d, s) => {
                self.dst_src.insert((d, s), v);
            }
        }
        Ok(())
    }

    fn remove(&mut self, kind: Kind) -> Option<V> {
        match kind {
            Kind::Spi => self.any.take(),
            Kind::Dst(d) => self.dst.remove(&d),
            Kind::DstSrc(d, s) => self.dst_src.remove(&(d, s)),
        }
    }

    fn get(&self, kind: Kind) -> Option<&V> {
        match kind {
            Kind::Spi => self.any.as_ref(),
            Kind::Dst(d) => self.dst.get(&d),
            Kind::DstSrc(d, s) => self.dst_src.get(&(d, s)),
        }
    }

    fn lookup(&self, dst: Addr, src: Addr) -> Option<&V> {
        self.dst_src
            .get(&(dst, src))
            .or_else(|| self.dst.get(&dst))
            .or(self.any.as_ref())
    }

    fn len(&self) -> usize {
        usize::from(self.any.is_some()) + self.dst.len() + self.dst_src.len()
    }

    fn entries(&self) -> impl Iterator<Item = (Kind, &V)> {
        self.any
            .iter()
            .map(|v| (Kind::Spi, v))
            .chain(self.dst.iter().map(|(d, v)| (Kind::Dst(*d), v)))
            .chain(
                self.dst_src
                    .iter()
                    .map(|((d, s), v)| (Kind::DstSrc(*d, *s), v)),
            )
    }
}

#[derive(Clone)]
enum Slot<V> {
    One(One<V>),
    Many(Box<Many<V>>),
}

impl<V: Clone> Slot<V> {
    /// Adds an entry to this SPI's slot.
    fn insert(&mut self, kind: Kind, v: V, hasher: &Hasher) -> Result<(), SadError> {
        match self {
            Slot::One(one) if one.kind() == kind => Err(SadError::Exists),
            Slot::One(one) => {
                let mut many = Box::new(Many::new(hasher));
                many.insert(one.kind(), one.v.clone())?;
                many.insert(kind, v)?;
                *self = Slot::Many(many);
                Ok(())
            }
            Slot::Many(many) => many.insert(kind, v),
        }
    }

    /// Removes an entry; the second value says whether the slot is now empty.
    fn remove(&mut self, kind: Kind) -> (Option<V>, bool) {
        match self {
            Slot::One(one) if one.kind() == kind => (Some(one.v.clone()), true),
            Slot::One(_) => (None, false),
            Slot::Many(many) => {
                let v = many.remove(kind);
                let left = many.len();
                // Back to the inline form when one entry is left.
                let last = (left == 1)
                    .then(|| many.entries().next().map(|(k, v)| One::new(k, v.clone())))
                    .flatten();
                if let Some(one) = last {
                    *self = Slot::One(one);
                }
                (v, left == 0)
            }
        }
    }

    fn get(&self, kind: Kind) -> Option<&V> {
        match self {
            Slot::One(one) => (one.kind() == kind).then_some(&one.v),
            Slot::Many(many) => many.get(kind),
        }
    }

    /// RFC 4301 4.1 longest match among this SPI's entries.
    #[inline]
    fn lookup(&self, dst: Addr, src: Addr) -> Option<&V> {
        match self {
            // The only entry of this SPI: it is the longest match if it matches at all.
            Slot::One(one) => one.matches(dst, src).then_some(&one.v),
            Slot::Many(many) => many.lookup(dst, src),
        }
    }

    fn keys(&self, spi: u32, out: &mut Vec<SadKey>) {
        match self {
            Slot::One(one) => out.push(one.kind().key(spi)),
            Slot::Many(m) => out.extend(m.entries().map(|(k, _)| k.key(spi))),
        }
    }
}

/// The SAD, generic over the stored value (the engine stores `Arc<Sa>`).
pub struct Sad<V: 'static> {
    index: scc::HashIndex<u32, Slot<V>, Hasher>,
    /// Number of entries (an SPI slot may hold several).
    entries: AtomicUsize,
    hasher: Hasher,
}

impl<V: 'static> std::fmt::Debug for Sad<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sad")
            .field("entries", &self.entries.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<V: Clone + 'static> Default for Sad<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone + 'static> Sad<V> {
    pub fn new() -> Self {
        let hasher = Hasher::default();
        Self {
            index: scc::HashIndex::with_hasher(hasher.clone()),
            entries: AtomicUsize::new(0),
            hasher,
        }
    }

    /// Adds an entry. Fails if the exact key is taken.
    pub fn insert(&self, key: SadKey, v: V) -> Result<(), SadError> {
        let (spi, kind) = (key.spi(), key.kind());
        match self.index.entry_sync(spi) {
            Entry::Vacant(e) => {
                e.insert_entry(Slot::One(One::new(kind, v)));
            }
            Entry::Occupied(mut e) => {
                let mut slot = e.get().clone();
                slot.insert(kind, v, &self.hasher)?;
                e.update(slot);
            }
        }
        self.entries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Adds many entries; returns the keys that were taken.
    pub fn insert_batch(&self, entries: impl IntoIterator<Item = (SadKey, V)>) -> Vec<SadKey> {
        entries
            .into_iter()
            .filter_map(|(k, v)| self.insert(k, v).err().map(|_| k))
            .collect()
    }

    /// Removes the entry with exactly this key.
    pub fn remove(&self, key: SadKey) -> Option<V> {
        self.remove_if(key, |_| true)
    }

    /// Removes the entry with exactly this key if `pred` holds for it (e.g. it is still the
    /// same SA and not a newer one installed under the same key).
    pub fn remove_if(&self, key: SadKey, pred: impl FnOnce(&V) -> bool) -> Option<V> {
        let (spi, kind) = (key.spi(), key.kind());
        let Entry::Occupied(mut e) = self.index.entry_sync(spi) else {
            return None;
        };
        if !e.get().get(kind).is_some_and(pred) {
            return None;
        }
        let mut slot = e.get().clone();
        let (removed, empty) = slot.remove(kind);
        if empty {
            e.remove_entry();
        } else {
            e.update(slot);
        }
        if removed.is_some() {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// RFC 4301 4.1 longest-match lookup; `f` runs on the entry under the reader's epoch
    /// guard (no lock, no reference-count traffic on the hot path).
    #[inline]
    pub fn lookup_with<R>(
        &self,
        spi: u32,
        dst: IpAddr,
        src: IpAddr,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R> {
        let (dst, src) = (Addr::from(dst), Addr::from(src));
        let guard = scc::Guard::new();
        match self.index.peek(&spi, &guard) {
            Some(slot) => slot.lookup(dst, src).map(f),
            None => self.confirm_miss(spi, dst, src, f),
        }
    }

    /// `peek` takes no lock, and a writer replaces a slot by inserting the new version and
    /// then retiring the old one: in between, a lock-free reader can see neither. A miss is
    /// therefore confirmed under the bucket's shared lock, which waits for such a writer.
    /// Hits never come here; unknown SPIs pay one more probe. Kept out of line so that the
    /// hit path stays small (measured: inlining it costs ~60 ns per lookup at 1M SAs).
    #[cold]
    #[inline(never)]
    fn confirm_miss<R>(
        &self,
        spi: u32,
        dst: Addr,
        src: Addr,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R> {
        self.index
            .read_sync(&spi, |_, slot| slot.lookup(dst, src).map(f))
            .flatten()
    }

    /// RFC 4301 4.1 longest-match lookup, returning a clone of the entry.
    pub fn lookup(&self, spi: u32, dst: IpAddr, src: IpAddr) -> Option<V> {
        self.lookup_with(spi, dst, src, V::clone)
    }

    /// The entry stored under exactly this key.
    pub fn get(&self, key: SadKey) -> Option<V> {
        let kind = key.kind();
        self.index
            .peek_with(&key.spi(), |_, slot| slot.get(kind).cloned())
            .flatten()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key (for status and tests; walks the whole index).
    pub fn keys(&self) -> Vec<SadKey> {
        let mut out = Vec::new();
        self.index.iter_sync(|spi, slot| {
            slot.keys(*spi, &mut out);
            true
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_match_wins() {
        let sad: Sad<&str> = Sad::new();
        let (g, s1, s2, me) = (a("239.1.1.1"), a("10.0.0.1"), a("10.0.0.2"), a("192.0.2.9"));
        sad.insert(SadKey::Spi(7), "unicast").unwrap();
        sad.insert(SadKey::SpiDst { spi: 7, dst: g }, "group")
            .unwrap();
        sad.insert(
            SadKey::SpiDstSrc {
                spi: 7,
                dst: g,
                src: s1,
            },
            "group-from-s1",
        )
        .unwrap();
        // (1) SPI + dst + src.
        assert_eq!(sad.lookup(7, g, s1), Some("group-from-s1"));
        // (2) SPI + dst when the source differs.
        assert_eq!(sad.lookup(7, g, s2), Some("group"));
        // (3) SPI alone for anything else: the unicast SA sharing the group's SPI.
        assert_eq!(sad.lookup(7, me, s1), Some("unicast"));
        assert_eq!(sad.lookup(8, g, s1), None);
        // Remove the longest; the next longest takes over.
        assert_eq!(
            sad.remove(SadKey::SpiDstSrc {
                spi: 7,
                dst: g,
                src: s1
            }),
            Some("group-from-s1")
        );
        assert_eq!(sad.lookup(7, g, s1), Some("group"));
        sad.remove(SadKey::SpiDst { spi: 7, dst: g });
        assert_eq!(sad.lookup(7, g, s1), Some("unicast"));
        sad.remove(SadKey::Spi(7));
        assert_eq!(sad.lookup(7, g, s1), None);
        assert!(sad.is_empty());
    }

    #[test]
    fn multicast_only_spi_does_not_match_other_destinations() {
        let sad: Sad<u32> = Sad::new();
        let g = a("ff3e::1234");
        sad.insert(SadKey::SpiDst { spi: 1, dst: g }, 1).unwrap();
        assert_eq!(sad.lookup(1, g, a("2001:db8::1")), Some(1));
        assert_eq!(sad.lookup(1, a("ff3e::1235"), a("2001:db8::1")), None);
        // IPv4 and IPv6 keys do not mix.
        sad.insert(
            SadKey::SpiDst {
                spi: 2,
                dst: a("239.0.0.1"),
            },
            2,
        )
        .unwrap();
        assert_eq!(sad.lookup(2, a("239.0.0.1"), a("1.2.3.4")), Some(2));
        assert_eq!(sad.lookup(2, a("ff3e::1"), a("1.2.3.4")), None);
    }

    #[test]
    fn duplicates_refused_and_batch_reports_them() {
        let sad: Sad<u32> = Sad::new();
        sad.insert(SadKey::Spi(1), 1).unwrap();
        assert_eq!(sad.insert(SadKey::Spi(1), 2), Err(SadError::Exists));
        let g = a("239.1.1.1");
        let failed = sad.insert_batch(vec![
            (SadKey::Spi(1), 3),
            (SadKey::SpiDst { spi: 1, dst: g }, 4),
            (SadKey::SpiDst { spi: 1, dst: g }, 5),
            (SadKey::Spi(2), 6),
        ]);
        assert_eq!(failed.len(), 2);
        assert_eq!(sad.len(), 3);
        assert_eq!(sad.get(SadKey::SpiDst { spi: 1, dst: g }), Some(4));
        assert_eq!(sad.keys().len(), 3);
    }

    #[test]
    fn readers_see_old_or_new_snapshot_while_writers_run() {
        let sad: Arc<Sad<u32>> = Arc::new(Sad::new());
        let g = a("239.9.9.9");
        for spi in 0..64 {
            sad.insert(SadKey::Spi(spi), spi).unwrap();
        }
        std::thread::scope(|s| {
            let w = sad.clone();
            s.spawn(move || {
                for spi in 64..2000 {
                    w.insert(SadKey::SpiDst { spi, dst: g }, spi).unwrap();
                }
            });
            for _ in 0..20_000 {
                for spi in [0u32, 17, 63] {
                    assert_eq!(sad.lookup(spi, g, g), Some(spi));
                }
            }
        });
        assert_eq!(sad.len(), 2000);
    }

    #[test]
    fn stable_entry_stays_visible_while_its_spi_slot_changes_shape() {
        // A group SA under SPI 9 is looked up continuously while a writer keeps adding and
        // removing a unicast SA and a source-specific SA with the same SPI (inline slot <->
        // multi-entry slot). The group SA must never disappear, and the source-specific SA
        // must win exactly when present.
        let sad: Arc<Sad<u32>> = Arc::new(Sad::new());
        let (g, s1, s2) = (a("239.1.1.1"), a("10.0.0.1"), a("10.0.0.2"));
        sad.insert(SadKey::SpiDst { spi: 9, dst: g }, 1).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let w = sad.clone();
            let stop = &stop;
            s.spawn(move || {
                for _ in 0..3000 {
                    w.insert(SadKey::Spi(9), 2).unwrap();
                    w.insert(
                        SadKey::SpiDstSrc {
                            spi: 9,
                            dst: g,
                            src: s1,
                        },
                        3,
                    )
                    .unwrap();
                    w.remove(SadKey::Spi(9)).unwrap();
                    w.remove(SadKey::SpiDstSrc {
                        spi: 9,
                        dst: g,
                        src: s1,
                    })
                    .unwrap();
                }
                stop.store(true, std::sync::atomic::Ordering::Release);
            });
            let mut reads = 0u32;
            while reads < 200_000 || !stop.load(std::sync::atomic::Ordering::Acquire) {
                assert_eq!(sad.lookup(9, g, s2), Some(1));
                let v = sad.lookup(9, g, s1);
                assert!(matches!(v, Some(1 | 3)), "lost the group SA: {v:?}");
                reads += 1;
            }
        });
        assert_eq!(sad.len(), 1);
        assert_eq!(sad.keys(), vec![SadKey::SpiDst { spi: 9, dst: g }]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(SadKey),
        Remove(SadKey),
        Lookup(u32, IpAddr, IpAddr),
    }

    fn small_key() -> impl Strategy<Value = SadKey> {
        let addr = prop_oneof![
            Just(a("239.1.1.1")),
            Just(a("239.1.1.2")),
            Just(a("10.0.0.1"))
        ];
        prop_oneof![
            (0u32..4).prop_map(SadKey::Spi),
            (0u32..4, addr.clone()).prop_map(|(spi, dst)| SadKey::SpiDst { spi, dst }),
            (0u32..4, addr.clone(), addr).prop_map(|(spi, dst, src)| SadKey::SpiDstSrc {
                spi,
                dst,
                src
            }),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let addr = prop_oneof![
            Just(a("239.1.1.1")),
            Just(a("239.1.1.2")),
            Just(a("10.0.0.1"))
        ];
        prop_oneof![
            small_key().prop_map(Op::Insert),
            small_key().prop_map(Op::Remove),
            (0u32..4, addr.clone(), addr).prop_map(|(s, d, r)| Op::Lookup(s, d, r)),
        ]
    }

    proptest! {
        /// The sharded, indexed SAD behaves like RFC 4301 4.1's ordered search over a list.
        #[test]
        fn matches_the_ordered_search(ops in prop::collection::vec(op(), 1..200)) {
            let sad: Sad<SadKey> = Sad::new();
            let mut model: Vec<SadKey> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        let dup = model.contains(&k);
                        prop_assert_eq!(sad.insert(k, k).is_err(), dup);
                        if !dup { model.push(k); }
                    }
                    Op::Remove(k) => {
                        let had = model.iter().position(|m| *m == k);
                        prop_assert_eq!(sad.remove(k), had.map(|i| model.remove(i)));
                    }
                    Op::Lookup(spi, dst, src) => {
                        let want = model.iter().find(|k| **k == SadKey::SpiDstSrc { spi, dst, src })
                            .or_else(|| model.iter().find(|k| **k == SadKey::SpiDst { spi, dst }))
                            .or_else(|| model.iter().find(|k| **k == SadKey::Spi(spi)))
                            .copied();
                        prop_assert_eq!(sad.lookup(spi, dst, src), want);
                    }
                }
            }
            prop_assert_eq!(sad.len(), model.len());
        }
    }
}
