//! The group layer of G-IKEv2 (RFC 9838): what the GCKS hands to members and what a
//! member makes of it.
//!
//! - [`state`]: the GCKS's view of one group's keys and policy as plain typed values
//!   (Rekey SA, Data-Security SAs, group-wide policy, the rekey signing key).
//! - [`registration`]: GSA and KD payloads for a registering member (GCKS side,
//!   RFC 9838 2.3.4, 5 Tables 2 and 3) and their reading into installable keys (member
//!   side, RFC 9838 2.3.3).
//! - [`rekey`]: the one-way GSA_REKEY pseudo-exchange (RFC 9838 2.4.1): a sender that
//!   builds, signs, encrypts and fragments one message, and a reader that reassembles,
//!   decrypts, authenticates and replay-checks it (STYLE "Where we differ on purpose").
//! - [`rewrap`]: a KD moved from one IKE SA's default KWK to another's (IKE SA rekey).
//! - [`keypath`]: key trees (LKH, RFC 9838 3.2, 3.3, Appendix A): the GCKS's keys and the
//!   member's Working Key Path.
//!
//! Sans-IO like the rest of the crate: time and randomness come in as arguments.

pub mod keypath;
pub mod registration;
pub mod rekey;
pub mod rewrap;
pub mod state;

mod parse;

pub use keypath::{KeyPath, LkhKey};
pub use registration::{
    BuildContext, BuildError, GroupKeys, HeldSenderIds, MemberGrant, RegistrationError, Role,
    build_inband_rekey, build_registration, read_inband_rekey, read_registration,
};
pub use rewrap::rewrap_default_kwk;

pub use rekey::{
    LkhRekey, RekeyBuildError, RekeyContent, RekeyDrop, RekeyMessage, RekeyReader, RekeySender,
    RekeyStats, RekeyUpdate,
};
pub use state::{
    GroupAuth, GroupPolicy, GroupState, KwkTooShort, RekeySaState, RekeySuite, StateError,
    TekProtocol, TekState,
};

pub use parse::{RekeyAuth, RekeySa, Tek};

/// Length of a Rekey SA SPI: the GSA_REKEY header's SPIi | SPIr (RFC 9838 2.4.1, 4.4.2).
pub const REKEY_SPI_LEN: usize = 16;

/// A Rekey SA SPI as the 16 octets of the GSA_REKEY header (RFC 9838 4.4.2).
pub type RekeySpi = [u8; REKEY_SPI_LEN];

/// The wire form of a Rekey SA SPI (RFC 9838 4.4.2: SPIi is the first 8 octets).
pub(crate) fn rekey_spi_to_wire(spi: &RekeySpi) -> crate::wire::gsa::Spi {
    let mut i = [0u8; 8];
    let mut r = [0u8; 8];
    i.copy_from_slice(&spi[..8]);
    r.copy_from_slice(&spi[8..]);
    crate::wire::gsa::Spi::Rekey {
        spi_i: u64::from_be_bytes(i),
        spi_r: u64::from_be_bytes(r),
    }
}

/// The 16 octets of a wire Rekey SA SPI; `None` for an ESP/AH SPI.
pub(crate) fn rekey_spi_from_wire(spi: &crate::wire::gsa::Spi) -> Option<RekeySpi> {
    match spi {
        crate::wire::gsa::Spi::Rekey { spi_i, spi_r } => {
            let mut s = [0u8; REKEY_SPI_LEN];
            s[..8].copy_from_slice(&spi_i.to_be_bytes());
            s[8..].copy_from_slice(&spi_r.to_be_bytes());
            Some(s)
        }
        crate::wire::gsa::Spi::Ipsec(_) => None,
    }
}
