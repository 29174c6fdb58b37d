//! Key trees for forward access control (RFC 9838 3.2, 3.3, Appendix A).
//!
//! The GCKS holds a tree of key wrap keys ([`LkhKey`]); each member holds the keys on the
//! path from its leaf to the root, its Working Key Path ([`KeyPath`], root first: `1->3->7`
//! in Appendix A.2). Keys travel in WRAP_KEY attributes (RFC 9838 4.5.3.1) wrapped under a
//! key the member already has; the Rekey SA keying material travels in one or more SA_KEY
//! attributes wrapped under any key of the tree or the default KWK (4.5.2.1).
//!
//! The member does not know the tree's shape (RFC 9838 3.3): it unwraps whatever WRAP_KEY
//! it can reach from its keys, finds an SA_KEY it can open, and replaces the start of its
//! Working Key Path with the new keys on the way (3.3, the three bullets).
//!
//! Readings (docs/interop.md):
//! - A WRAP_KEY key uses "the Key Wrap Algorithm transform for the SA the WRAP_KEY
//!   attributes was sent in" (4.5.3.1): the IKE SA's KWA at registration, the Rekey SA's
//!   in GSA_REKEY. With the KW_5649 family the key size names the algorithm, so the GCKS
//!   side derives it from the key length.
//! - Key IDs name keys: a new key of the tree gets a new ID (Appendix A.4: 2 becomes 15).
//!   A WRAP_KEY whose Key ID the member already holds is not unwrapped again.

use std::collections::HashMap;

use crate::crypto::{CryptoError, KeyWrapAlg, KeyWrapKey, SecretBytes};
use crate::wire::kd::WrappedKey;

/// Longest chain of WRAP_KEYs followed from an SA_KEY (bounded work); LKH trees are
/// logarithmic in the group size.
pub const MAX_KEY_PATH_DEPTH: usize = 32;

/// A key of the GCKS's key tree: its Key ID (never zero, RFC 9838 4.5.3.1) and its bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LkhKey {
    pub id: u32,
    pub key: SecretBytes,
}

impl LkhKey {
    pub fn new(id: u32, key: SecretBytes) -> Self {
        Self { id, key }
    }

    /// The key wrap algorithm of this key, named by its size (16, 24, 32 octets:
    /// KW_5649_128/192/256).
    pub fn alg(&self) -> Result<KeyWrapAlg, CryptoError> {
        match self.key.len() {
            16 => Ok(KeyWrapAlg::Kw5649_128),
            24 => Ok(KeyWrapAlg::Kw5649_192),
            32 => Ok(KeyWrapAlg::Kw5649_256),
            len => Err(CryptoError::InvalidKeyLength {
                what: "key tree key",
                len,
            }),
        }
    }

    /// The key as a KWK.
    pub fn kwk(&self) -> Result<KeyWrapKey, CryptoError> {
        KeyWrapKey::new(self.alg()?, self.key.as_bytes())
    }
}

/// One key of a member's Working Key Path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathKey {
    id: u32,
    alg: KeyWrapAlg,
    key: SecretBytes,
}

impl PathKey {
    fn kwk(&self) -> Result<KeyWrapKey, CryptoError> {
        KeyWrapKey::new(self.alg, self.key.as_bytes())
    }
}

/// A member's Working Key Path (RFC 9838 3.3), root first. Empty when the GCKS uses no
/// key tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath {
    keys: Vec<PathKey>,
}

/// Why no SA key could be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPathError {
    /// No SA_KEY is wrapped under a key we hold or can unwrap: the member is excluded
    /// (RFC 9838 3.3, A.4).
    #[error("no SA_KEY reachable from the Working Key Path (excluded from the group)")]
    Unreachable,
    /// A reachable key did not unwrap (wrong key or altered data).
    #[error("key unwrap failed: {0}")]
    Unwrap(CryptoError),
    /// A WRAP_KEY of a size its key wrap algorithm does not use (RFC 9838 4.5.3.1).
    #[error("WRAP_KEY {id} of {len} octets for a {alg:?} key")]
    WrapKeySize {
        id: u32,
        len: usize,
        alg: KeyWrapAlg,
    },
    /// Two SA_KEY attributes we can open carry different keying material (RFC 9838 3.3:
    /// all of them MUST carry the same material under different KWKs).
    #[error("SA_KEY attributes under KWK {0} and KWK {1} carry different keys (RFC 9838 3.3)")]
    SaKeysDiffer(u32, u32),
}

