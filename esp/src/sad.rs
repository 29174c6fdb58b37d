//! The Security Association Database for inbound ESP (RFC 4301 4.1, 4.4.2; RFC 5374 4.1.2,
//! 5.2 item 3aa).
//!
//! Each entry says whether it is found by SPI alone, by SPI + destination, or by SPI +
//! destination + source. Lookup returns the *longest* match, in the order RFC 4301 4.1 gives:
//! (1) SPI + destination + source, (2) SPI + destination, (3) SPI. Group SPIs are chosen by
//! the GCKS and may collide with unicast SPIs; the longest match keeps them apart.
//!
//! Concurrency: the table is split into shards by SPI. Each shard is an immutable snapshot
//! behind an `ArcSwap`; readers load it without locks or reference-count traffic and never
//! wait. A writer takes the shard's writer mutex, copies the shard (1/`shards` of the
//! table), edits the copy and publishes it. Readers are never stalled by installs; an install
//! at 1M SAs copies about a thousand entries, and batch installs copy each shard once.
//!
//! Layout per shard (the RFC 4301 4.1 suggestion of "a hash table by the SPI" whose buckets
//! hold the entries of one SPI, longest first): `spi -> Slot`. Almost every SPI has exactly
//! one entry, stored inline with its key, so a lookup is one probe and one comparison: two
//! dependent memory accesses before the SA itself. An SPI shared by several entries (a group
//! SPI colliding with a unicast one, or per-source SAs under one SPI) gets a `Many` slot with
//! one map per key length, searched longest first.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

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

#[derive(Clone)]
struct One<V> {
    kind: Kind,
    v: V,
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

struct ShardMaps<V> {
    spi: HashMap<u32, Slot<V>, Hasher>,
    hasher: Hasher,
}

impl<V: Clone> ShardMaps<V> {
    fn empty(h: &Hasher) -> Self {
        Self {
            spi: HashMap::with_hasher(h.clone()),
            hasher: h.clone(),
        }
    }

    fn deep_clone(&self) -> Self {
        Self {
            spi: self.spi.clone(),
            hasher: self.hasher.clone(),
        }
    }

    fn insert(&mut self, key: SadKey, v: V) -> Result<(), SadError> {
        let (spi, kind) = (key.spi(), key.kind());
        match self.spi.get_mut(&spi) {
            None => {
                self.spi.insert(spi, Slot::One(One { kind, v }));
                Ok(())
            }
            Some(Slot::One(one)) if one.kind == kind => Err(SadError::Exists),
            Some(slot @ Slot::One(_)) => {
                let mut many = Box::new(Many::new(&self.hasher));
                if let Slot::One(one) = slot {
                    many.insert(one.kind, one.v.clone())?;
                }
                many.insert(kind, v)?;
                *slot = Slot::Many(many);
                Ok(())
            }
            Some(Slot::Many(many)) => many.insert(kind, v),
        }
    }

    fn remove(&mut self, key: SadKey) -> Option<V> {
        let (spi, kind) = (key.spi(), key.kind());
        let slot = self.spi.get_mut(&spi)?;
        match slot {
            Slot::One(one) if one.kind == kind => {
                if let Some(Slot::One(one)) = self.spi.remove(&spi) {
                    return Some(one.v);
                }
                None
            }
            Slot::One(_) => None,
            Slot::Many(many) => {
                let v = many.remove(kind);
                // Back to the inline form when one entry is left.
                match many.len() {
                    0 => {
                        self.spi.remove(&spi);
                    }
                    1 => {
                        let last = many.entries().next().map(|(k, v)| One {
                            kind: k,
                            v: v.clone(),
                        });
                        if let Some(one) = last {
                            *slot = Slot::One(one);
                        }
                    }
                    _ => {}
                }
                v
            }
        }
    }

    fn get(&self, key: SadKey) -> Option<&V> {
        let (spi, kind) = (key.spi(), key.kind());
        match self.spi.get(&spi)? {
            Slot::One(one) => (one.kind == kind).then_some(&one.v),
            Slot::Many(many) => many.get(kind),
        }
    }

    #[inline]
    fn lookup(&self, spi: u32, dst: Addr, src: Addr) -> Option<&V> {
        match self.spi.get(&spi)? {
            // The only entry of this SPI: it is the longest match if it matches at all.
            Slot::One(one) => {
                let hit = match &one.kind {
                    Kind::Spi => true,
                    Kind::Dst(d) => *d == dst,
                    Kind::DstSrc(d, s) => *d == dst && *s == src,
                };
                hit.then_some(&one.v)
            }
            Slot::Many(many) => many.lookup(dst, src),
        }
    }

