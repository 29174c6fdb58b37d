//! Randomness as an argument (STYLE Q3): the [`Random`] trait, the OS-backed
//! [`SystemRandom`] and the deterministic [`SeededRandom`] for tests.

use ring::digest;
use ring::rand::SecureRandom as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A source of random bytes, passed into every operation that needs one.
///
/// Implementations used outside tests must be cryptographically secure: SPIs, nonces, IVs
/// and key material are drawn from here.
pub trait Random {
    /// Fills `buf` entirely with random bytes.
    fn fill(&mut self, buf: &mut [u8]);

    /// A random 64-bit integer.
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_be_bytes(b)
    }
}

impl<R: Random + ?Sized> Random for &mut R {
    fn fill(&mut self, buf: &mut [u8]) {
        (**self).fill(buf)
    }
}

impl<R: Random + ?Sized> Random for Box<R> {
    fn fill(&mut self, buf: &mut [u8]) {
        (**self).fill(buf)
    }
}

/// `N` random bytes.
pub fn random_array<const N: usize>(rng: &mut (impl Random + ?Sized)) -> [u8; N] {
    let mut a = [0u8; N];
    rng.fill(&mut a);
    a
}

/// The operating system's CSPRNG through ring (`getrandom(2)` on Linux).
#[derive(Clone, Debug)]
pub struct SystemRandom(ring::rand::SystemRandom);

impl SystemRandom {
    pub fn new() -> Self {
        Self(ring::rand::SystemRandom::new())
    }
}

impl Default for SystemRandom {
    fn default() -> Self {
        Self::new()
    }
}

impl Random for SystemRandom {
    /// # Panics
    /// If the OS CSPRNG fails. On Linux this needs a kernel without `getrandom(2)` and
    /// without `/dev/urandom`, which is not a supported platform: carrying on without
    /// randomness would be worse than stopping.
    fn fill(&mut self, buf: &mut [u8]) {
        #[allow(clippy::expect_used)]
        self.0
            .fill(buf)
            .expect("operating system random number generator failed");
    }
}

/// A deterministic generator for tests and simulations: block `i` is
/// `SHA-256(seed | i)` with `i` a 64-bit big-endian counter. Two instances with the same
/// seed produce the same stream, so a failing run replays bit for bit (STYLE Q3).
///
/// Not for production: anyone who knows the seed knows every output.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SeededRandom {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRandom {
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    /// A generator seeded from a small integer (the seed is its big-endian form,
    /// zero-extended).
    pub fn from_u64(seed: u64) -> Self {
        let mut s = [0u8; 32];
        s[24..].copy_from_slice(&seed.to_be_bytes());
        Self::new(s)
    }

    fn refill(&mut self) {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.seed);
        ctx.update(&self.counter.to_be_bytes());
        self.block.copy_from_slice(ctx.finish().as_ref());
        self.counter = self.counter.wrapping_add(1);
        self.used = 0;
    }
}

impl core::fmt::Debug for SeededRandom {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SeededRandom")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Random for SeededRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        let mut out = buf;
        while !out.is_empty() {
            if self.used == self.block.len() {
                self.refill();
            }
            let avail = &self.block[self.used..];
            let n = avail.len().min(out.len());
            let (head, tail) = out.split_at_mut(n);
            head.copy_from_slice(&avail[..n]);
            self.used += n;
            out = tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_deterministic_and_split_invariant() {
        let mut a = SeededRandom::from_u64(7);
        let mut b = SeededRandom::from_u64(7);
        let mut whole = [0u8; 100];
        a.fill(&mut whole);
        let mut parts = [0u8; 100];
        let (p1, rest) = parts.split_at_mut(3);
        let (p2, p3) = rest.split_at_mut(40);
        b.fill(p1);
        b.fill(p2);
        b.fill(p3);
        assert_eq!(whole, parts);
        // Block 0 is SHA-256(seed | 0).
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&SeededRandom::from_u64(7).seed);
        ctx.update(&0u64.to_be_bytes());
        assert_eq!(&whole[..32], ctx.finish().as_ref());
        assert_ne!(
            random_array::<16>(&mut SeededRandom::from_u64(8)),
            whole[..16]
        );
    }

    #[test]
    fn system_random_fills() {
        let mut r = SystemRandom::new();
        let a: [u8; 32] = random_array(&mut r);
        let b: [u8; 32] = random_array(&mut r);
        assert_ne!(a, b);
        let dynr: &mut dyn Random = &mut r;
        let _ = dynr.next_u64();
    }
}