impl KeyPath {
    /// An empty path.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Key IDs, root first.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    fn position(&self, id: u32) -> Option<usize> {
        self.keys.iter().position(|k| k.id == id)
    }

    /// Unwraps the keying material of one of `sa_keys` (all carry the same material,
    /// RFC 9838 3.3) using `default` for KWK ID 0, this path, and the `wrap_keys` of the
    /// same message (whose keys use `new_key_alg`, the KWA of the SA they were sent in).
    /// Returns the keying material and the updated Working Key Path (RFC 9838 3.3):
    /// unchanged when no new key was used; the new keys alone when they end at the default
    /// KWK; otherwise the new keys followed by the rest of the path from the key that
    /// opened the last of them.
    pub fn unwrap_sa_key(
        &self,
        default: &KeyWrapKey,
        new_key_alg: KeyWrapAlg,
        wrap_keys: &[WrappedKey],
        sa_keys: &[WrappedKey],
    ) -> Result<(SecretBytes, KeyPath), KeyPathError> {
        // Fast path: the SA key under the default KWK (Appendix A.3) needs no tree.
        if let Some(k) = sa_keys.iter().find(|k| k.kwk_id == 0) {
            let km = default.unwrap(&k.encrypted).map_err(KeyPathError::Unwrap)?;
            self.check_same_material(default, &HashMap::new(), sa_keys, k.kwk_id, &km)?;
            return Ok((km, self.clone()));
        }
        // New keys reachable from what we hold: id -> (key, id of the key that opened it).
        // Every WRAP_KEY is unwrapped at most once; each pass adds at least one or stops.
        let mut new: HashMap<u32, (PathKey, u32)> = HashMap::new();
        let known = |id: u32, new: &HashMap<u32, (PathKey, u32)>| {
            id == 0 || self.position(id).is_some() || new.contains_key(&id)
        };
        loop {
            let mut progress = false;
            for w in wrap_keys {
                if w.key_id == 0 || known(w.key_id, &new) || !known(w.kwk_id, &new) {
                    continue;
                }
                let kwk = self.kwk_for(w.kwk_id, &new)?;
                let bits = match kwk.as_ref().unwrap_or(default).unwrap(&w.encrypted) {
                    Ok(b) => b,
                    // Not ours to open after all; another WRAP_KEY may serve.
                    Err(_) => continue,
                };
                if bits.len() != new_key_alg.key_len() {
                    return Err(KeyPathError::WrapKeySize {
                        id: w.key_id,
                        len: bits.len(),
                        alg: new_key_alg,
                    });
                }
                let key = PathKey {
                    id: w.key_id,
                    alg: new_key_alg,
                    key: bits,
                };
                new.insert(w.key_id, (key, w.kwk_id));
                progress = true;
            }
            if !progress {
                break;
            }
        }
        let sa_key = sa_keys
            .iter()
            .find(|k| known(k.kwk_id, &new))
            .ok_or(KeyPathError::Unreachable)?;
        let kwk = self.kwk_for(sa_key.kwk_id, &new)?;
        let km = kwk
            .as_ref()
            .unwrap_or(default)
            .unwrap(&sa_key.encrypted)
            .map_err(KeyPathError::Unwrap)?;
        self.check_same_material(default, &new, sa_keys, sa_key.kwk_id, &km)?;

        // The new Key Path: from the key that opened the SA key down to a key we held.
        let mut chain = Vec::new();
        let mut at = sa_key.kwk_id;
        while let Some((k, parent)) = new.get(&at) {
            if chain.len() == MAX_KEY_PATH_DEPTH {
                return Err(KeyPathError::Unreachable);
            }
            chain.push(k.clone());
            at = *parent;
        }
        let path = if chain.is_empty() {
            self.clone()
        } else if at == 0 {
            KeyPath { keys: chain }
        } else {
            let from = self.position(at).unwrap_or(self.keys.len());
            chain.extend(self.keys[from..].iter().cloned());
            KeyPath { keys: chain }
        };
        Ok((km, path))
    }

    /// RFC 9838 3.3: every other SA_KEY under a key we hold (or just unwrapped) must
    /// carry `km`, the material opened under KWK `used`; one that does not, or does not
    /// open, means the message was built wrongly or altered.
    fn check_same_material(
        &self,
        default: &KeyWrapKey,
        new: &HashMap<u32, (PathKey, u32)>,
        sa_keys: &[WrappedKey],
        used: u32,
        km: &SecretBytes,
    ) -> Result<(), KeyPathError> {
        for other in sa_keys {
            let ours = other.kwk_id == 0
                || self.position(other.kwk_id).is_some()
                || new.contains_key(&other.kwk_id);
            if !ours {
                continue;
            }
            let kwk = self.kwk_for(other.kwk_id, new)?;
            let bits = kwk
                .as_ref()
                .unwrap_or(default)
                .unwrap(&other.encrypted)
                .map_err(KeyPathError::Unwrap)?;
            if bits.as_bytes() != km.as_bytes() {
                return Err(KeyPathError::SaKeysDiffer(used, other.kwk_id));
            }
        }
        Ok(())
    }

    /// The KWK for a non-zero ID (`None` for 0: the default KWK).
    fn kwk_for(
        &self,
        id: u32,
        new: &HashMap<u32, (PathKey, u32)>,
    ) -> Result<Option<KeyWrapKey>, KeyPathError> {
        if id == 0 {
            return Ok(None);
        }
        let k = new
            .get(&id)
            .map(|(k, _)| k)
            .or_else(|| self.keys.iter().find(|k| k.id == id))
            .ok_or(KeyPathError::Unreachable)?;
        k.kwk().map(Some).map_err(KeyPathError::Unwrap)
    }
}