    fn len(&self) -> usize {
        self.spi
            .values()
            .map(|s| match s {
                Slot::One(_) => 1,
                Slot::Many(m) => m.len(),
            })
            .sum()
    }

    fn keys(&self, out: &mut Vec<SadKey>) {
        for (spi, slot) in &self.spi {
            match slot {
                Slot::One(one) => out.push(one.kind.key(*spi)),
                Slot::Many(m) => out.extend(m.entries().map(|(k, _)| k.key(*spi))),
            }
        }
    }
}

struct Shard<V> {
    snap: ArcSwap<ShardMaps<V>>,
    /// Serializes writers of this shard; readers never touch it.
    write: Mutex<()>,
}

/// Default shard count: at 1M SAs a single install copies ~1000 entries.
pub const DEFAULT_SHARDS: usize = 1024;

/// The SAD, generic over the stored value (the engine stores `Arc<Sa>`).
pub struct Sad<V> {
    shards: Box<[Shard<V>]>,
    /// `shards.len() - 1` (a power of two).
    mask: u32,
    hasher: Hasher,
}

impl<V> std::fmt::Debug for Sad<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sad")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl<V: Clone> Default for Sad<V> {
    fn default() -> Self {
        Self::with_shards(DEFAULT_SHARDS)
    }
}

impl<V: Clone> Sad<V> {
    /// A SAD with `shards` shards (rounded up to a power of two, at least 1).
    pub fn with_shards(shards: usize) -> Self {
        let n = shards.clamp(1, 1 << 20).next_power_of_two();
        let hasher = Hasher::default();
        let shards = (0..n)
            .map(|_| Shard {
                snap: ArcSwap::from_pointee(ShardMaps::empty(&hasher)),
                write: Mutex::new(()),
            })
            .collect();
        Self {
            shards,
            mask: (n - 1) as u32,
            hasher,
        }
    }

    fn shard_index(&self, spi: u32) -> usize {
        // SPIs may be sequential (GCKS counters) or random: mix before masking.
        let h = self.hasher.hash_one(spi);
        (h as u32 & self.mask) as usize
    }

    fn shard(&self, spi: u32) -> Option<&Shard<V>> {
        self.shards.get(self.shard_index(spi))
    }

    /// Runs `f` on a private copy of the shard holding `spi`, then publishes the copy.
    fn edit<R>(&self, spi: u32, f: impl FnOnce(&mut ShardMaps<V>) -> R) -> Option<R> {
        let shard = self.shard(spi)?;
        let _w = shard.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut copy = shard.snap.load().deep_clone();
        let r = f(&mut copy);
        shard.snap.store(Arc::new(copy));
        Some(r)
    }

    /// Adds an entry. Fails if the exact key is taken.
    pub fn insert(&self, key: SadKey, v: V) -> Result<(), SadError> {
        self.edit(key.spi(), |m| m.insert(key, v))
            .unwrap_or(Err(SadError::Exists))
    }

    /// Adds many entries, copying each touched shard once. Entries whose key is taken are
    /// returned.
    pub fn insert_batch(&self, entries: impl IntoIterator<Item = (SadKey, V)>) -> Vec<SadKey> {
        let mut by_shard: HashMap<usize, Vec<(SadKey, V)>, Hasher> =
            HashMap::with_hasher(self.hasher.clone());
        for (k, v) in entries {
            by_shard
                .entry(self.shard_index(k.spi()))
                .or_default()
                .push((k, v));
        }
        let mut failed = Vec::new();
        for (i, list) in by_shard {
            let Some(shard) = self.shards.get(i) else {
                failed.extend(list.into_iter().map(|(k, _)| k));
                continue;
            };
            let _w = shard.write.lock().unwrap_or_else(|e| e.into_inner());
            let mut copy = shard.snap.load().deep_clone();
            for (k, v) in list {
                if copy.insert(k, v).is_err() {
                    failed.push(k);
                }
            }
            shard.snap.store(Arc::new(copy));
        }
        failed
    }

    /// Removes the entry with exactly this key.
    pub fn remove(&self, key: SadKey) -> Option<V> {
        self.edit(key.spi(), |m| m.remove(key)).flatten()
    }

