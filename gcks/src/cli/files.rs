//! Credential files: PSKs, PKCS#8 private keys, certificates and public keys, PEM or
//! DER. Secrets are read into zeroized buffers and never quoted in error messages.

use std::path::Path;

use base64::Engine as _;
use gikev2_proto::crypto::{SecretBytes, SignatureScheme, SigningKey};
use zeroize::Zeroizing;

/// Largest credential file read.
const MAX_FILE: u64 = 256 * 1024;

fn read(flag: &str, path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if meta.len() > MAX_FILE {
        return Err(format!(
            "{flag} {}: larger than {MAX_FILE} octets",
            path.display()
        ));
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// The DER blocks of a PEM file whose label ends in `label`, or the whole file (DER).
fn pem_or_der(flag: &str, bytes: &[u8], label: &str) -> Result<Vec<Zeroizing<Vec<u8>>>, String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(vec![Zeroizing::new(bytes.to_vec())]);
    };
    if !text.contains("-----BEGIN ") {
        return Ok(vec![Zeroizing::new(bytes.to_vec())]);
    }
    let mut blocks = Vec::new();
    let mut body: Option<Zeroizing<String>> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            body = rest
                .trim_end_matches('-')
                .ends_with(label)
                .then(|| Zeroizing::new(String::new()));
        } else if line.starts_with("-----END ") {
            if let Some(b) = body.take() {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|_| format!("{flag}: a PEM block is not valid base64"))?;
                blocks.push(Zeroizing::new(der));
            }
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    if blocks.is_empty() {
        return Err(format!("{flag}: no PEM block labelled ..{label}"));
    }
    Ok(blocks)
}

/// A PSK file: its bytes, without one trailing newline.
pub fn load_psk(flag: &str, path: &Path) -> Result<SecretBytes, String> {
    let bytes = read(flag, path)?;
    let mut end = bytes.len();
    if end > 0 && bytes[end - 1] == b'\n' {
        end -= 1;
        if end > 0 && bytes[end - 1] == b'\r' {
            end -= 1;
        }
    }
    if end == 0 {
        return Err(format!("{flag} {}: empty", path.display()));
    }
    Ok(SecretBytes::from_slice(&bytes[..end]))
}

/// A PKCS#8 private key (PEM or DER) with the signature scheme it is for.
pub fn load_private_key(
    flag: &str,
    path: &Path,
) -> Result<(SigningKey, SignatureScheme, SecretBytes), String> {
    let bytes = read(flag, path)?;
    let der = pem_or_der(flag, &bytes, "PRIVATE KEY")?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{flag}: no key"))?;
    for scheme in SignatureScheme::ALL {
        if let Ok(k) = SigningKey::from_pkcs8(scheme, &der) {
            return Ok((k, scheme, SecretBytes::from_slice(&der)));
        }
    }
    Err(format!(
        "{flag} {}: not a PKCS#8 Ed25519, ECDSA P-256, RSA or ML-DSA private key{}",
        path.display(),
        gikev2_member::config::private_key_format_hint(&bytes)
    ))
}

/// Certificates (PEM or DER), in file order.
pub fn load_certs(flag: &str, path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let bytes = read(flag, path)?;
    Ok(pem_or_der(flag, &bytes, "CERTIFICATE")?
        .into_iter()
        .map(|b| b.to_vec())
        .collect())
}

/// A SubjectPublicKeyInfo (PEM "PUBLIC KEY" or DER).
pub fn load_spki(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let bytes = read(flag, path)?;
    pem_or_der(flag, &bytes, "PUBLIC KEY")?
        .into_iter()
        .next()
        .map(|b| b.to_vec())
        .ok_or_else(|| format!("{flag}: no public key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_selected_by_label() {
        let pem = "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n\
                   -----BEGIN PRIVATE KEY-----\nBAU=\n-----END PRIVATE KEY-----\n";
        let certs = pem_or_der("--ca", pem.as_bytes(), "CERTIFICATE").unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(&certs[0][..], &[1, 2, 3]);
        let e = pem_or_der("--ca", pem.as_bytes(), "PUBLIC KEY").unwrap_err();
        assert!(e.starts_with("--ca:"), "{e}");
        assert_eq!(
            &pem_or_der("--x", &[0x30, 1], "X").unwrap()[0][..],
            &[0x30, 1]
        );
    }
}