/// The WRAP_KEY attributes that give a new member the keys of its path (RFC 9838 3.3,
/// Appendix A.2, Figure 23): `path` is root first; the leaf goes under the default KWK
/// (KWK ID 0), every other key under the key below it. Returns them leaf first.
pub fn wrap_path(path: &[LkhKey], default: &KeyWrapKey) -> Result<Vec<WrappedKey>, CryptoError> {
    let mut out = Vec::with_capacity(path.len());
    let mut under: Option<&LkhKey> = None;
    for k in path.iter().rev() {
        if k.id == 0 {
            return Err(CryptoError::InvalidKeyLength {
                what: "key tree key with Key ID 0",
                len: k.key.len(),
            });
        }
        out.push(wrap_under(k, under, default)?);
        under = Some(k);
    }
    Ok(out)
}

/// `key` wrapped under `under`, or under the default KWK (KWK ID 0).
pub fn wrap_under(
    key: &LkhKey,
    under: Option<&LkhKey>,
    default: &KeyWrapKey,
) -> Result<WrappedKey, CryptoError> {
    key.alg()?;
    match under {
        None => Ok(WrappedKey::new(
            key.id,
            0,
            default.wrap(key.key.as_bytes())?,
        )),
        Some(u) => Ok(WrappedKey::new(
            key.id,
            u.id,
            u.kwk()?.wrap(key.key.as_bytes())?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> LkhKey {
        LkhKey::new(id, SecretBytes::from_slice(&[id as u8; 32]))
    }

    fn default() -> KeyWrapKey {
        KeyWrapKey::new(KeyWrapAlg::Kw5649_256, &[0xd0; 32]).unwrap()
    }

    fn sa_key_under(k: &LkhKey, km: &[u8]) -> WrappedKey {
        WrappedKey::new(0, k.id, k.kwk().unwrap().wrap(km).unwrap())
    }

    /// RFC 9838 A.2 (Figure 23) then A.4 (Figure 26) for members A, E, F and G.
    #[test]
    fn appendix_a_registration_and_exclusion() {
        let alg = KeyWrapAlg::Kw5649_256;
        let d = default();
        let register = |leaf: u32, mid: u32, top: u32| {
            let path = [key(top), key(mid), key(leaf)];
            let wraps = wrap_path(&path, &d).unwrap();
            let sa = sa_key_under(&key(top), b"K_sa1 keying material");
            let (km, p) = KeyPath::new()
                .unwrap_sa_key(&d, alg, &wraps, &[sa])
                .unwrap();
            assert_eq!(km.as_bytes(), b"K_sa1 keying material");
            assert_eq!(p.ids(), vec![top, mid, leaf]);
            p
        };
        let a = register(7, 3, 1);
        let e = register(11, 5, 2);
        let f = register(12, 5, 2);
        let g = register(13, 6, 2);

        // Exclude F: 2 -> 15, 5 -> 16; KD(GP(SA3)(1{K_sa3},15{K_sa3}),MP(6{15},16{15},11{16})).
        let k15 = key(15);
        let k16 = key(16);
        let wraps = vec![
            wrap_under(&k15, Some(&key(6)), &d).unwrap(),
            wrap_under(&k15, Some(&k16), &d).unwrap(),
            wrap_under(&k16, Some(&key(11)), &d).unwrap(),
        ];
        let sa = vec![
            sa_key_under(&key(1), b"K_sa3"),
            sa_key_under(&k15, b"K_sa3"),
        ];
        let rekey_default = KeyWrapKey::new(alg, &[0xe0; 32]).unwrap();
        let run = |p: &KeyPath| p.unwrap_sa_key(&rekey_default, alg, &wraps, &sa);

        let (km, pa) = run(&a).unwrap();
        assert_eq!(km.as_bytes(), b"K_sa3");
        assert_eq!(pa.ids(), vec![1, 3, 7]);
        let (_, pe) = run(&e).unwrap();
        assert_eq!(pe.ids(), vec![15, 16, 11]);
        let (_, pg) = run(&g).unwrap();
        assert_eq!(pg.ids(), vec![15, 6, 13]);
        assert_eq!(run(&f), Err(KeyPathError::Unreachable));
    }

    /// RFC 9838 3.3 (R056): every SA_KEY carries the same material; one under another
    /// key the member holds that differs is refused, wherever the first one was found.
    #[test]
    fn sa_keys_under_different_kwks_must_carry_the_same_material() {
        let alg = KeyWrapAlg::Kw5649_256;
        let d = default();
        let path = [key(1), key(2), key(3)];
        let wraps = wrap_path(&path, &d).unwrap();
        let (_, held) = KeyPath::new()
            .unwrap_sa_key(&d, alg, &wraps, &[sa_key_under(&key(1), b"k0")])
            .unwrap();
        // The same material under the root and the leaf, and under a key of another
        // member (not ours: not checked, not needed).
        let same = [
            sa_key_under(&key(1), b"k1"),
            sa_key_under(&key(3), b"k1"),
            sa_key_under(&key(9), b"other"),
        ];
        let (km, _) = held.unwrap_sa_key(&d, alg, &[], &same).unwrap();
        assert_eq!(km.as_bytes(), b"k1");
        let differ = [sa_key_under(&key(1), b"k1"), sa_key_under(&key(3), b"k2")];
        assert_eq!(
            held.unwrap_sa_key(&d, alg, &[], &differ).unwrap_err(),
            KeyPathError::SaKeysDiffer(1, 3)
        );
        // The default-KWK fast path checks the others too.
        let under_default = WrappedKey::new(0, 0, d.wrap(b"k1").unwrap());
        let differ = [under_default, sa_key_under(&key(2), b"k2")];
        assert_eq!(
            held.unwrap_sa_key(&d, alg, &[], &differ).unwrap_err(),
            KeyPathError::SaKeysDiffer(0, 2)
        );
    }

    #[test]
    fn default_kwk_needs_no_tree_and_bad_sizes_are_refused() {
        let d = default();
        let sa = WrappedKey::new(0, 0, d.wrap(b"km").unwrap());
        let (km, p) = KeyPath::new()
            .unwrap_sa_key(&d, KeyWrapAlg::Kw5649_256, &[], &[sa])
            .unwrap();
        assert_eq!(km.as_bytes(), b"km");
        assert!(p.is_empty());

        // A 16-octet WRAP_KEY where the SA's algorithm needs 32 (RFC 9838 4.5.3.1).
        let short = LkhKey::new(5, SecretBytes::from_slice(&[5; 16]));
        let w = wrap_under(&short, None, &d).unwrap();
        let sa = sa_key_under(&short, b"km");
        assert!(matches!(
            KeyPath::new().unwrap_sa_key(&d, KeyWrapAlg::Kw5649_256, &[w], &[sa]),
            Err(KeyPathError::WrapKeySize { id: 5, .. })
        ));
        assert!(
            LkhKey::new(1, SecretBytes::from_slice(&[0; 20]))
                .alg()
                .is_err()
        );
    }
}