    /// Removes the entry with exactly this key if `pred` holds for it (e.g. it is still the
    /// same SA and not a newer one installed under the same key).
    pub fn remove_if(&self, key: SadKey, pred: impl FnOnce(&V) -> bool) -> Option<V> {
        let shard = self.shard(key.spi())?;
        let _w = shard.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = shard.snap.load();
        let found = cur.get(key);
        if !found.is_some_and(pred) {
            return None;
        }
        let mut copy = cur.deep_clone();
        let removed = copy.remove(key);
        shard.snap.store(Arc::new(copy));
        removed
    }

    /// RFC 4301 4.1 longest-match lookup; `f` runs on the entry while the shard snapshot is
    /// held (no reference-count traffic on the hot path).
    #[inline]
    pub fn lookup_with<R>(
        &self,
        spi: u32,
        dst: IpAddr,
        src: IpAddr,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R> {
        let shard = self.shard(spi)?;
        let snap = shard.snap.load();
        snap.lookup(spi, Addr::from(dst), Addr::from(src)).map(f)
    }

    /// A reader for one worker thread: same lookups, but each shard snapshot is cached
    /// (`arc_swap::Cache`: one relaxed load to see whether it changed) instead of taking an
    /// `ArcSwap` guard per lookup. Never stale: a changed shard is reloaded on its next use.
    pub fn reader(&self) -> SadReader<'_, V> {
        SadReader {
            sad: self,
            caches: self
                .shards
                .iter()
                .map(|s| arc_swap::Cache::new(&s.snap))
                .collect(),
        }
    }

    /// RFC 4301 4.1 longest-match lookup, returning a clone of the entry.
    pub fn lookup(&self, spi: u32, dst: IpAddr, src: IpAddr) -> Option<V> {
        self.lookup_with(spi, dst, src, V::clone)
    }

    /// The entry stored under exactly this key.
    pub fn get(&self, key: SadKey) -> Option<V> {
        self.shard(key.spi())?.snap.load().get(key).cloned()
    }

    /// Number of entries (walks every shard; for status, not the data path).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.snap.load().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key (for status and tests; walks every shard).
    pub fn keys(&self) -> Vec<SadKey> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            s.snap.load().keys(&mut out);
        }
        out
    }
}

type ShardCache<'a, V> = arc_swap::Cache<&'a ArcSwap<ShardMaps<V>>, Arc<ShardMaps<V>>>;

/// Per-worker cached view of a [`Sad`] (see [`Sad::reader`]).
pub struct SadReader<'a, V> {
    sad: &'a Sad<V>,
    caches: Box<[ShardCache<'a, V>]>,
}

impl<V> std::fmt::Debug for SadReader<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SadReader").finish_non_exhaustive()
    }
}

impl<V: Clone> SadReader<'_, V> {
    /// RFC 4301 4.1 longest-match lookup, as [`Sad::lookup_with`].
    #[inline]
    pub fn lookup_with<R>(
        &mut self,
        spi: u32,
        dst: IpAddr,
        src: IpAddr,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R> {
        let i = self.sad.shard_index(spi);
        let snap = self.caches.get_mut(i)?.load();
        snap.lookup(spi, Addr::from(dst), Addr::from(src)).map(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_match_wins() {
        let sad: Sad<&str> = Sad::with_shards(4);
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
        let sad: Sad<u32> = Sad::with_shards(1);
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
    fn cached_reader_sees_every_change() {
        let sad: Sad<u32> = Sad::with_shards(4);
        let g = a("239.1.1.1");
        let mut r = sad.reader();
        assert_eq!(r.lookup_with(1, g, g, |v| *v), None);
        sad.insert(SadKey::SpiDst { spi: 1, dst: g }, 10).unwrap();
        assert_eq!(r.lookup_with(1, g, g, |v| *v), Some(10));
        sad.insert(
            SadKey::SpiDstSrc {
                spi: 1,
                dst: g,
                src: g,
            },
            11,
        )
        .unwrap();
        assert_eq!(r.lookup_with(1, g, g, |v| *v), Some(11));
        sad.remove(SadKey::SpiDstSrc {
            spi: 1,
            dst: g,
            src: g,
        });
        sad.remove(SadKey::SpiDst { spi: 1, dst: g });
        assert_eq!(r.lookup_with(1, g, g, |v| *v), None);
    }

    #[test]
    fn duplicates_refused_and_batch_reports_them() {
        let sad: Sad<u32> = Sad::with_shards(8);
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
        let sad: Arc<Sad<u32>> = Arc::new(Sad::with_shards(2));
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
            let sad: Sad<SadKey> = Sad::with_shards(2);
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
