//! The Security Association Database for inbound ESP (RFC 4301 4.1, 4.4.2; RFC 5374 4.1.2,
//! 5.2 item 3aa).
//!
//! Each entry says whether it is found by SPI alone, by SPI + destination, or by SPI +
//! destination + source. Lookup returns the *longest* match, in the order RFC 4301 4.1 gives:
//! (1) SPI + destination + source, (2) SPI + destination, (3) SPI. Group SPIs are chosen by
//! the GCKS and may collide with unicast SPIs; the longest match keeps them apart.
//!
//! Layout: one hash index per key length, searched in that order; an index that is empty is
//! skipped (a relaxed counter load), so a host with only group SAs keyed by SPI +
//! destination does one probe per packet. Misses on the longer indexes touch only their
//! metadata and do not depend on each other.
//!
//! Concurrency: each index is an `scc::HashIndex`. Readers (`peek_with`) take no lock and
//! never wait: they run under an epoch guard. Entries are only ever inserted and removed,
//! never replaced, so a reader looking for an entry that stays installed always finds it
//! while other entries with the same SPI come and go; a concurrent install or removal of a
//! longer entry is seen either before or after. Writers lock one bucket; an install is O(1)
//! whatever the size of the table (no snapshot copy), which matters at 1M SAs.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use scc::HashIndex;

type Hasher = foldhash::fast::RandomState;

/// A canonical address key: IPv4 as its IPv4-mapped IPv6 form, as 16 octets. An IPv6 packet
/// addressed to `::ffff:a.b.c.d` thus matches the entry for `a.b.c.d`; such addresses never
/// appear in outer IPv6 headers (RFC 4291 2.5.5.2 reserves them for IPv4-only nodes).
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
}

/// SAD errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SadError {
    #[error("an entry with this key already exists")]
    Exists,
}

/// The SAD, generic over the stored value (the engine stores `Arc<Sa>`).
pub struct Sad<V: 'static> {
    by_dst_src: HashIndex<(u32, Addr, Addr), V, Hasher>,
    by_dst: HashIndex<(u32, Addr), V, Hasher>,
    by_spi: HashIndex<u32, V, Hasher>,
    /// Entries per index (the first two let lookups skip empty indexes).
    n_dst_src: AtomicUsize,
    n_dst: AtomicUsize,
    n_spi: AtomicUsize,
}

impl<V: 'static> std::fmt::Debug for Sad<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sad")
            .field("spi_dst_src", &self.n_dst_src.load(Ordering::Relaxed))
            .field("spi_dst", &self.n_dst.load(Ordering::Relaxed))
            .field("spi", &self.n_spi.load(Ordering::Relaxed))
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
        Self {
            by_dst_src: HashIndex::with_hasher(Hasher::default()),
            by_dst: HashIndex::with_hasher(Hasher::default()),
            by_spi: HashIndex::with_hasher(Hasher::default()),
            n_dst_src: AtomicUsize::new(0),
            n_dst: AtomicUsize::new(0),
            n_spi: AtomicUsize::new(0),
        }
    }

    /// Adds an entry. Fails if the exact key is taken.
    pub fn insert(&self, key: SadKey, v: V) -> Result<(), SadError> {
        let (ok, counter) = match key {
            SadKey::Spi(spi) => (self.by_spi.insert_sync(spi, v).is_ok(), &self.n_spi),
            SadKey::SpiDst { spi, dst } => (
                self.by_dst.insert_sync((spi, dst.into()), v).is_ok(),
                &self.n_dst,
            ),
            SadKey::SpiDstSrc { spi, dst, src } => (
                self.by_dst_src
                    .insert_sync((spi, dst.into(), src.into()), v)
                    .is_ok(),
                &self.n_dst_src,
            ),
        };
        if !ok {
            return Err(SadError::Exists);
        }
        counter.fetch_add(1, Ordering::Release);
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
        let mut removed = None;
        let take = |v: &V| {
            let yes = pred(v);
            if yes {
                removed = Some(v.clone());
            }
            yes
        };
        let (done, counter) = match key {
            SadKey::Spi(spi) => (self.by_spi.remove_if_sync(&spi, take), &self.n_spi),
            SadKey::SpiDst { spi, dst } => (
                self.by_dst.remove_if_sync(&(spi, Addr::from(dst)), take),
                &self.n_dst,
            ),
            SadKey::SpiDstSrc { spi, dst, src } => (
                self.by_dst_src
                    .remove_if_sync(&(spi, Addr::from(dst), Addr::from(src)), take),
                &self.n_dst_src,
            ),
        };
        if done {
            counter.fetch_sub(1, Ordering::Release);
            removed
        } else {
            None
        }
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
        let mut f = Some(f);
        let mut call = |v: &V| f.take().map(|f| f(v));
        if self.n_dst_src.load(Ordering::Acquire) > 0
            && let Some(r) = self.by_dst_src.peek_with(&(spi, dst, src), |_, v| call(v))
        {
            return r;
        }
        if self.n_dst.load(Ordering::Acquire) > 0
            && let Some(r) = self.by_dst.peek_with(&(spi, dst), |_, v| call(v))
        {
            return r;
        }
        self.by_spi.peek_with(&spi, |_, v| call(v)).flatten()
    }

    /// RFC 4301 4.1 longest-match lookup, returning a clone of the entry.
    pub fn lookup(&self, spi: u32, dst: IpAddr, src: IpAddr) -> Option<V> {
        self.lookup_with(spi, dst, src, V::clone)
    }

    /// The entry stored under exactly this key.
    pub fn get(&self, key: SadKey) -> Option<V> {
        match key {
            SadKey::Spi(spi) => self.by_spi.peek_with(&spi, |_, v| v.clone()),
            SadKey::SpiDst { spi, dst } => self
                .by_dst
                .peek_with(&(spi, Addr::from(dst)), |_, v| v.clone()),
            SadKey::SpiDstSrc { spi, dst, src } => self
                .by_dst_src
                .peek_with(&(spi, Addr::from(dst), Addr::from(src)), |_, v| v.clone()),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.n_spi.load(Ordering::Relaxed)
            + self.n_dst.load(Ordering::Relaxed)
            + self.n_dst_src.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key (for status and tests; walks the whole SAD).
    pub fn keys(&self) -> Vec<SadKey> {
        let mut out = Vec::new();
        self.by_spi.iter_sync(|spi, _| {
            out.push(SadKey::Spi(*spi));
            true
        });
        self.by_dst.iter_sync(|(spi, d), _| {
            out.push(SadKey::SpiDst {
                spi: *spi,
                dst: d.ip(),
            });
            true
        });
        self.by_dst_src.iter_sync(|(spi, d, s), _| {
            out.push(SadKey::SpiDstSrc {
                spi: *spi,
                dst: d.ip(),
                src: s.ip(),
            });
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
