//! Moving a KD payload from one default KWK to another.
//!
//! Every IKE SA has its own GSK_w (RFC 9838 3.1.1). A GSA_INBAND_REKEY built for an IKE SA
//! that a rekey (RFC 7296 2.18) replaces before the message leaves travels on the new SA,
//! whose GSK_w the member unwraps with: its keys are wrapped again here.

use crate::crypto::{CryptoError, KeyWrapKey, SecretBytes};
use crate::wire::kd::{KdPayload, KeyBag, WrappedKey};

/// Unwraps every key of `kd` wrapped with the default KWK (KWK ID 0, RFC 9838 4.5.4) under
/// `from` and wraps it under `to`. Keys wrapped with other KWKs (a key tree's, 3.3) are
/// left as they are. On error `kd` may be partly rewrapped: drop it.
pub fn rewrap_default_kwk(
    kd: &mut KdPayload,
    from: &KeyWrapKey,
    to: &KeyWrapKey,
) -> Result<(), CryptoError> {
    let rewrap = |k: &mut WrappedKey| -> Result<(), CryptoError> {
        if k.kwk_id == 0 {
            let plain: SecretBytes = from.unwrap(&k.encrypted)?;
            k.encrypted = to.wrap(plain.as_bytes())?;
        }
        Ok(())
    };
    for bag in &mut kd.bags {
        match bag {
            KeyBag::Group(g) => g.sa_keys.iter_mut().try_for_each(rewrap)?,
            KeyBag::Member(m) => m.wrap_keys.iter_mut().try_for_each(rewrap)?,
        }
    }
    Ok(())
}
