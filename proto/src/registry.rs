//! Every IANA registry the project uses, each a typed enum with an explicit `Unknown` arm
//! (DESIGN.md "Rules that hold everywhere"). Values come from `specs/IANA.md`, which
//! supplies the numbers the G-IKEv2 text leaves as `<TBA>`.
//!
//! One macro builds each registry (STYLE R2): conversion from and to the wire integer,
//! `Codec`, and a `Debug`/`Display` that prints the IANA name or the number.
//! Equality and hashing go through the wire value, so `Unknown(33)` equals
//! `PayloadType::Sa`: an unknown arm never shadows a named one.

use crate::codec::{Codec, Reader};
use crate::error::DecodeError;

macro_rules! registry {
    (
        $(#[$meta:meta])*
        $name:ident: $repr:ident {
            $( $(#[$vmeta:meta])* $var:ident = $val:literal => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy)]
        pub enum $name {
            $( $(#[$vmeta])* $var, )*
            /// A value this implementation has no name for; round-trips unchanged.
            Unknown($repr),
        }

        impl $name {
            /// The wire value.
            pub const fn value(self) -> $repr {
                match self {
                    $( Self::$var => $val, )*
                    Self::Unknown(v) => v,
                }
            }

            /// The typed value for a wire integer (never fails).
            pub const fn from_value(v: $repr) -> Self {
                match v {
                    $( $val => Self::$var, )*
                    other => Self::Unknown(other),
                }
            }

            /// The IANA name, if this value has one here.
            pub const fn name(self) -> Option<&'static str> {
                match Self::from_value(self.value()) {
                    $( Self::$var => Some($text), )*
                    Self::Unknown(_) => None,
                }
            }

            /// True when the value is one this implementation names.
            pub const fn is_known(self) -> bool {
                self.name().is_some()
            }
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                Self::from_value(v)
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> $repr {
                v.value()
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.value() == other.value()
            }
        }
        impl Eq for $name {}

        impl core::hash::Hash for $name {
            fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
                self.value().hash(state)
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> core::cmp::Ordering {
                self.value().cmp(&other.value())
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.value()),
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Debug::fmt(self, f)
            }
        }

        impl<'a> Codec<'a> for $name {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.value().to_be_bytes());
            }
            fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
                let bytes = r.take_array::<{ core::mem::size_of::<$repr>() }>(stringify!($name))?;
                Ok(Self::from_value($repr::from_be_bytes(bytes)))
            }
        }
    };
}

registry! {
    /// IKEv2 Exchange Types (RFC 7296 3.1; RFC 9838 9.3; IANA.md).
    ExchangeType: u8 {
        IkeSaInit = 34 => "IKE_SA_INIT",
        IkeAuth = 35 => "IKE_AUTH",
        CreateChildSa = 36 => "CREATE_CHILD_SA",
        Informational = 37 => "INFORMATIONAL",
        GsaAuth = 39 => "GSA_AUTH",
        GsaRegistration = 40 => "GSA_REGISTRATION",
        GsaRekey = 41 => "GSA_REKEY",
        GsaInbandRekey = 42 => "GSA_INBAND_REKEY",
        IkeIntermediate = 43 => "IKE_INTERMEDIATE",
        IkeFollowupKe = 44 => "IKE_FOLLOWUP_KE",
    }
}

registry! {
    /// IKEv2 Payload Types (RFC 7296 3.2; RFC 7383; RFC 9838 4).
    PayloadType: u8 {
        NoNext = 0 => "NO_NEXT_PAYLOAD",
        Sa = 33 => "SA",
        Ke = 34 => "KE",
        IdI = 35 => "IDi",
        IdR = 36 => "IDr",
        Cert = 37 => "CERT",
        CertReq = 38 => "CERTREQ",
        Auth = 39 => "AUTH",
        Nonce = 40 => "Ni/Nr",
        Notify = 41 => "N",
        Delete = 42 => "D",
        VendorId = 43 => "V",
        TsI = 44 => "TSi",
        TsR = 45 => "TSr",
        Sk = 46 => "SK",
        Cp = 47 => "CP",
        Eap = 48 => "EAP",
        IdG = 50 => "IDg",
        Gsa = 51 => "GSA",
        Kd = 52 => "KD",
        Skf = 53 => "SKF",
    }
}

registry! {
    /// Security Protocol Identifiers (RFC 7296 3.3.1; RFC 9838 9.3 adds GIKE_UPDATE).
    /// Zero is reserved; G-IKEv2 uses it for the group-wide policy substructure, the
    /// member key bag and "the whole group" in Delete (RFC 9838 4.4.3, 4.5.3, 4.6).
    ProtocolId: u8 {
        Reserved = 0 => "RESERVED(0)",
        Ike = 1 => "IKE",
        Ah = 2 => "AH",
        Esp = 3 => "ESP",
        GikeUpdate = 6 => "GIKE_UPDATE",
    }
}

registry! {
    /// Transform Type Values (RFC 7296 3.3.2; RFC 9370; RFC 9838 9.3).
    TransformType: u8 {
        Encr = 1 => "ENCR",
        Prf = 2 => "PRF",
        Integ = 3 => "INTEG",
        Ke = 4 => "KE",
        Sn = 5 => "SN",
        AddKe1 = 6 => "ADDKE1",
        AddKe2 = 7 => "ADDKE2",
        AddKe3 = 8 => "ADDKE3",
        AddKe4 = 9 => "ADDKE4",
        AddKe5 = 10 => "ADDKE5",
        AddKe6 = 11 => "ADDKE6",
        AddKe7 = 12 => "ADDKE7",
        Kwa = 13 => "KWA",
        GcAuth = 14 => "GCAUTH",
    }
}

registry! {
    /// Transform Type 1 - Encryption Algorithm Transform IDs (RFC 7296 3.3.2, IANA.md).
    EncrId: u16 {
        TripleDes = 3 => "ENCR_3DES",
        Null = 11 => "ENCR_NULL",
        AesCbc = 12 => "ENCR_AES_CBC",
        AesCtr = 13 => "ENCR_AES_CTR",
        AesCcm8 = 14 => "ENCR_AES_CCM_8",
        AesCcm12 = 15 => "ENCR_AES_CCM_12",
        AesCcm16 = 16 => "ENCR_AES_CCM_16",
        AesGcm8 = 18 => "ENCR_AES_GCM_8",
        AesGcm12 = 19 => "ENCR_AES_GCM_12",
        AesGcm16 = 20 => "ENCR_AES_GCM_16",
        NullAuthAesGmac = 21 => "ENCR_NULL_AUTH_AES_GMAC",
        ChaCha20Poly1305 = 28 => "ENCR_CHACHA20_POLY1305",
        AesGcm16Iiv = 30 => "ENCR_AES_GCM_16_IIV",
        ChaCha20Poly1305Iiv = 31 => "ENCR_CHACHA20_POLY1305_IIV",
    }
}

registry! {
    /// Transform Type 2 - Pseudorandom Function Transform IDs (RFC 7296 3.3.2).
    PrfId: u16 {
        HmacMd5 = 1 => "PRF_HMAC_MD5",
        HmacSha1 = 2 => "PRF_HMAC_SHA1",
        AesXcbc = 4 => "PRF_AES128_XCBC",
        HmacSha2_256 = 5 => "PRF_HMAC_SHA2_256",
        HmacSha2_384 = 6 => "PRF_HMAC_SHA2_384",
        HmacSha2_512 = 7 => "PRF_HMAC_SHA2_512",
        AesCmac = 8 => "PRF_AES128_CMAC",
    }
}

registry! {
    /// Transform Type 3 - Integrity Algorithm Transform IDs (RFC 7296 3.3.2; RFC 4868).
    IntegId: u16 {
        None = 0 => "NONE",
        HmacMd5_96 = 1 => "AUTH_HMAC_MD5_96",
        HmacSha1_96 = 2 => "AUTH_HMAC_SHA1_96",
        AesXcbc96 = 5 => "AUTH_AES_XCBC_96",
        AesCmac96 = 8 => "AUTH_AES_CMAC_96",
        AesGmac128 = 9 => "AUTH_AES_128_GMAC",
        AesGmac192 = 10 => "AUTH_AES_192_GMAC",
        AesGmac256 = 11 => "AUTH_AES_256_GMAC",
        HmacSha2_256_128 = 12 => "AUTH_HMAC_SHA2_256_128",
        HmacSha2_384_192 = 13 => "AUTH_HMAC_SHA2_384_192",
        HmacSha2_512_256 = 14 => "AUTH_HMAC_SHA2_512_256",
    }
}

registry! {
    /// Transform Type 4 - Key Exchange Method Transform IDs (RFC 7296; RFC 5903; RFC 8031;
    /// ML-KEM 35..37). Also used for ADDKE1..7 (RFC 9370).
    KeId: u16 {
        None = 0 => "NONE",
        Modp1024 = 2 => "MODP_1024",
        Modp2048 = 14 => "MODP_2048",
        Modp3072 = 15 => "MODP_3072",
        Modp4096 = 16 => "MODP_4096",
        Ecp256 = 19 => "ECP_256",
        Ecp384 = 20 => "ECP_384",
        Ecp521 = 21 => "ECP_521",
        Curve25519 = 31 => "CURVE25519",
        Curve448 = 32 => "CURVE448",
        MlKem512 = 35 => "ML_KEM_512",
        MlKem768 = 36 => "ML_KEM_768",
        MlKem1024 = 37 => "ML_KEM_1024",
    }
}

registry! {
    /// Transform Type 5 - Sequence Numbers (was ESN) Transform IDs (RFC 9838 4.4.2.1.3).
    SnId: u16 {
        Seq32 = 0 => "32-bit Sequential Numbers",
        Seq64PartiallyTransmitted = 1 => "Partially Transmitted 64-bit Sequential Numbers",
        Unspecified32 = 2 => "32-bit Unspecified Numbers",
    }
}

registry! {
    /// Transform Type 13 - Key Wrap Algorithm Transform IDs (RFC 9838 4.4.2.1.2).
    KwaId: u16 {
        Kw5649_128 = 1 => "KW_5649_128",
        Kw5649_192 = 2 => "KW_5649_192",
        Kw5649_256 = 3 => "KW_5649_256",
        KwArx = 4 => "KW_ARX",
    }
}

registry! {
    /// Transform Type 14 - Group Controller Authentication Method Transform IDs
    /// (RFC 9838 4.4.2.1.1).
    GcAuthId: u16 {
        Implicit = 1 => "Implicit",
        DigitalSignature = 2 => "Digital Signature",
    }
}

registry! {
    /// IKEv2 Transform Attribute Types (RFC 7296 3.3.5; RFC 9838 9.3).
    TransformAttrType: u16 {
        KeyLength = 14 => "Key Length",
        SignatureAlgorithmId = 18 => "Signature Algorithm Identifier",
    }
}

registry! {
    /// IKEv2 Authentication Method (RFC 7296 3.8; RFC 7427).
    AuthMethod: u8 {
        RsaSig = 1 => "RSA Digital Signature",
        SharedKeyMic = 2 => "Shared Key Message Integrity Code",
        DssSig = 3 => "DSS Digital Signature",
        EcdsaP256 = 9 => "ECDSA with SHA-256 on the P-256 curve",
        EcdsaP384 = 10 => "ECDSA with SHA-384 on the P-384 curve",
        EcdsaP521 = 11 => "ECDSA with SHA-512 on the P-521 curve",
        GenericSecurePassword = 12 => "Generic Secure Password",
        Null = 13 => "NULL Authentication",
        DigitalSignature = 14 => "Digital Signature",
    }
}

registry! {
    /// IKEv2 Identification Payload ID Types (RFC 7296 3.5), also used by IDg (RFC 9838 4.2).
    IdType: u8 {
        Ipv4Addr = 1 => "ID_IPV4_ADDR",
        Fqdn = 2 => "ID_FQDN",
        Rfc822Addr = 3 => "ID_RFC822_ADDR",
        Ipv6Addr = 5 => "ID_IPV6_ADDR",
        DerAsn1Dn = 9 => "ID_DER_ASN1_DN",
        DerAsn1Gn = 10 => "ID_DER_ASN1_GN",
        KeyId = 11 => "ID_KEY_ID",
        FcName = 12 => "ID_FC_NAME",
        Null = 13 => "ID_NULL",
    }
}

registry! {
    /// IKEv2 Certificate Encodings (RFC 7296 3.6; RFC 7670).
    CertEncoding: u8 {
        Pkcs7X509 = 1 => "PKCS #7 wrapped X.509 certificate",
        X509Signature = 4 => "X.509 Certificate - Signature",
        Crl = 7 => "Certificate Revocation List (CRL)",
        RawRsaKey = 11 => "Raw RSA Key",
        HashUrlX509Cert = 12 => "Hash and URL of X.509 certificate",
        HashUrlX509Bundle = 13 => "Hash and URL of X.509 bundle",
        RawPublicKey = 15 => "Raw Public Key",
    }
}

registry! {
    /// IKEv2 Notify Message Types (RFC 7296 3.10.1 and extensions; RFC 9838 4.7).
    NotifyType: u16 {
        UnsupportedCriticalPayload = 1 => "UNSUPPORTED_CRITICAL_PAYLOAD",
        InvalidIkeSpi = 4 => "INVALID_IKE_SPI",
        InvalidMajorVersion = 5 => "INVALID_MAJOR_VERSION",
        InvalidSyntax = 7 => "INVALID_SYNTAX",
        InvalidMessageId = 9 => "INVALID_MESSAGE_ID",
        InvalidSpi = 11 => "INVALID_SPI",
        NoProposalChosen = 14 => "NO_PROPOSAL_CHOSEN",
        InvalidKePayload = 17 => "INVALID_KE_PAYLOAD",
        AuthenticationFailed = 24 => "AUTHENTICATION_FAILED",
        SinglePairRequired = 34 => "SINGLE_PAIR_REQUIRED",
        NoAdditionalSas = 35 => "NO_ADDITIONAL_SAS",
        InternalAddressFailure = 36 => "INTERNAL_ADDRESS_FAILURE",
        FailedCpRequired = 37 => "FAILED_CP_REQUIRED",
        TsUnacceptable = 38 => "TS_UNACCEPTABLE",
        InvalidSelectors = 39 => "INVALID_SELECTORS",
        TemporaryFailure = 43 => "TEMPORARY_FAILURE",
        ChildSaNotFound = 44 => "CHILD_SA_NOT_FOUND",
        InvalidGroupId = 45 => "INVALID_GROUP_ID",
        AuthorizationFailed = 46 => "AUTHORIZATION_FAILED",
        RegistrationFailed = 49 => "REGISTRATION_FAILED",
        InitialContact = 16384 => "INITIAL_CONTACT",
        SetWindowSize = 16385 => "SET_WINDOW_SIZE",
        AdditionalTsPossible = 16386 => "ADDITIONAL_TS_POSSIBLE",
        IpcompSupported = 16387 => "IPCOMP_SUPPORTED",
        NatDetectionSourceIp = 16388 => "NAT_DETECTION_SOURCE_IP",
        NatDetectionDestinationIp = 16389 => "NAT_DETECTION_DESTINATION_IP",
        Cookie = 16390 => "COOKIE",
        UseTransportMode = 16391 => "USE_TRANSPORT_MODE",
        HttpCertLookupSupported = 16392 => "HTTP_CERT_LOOKUP_SUPPORTED",
        RekeySa = 16393 => "REKEY_SA",
        EspTfcPaddingNotSupported = 16394 => "ESP_TFC_PADDING_NOT_SUPPORTED",
        NonFirstFragmentsAlso = 16395 => "NON_FIRST_FRAGMENTS_ALSO",
        MobikeSupported = 16396 => "MOBIKE_SUPPORTED",
        ChildlessIkev2Supported = 16418 => "CHILDLESS_IKEV2_SUPPORTED",
        GroupSender = 16429 => "GROUP_SENDER",
        Ikev2FragmentationSupported = 16430 => "IKEV2_FRAGMENTATION_SUPPORTED",
        SignatureHashAlgorithms = 16431 => "SIGNATURE_HASH_ALGORITHMS",
        UsePpk = 16435 => "USE_PPK",
        PpkIdentity = 16436 => "PPK_IDENTITY",
        NoPpkAuth = 16437 => "NO_PPK_AUTH",
        IntermediateExchangeSupported = 16438 => "INTERMEDIATE_EXCHANGE_SUPPORTED",
        AdditionalKeyExchange = 16441 => "ADDITIONAL_KEY_EXCHANGE",
    }
}

impl NotifyType {
    /// Error types are 0..=16383, status types 16384 and up (RFC 7296 3.10.1).
    pub const fn is_error(self) -> bool {
        self.value() < 16384
    }
}

registry! {
    /// IKEv2 Hash Algorithms for SIGNATURE_HASH_ALGORITHMS (RFC 7427 7; RFC 8420).
    HashAlgorithm: u16 {
        Sha1 = 1 => "SHA1",
        Sha2_256 = 2 => "SHA2-256",
        Sha2_384 = 3 => "SHA2-384",
        Sha2_512 = 4 => "SHA2-512",
        Identity = 5 => "Identity",
    }
}

registry! {
    /// IKEv2 Traffic Selector Types (RFC 7296 3.13.1).
    TsType: u8 {
        Ipv4AddrRange = 7 => "TS_IPV4_ADDR_RANGE",
        Ipv6AddrRange = 8 => "TS_IPV6_ADDR_RANGE",
    }
}

registry! {
    /// GSA Attributes (RFC 9838 4.4.2.2; the registry's 4-16383 are unassigned, ERRATA.md).
    GsaAttrType: u16 {
        KeyLifetime = 1 => "GSA_KEY_LIFETIME",
        InitialMessageId = 2 => "GSA_INITIAL_MESSAGE_ID",
        NextSpi = 3 => "GSA_NEXT_SPI",
    }
}

registry! {
    /// Group-wide Policy Attributes (RFC 9838 4.4.3.1).
    GwpAttrType: u16 {
        Atd = 1 => "GWP_ATD",
        Dtd = 2 => "GWP_DTD",
        SenderIdBits = 3 => "GWP_SENDER_ID_BITS",
    }
}

registry! {
    /// Group Key Bag Attributes (RFC 9838 4.5.2).
    GroupKeyBagAttrType: u16 {
        SaKey = 1 => "SA_KEY",
    }
}

registry! {
    /// Member Key Bag Attributes (RFC 9838 4.5.3).
    MemberKeyBagAttrType: u16 {
        WrapKey = 1 => "WRAP_KEY",
        AuthKey = 2 => "AUTH_KEY",
        GmSenderId = 3 => "GM_SENDER_ID",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_equals_named_and_round_trips() {
        assert_eq!(PayloadType::Unknown(33), PayloadType::Sa);
        assert_eq!(PayloadType::from(51), PayloadType::Gsa);
        assert_eq!(u8::from(ExchangeType::GsaRekey), 41);
        let u = NotifyType::from(60000);
        assert!(!u.is_known());
        assert_eq!(u.to_bytes(), vec![0xea, 0x60]);
        assert_eq!(
            NotifyType::read_bytes(&[0x40, 0x2d]).unwrap(),
            NotifyType::GroupSender
        );
        assert_eq!(
            format!("{:?}", NotifyType::from(60000)),
            "NotifyType(60000)"
        );
        assert_eq!(format!("{}", TransformType::Kwa), "KWA");
    }

    #[test]
    fn g_ikev2_codepoints_match_iana_md() {
        assert_eq!(ExchangeType::GsaAuth.value(), 39);
        assert_eq!(ExchangeType::GsaRegistration.value(), 40);
        assert_eq!(ExchangeType::GsaRekey.value(), 41);
        assert_eq!(ExchangeType::GsaInbandRekey.value(), 42);
        assert_eq!(PayloadType::IdG.value(), 50);
        assert_eq!(PayloadType::Kd.value(), 52);
        assert_eq!(ProtocolId::GikeUpdate.value(), 6);
        assert_eq!(TransformType::GcAuth.value(), 14);
        assert_eq!(SnId::Unspecified32.value(), 2);
        assert_eq!(TransformAttrType::SignatureAlgorithmId.value(), 18);
        assert_eq!(NotifyType::RegistrationFailed.value(), 49);
        assert!(NotifyType::RegistrationFailed.is_error());
        assert!(!NotifyType::GroupSender.is_error());
    }
}
