//! Signed plugins: ed25519 detached signatures over the plugin file's bytes.
//!
//! When `PLUGIN_PUBKEYS` lists public keys, a plugin is loaded, or accepted for publishing, only
//! with a valid signature by one of them. The signature of `libx.so` is `libx.so.sig` beside it:
//! the 64-byte signature in base64, on one line. `plughost sign` writes it; so does OpenSSL
//! (`openssl pkeyutl -sign -rawin -inkey key.pem -in libx.so | base64 -w0 > libx.so.sig`).
//!
//! Public keys are base64: the raw 32 bytes, or the DER SubjectPublicKeyInfo OpenSSL prints
//! (`openssl pkey -in key.pem -pubout -outform DER | base64 -w0`). Private keys are PKCS#8 PEM
//! files, as `plughost keygen --signing-key` and `openssl genpkey -algorithm ed25519` write them.

use std::path::{Path, PathBuf};

use base64ct::{Base64, Encoding};
use ed25519_dalek::{
    pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, DecodePublicKey, EncodePrivateKey},
    Signature, Signer, SigningKey, VerifyingKey,
};

/// The extension of a detached signature file, appended to the plugin's file name.
pub const SIGNATURE_SUFFIX: &str = ".sig";

/// Why a signature was not accepted. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("unsigned: PLUGIN_PUBKEYS is set, so plugins need a detached signature ({0}; plughost sign makes it)")]
    Missing(String),
    #[error("the signature is not 64 bytes of base64 ({0}): make it again with plughost sign")]
    Malformed(String),
    #[error("the signature does not match the file under any key in PLUGIN_PUBKEYS: the file changed after signing, or it was signed with another key")]
    Invalid,
}

/// The public keys plugins must be signed with.
/// Why a key (trusted, or for signing) cannot be used, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

impl From<String> for KeyError {
    fn from(why: String) -> KeyError {
        KeyError(why)
    }
}

#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

impl TrustedKeys {
    /// Parses `PLUGIN_PUBKEYS`: base64 keys separated by commas or white space. Empty text means
    /// signatures are not required (`Ok(None)`).
    pub fn parse(text: &str) -> Result<Option<TrustedKeys>, KeyError> {
        let mut keys = Vec::new();
        for (i, item) in text.split([',', ' ', '\n', '\t']).filter(|s| !s.is_empty()).enumerate() {
            keys.push(parse_public_key(item).map_err(|why| format!("key {} ({item}): {why}", i + 1))?);
        }
        Ok((!keys.is_empty()).then_some(TrustedKeys { keys }))
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted (never true for a parsed value).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `signature` (the text of a `.sig` file; `None` when there is none) over `bytes`.
    /// Returns the index of the key that signed it. `missing` names where the signature was
    /// looked for, for the error message.
    pub fn verify(&self, bytes: &[u8], signature: Option<&str>, missing: &str) -> Result<usize, SignatureError> {
        let text = signature.ok_or_else(|| SignatureError::Missing(missing.to_owned()))?;
        let signature = parse_signature(text)?;
        self.keys
            .iter()
            .position(|key| key.verify_strict(bytes, &signature).is_ok())
            .ok_or(SignatureError::Invalid)
    }

    /// Checks the signature file beside `file` over `bytes` (the file's content as read).
    pub fn verify_file(&self, file: &Path, bytes: &[u8]) -> Result<usize, SignatureError> {
        let sig_path = signature_path(file);
        let text = read_signature(&sig_path)?;
        let shown = sig_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.verify(bytes, text.as_deref(), &format!("{shown} is missing"))
    }
}

/// `libx.so.sig` for `libx.so`.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(SIGNATURE_SUFFIX);
    PathBuf::from(name)
}

/// `libx.so` for `libx.so.sig`; `None` for any other file.
pub fn plugin_of_signature(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let plugin = name.strip_suffix(SIGNATURE_SUFFIX)?;
    plugin.ends_with(".so").then(|| path.with_file_name(plugin))
}

/// The text of a signature file: `Ok(None)` when there is none.
pub fn read_signature(path: &Path) -> Result<Option<String>, SignatureError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() > 1024 => Err(SignatureError::Malformed(format!("{} is {} bytes", path.display(), bytes.len()))),
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(SignatureError::Malformed(format!("cannot read {}: {err}", path.display()))),
    }
}

fn parse_signature(text: &str) -> Result<Signature, SignatureError> {
    let text = text.trim();
    let mut raw = [0u8; 64];
    match Base64::decode(text, &mut raw) {
        Ok(decoded) if decoded.len() == 64 => Ok(Signature::from_bytes(&raw)),
        Ok(decoded) => Err(SignatureError::Malformed(format!("{} bytes", decoded.len()))),
        Err(_) => Err(SignatureError::Malformed("not base64".to_owned())),
    }
}

fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = Base64::decode_vec(text.trim()).map_err(|_| "not base64".to_owned())?;
    match bytes.len() {
        32 => {
            let mut raw = [0u8; 32];
            raw.copy_from_slice(&bytes);
            VerifyingKey::from_bytes(&raw).map_err(|_| "not a valid ed25519 public key".to_owned())
        }
        44 => VerifyingKey::from_public_key_der(&bytes).map_err(|err| format!("not an ed25519 public key: {err}")),
        n => Err(format!(
            "{n} bytes; an ed25519 public key is 32 bytes of base64 (plughost keygen --signing-key prints it)"
        )),
    }
}

/// The signature of `bytes`, as the text of a `.sig` file.
pub fn sign(key: &SigningKey, bytes: &[u8]) -> String {
    format!("{}\n", Base64::encode_string(&key.sign(bytes).to_bytes()))
}

/// Reads a PKCS#8 PEM private key file.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("cannot read the signing key {}: {err}", path.display()))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|err| {
        KeyError(format!(
            "{} is not an ed25519 private key in PKCS#8 PEM ({err}): make one with plughost keygen --signing-key",
            path.display()
        ))
    })
}

/// A fresh signing key: its PKCS#8 PEM text and its public key in base64 (for `PLUGIN_PUBKEYS`).
pub fn new_signing_key() -> Result<(String, String), KeyError> {
    let key = SigningKey::from_bytes(&plughost_tenancy::secrets::random_bytes::<32>());
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|err| format!("cannot encode the key: {err}"))?;
    Ok((pem.to_string(), public_key_of(&key)))
}

/// The base64 public key of `key`, as `PLUGIN_PUBKEYS` takes it.
pub fn public_key_of(key: &SigningKey) -> String {
    Base64::encode_string(key.verifying_key().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signature_verifies_under_its_key_only() {
        let (one, two) = (key(1), key(2));
        let keys = TrustedKeys::parse(&format!("{}, {}", public_key_of(&two), public_key_of(&one)))
            .unwrap()
            .unwrap();
        assert_eq!(keys.len(), 2);
        let signature = sign(&one, b"plugin bytes");
        assert_eq!(keys.verify(b"plugin bytes", Some(&signature), "x"), Ok(1));
        assert_eq!(keys.verify(b"plugin bytez", Some(&signature), "x"), Err(SignatureError::Invalid));
        let only_two = TrustedKeys::parse(&public_key_of(&two)).unwrap().unwrap();
        assert_eq!(
            only_two.verify(b"plugin bytes", Some(&signature), "x"),
            Err(SignatureError::Invalid)
        );
        assert!(matches!(keys.verify(b"plugin bytes", None, "x"), Err(SignatureError::Missing(_))));
        assert!(matches!(
            keys.verify(b"plugin bytes", Some("abc"), "x"),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            keys.verify(b"plugin bytes", Some("%%%"), "x"),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn public_keys_are_parsed_with_reasons() {
        assert!(matches!(TrustedKeys::parse("  "), Ok(None)));
        assert!(TrustedKeys::parse("not-base64!").is_err_and(|e| e.0.contains("key 1") && e.0.contains("not base64")));
        assert!(TrustedKeys::parse("AAAA").is_err_and(|e| e.0.contains("3 bytes")));
        // The DER SubjectPublicKeyInfo OpenSSL prints: a 12-byte prefix, then the raw key.
        let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        der.extend_from_slice(key(3).verifying_key().as_bytes());
        let keys = TrustedKeys::parse(&Base64::encode_string(&der)).unwrap().unwrap();
        assert_eq!(keys.verify(b"x", Some(&sign(&key(3), b"x")), "x"), Ok(0));
    }

    #[test]
    fn signature_files_sit_beside_their_plugin() {
        let sig = signature_path(Path::new("/p/tenants/u/libx.so"));
        assert_eq!(sig, Path::new("/p/tenants/u/libx.so.sig"));
        assert_eq!(plugin_of_signature(&sig).as_deref(), Some(Path::new("/p/tenants/u/libx.so")));
        assert_eq!(plugin_of_signature(Path::new("/p/notes.sig")), None);
        assert_eq!(plugin_of_signature(Path::new("/p/libx.so")), None);
    }

    #[test]
    fn generated_keys_round_trip_through_pem() {
        let (pem, public) = new_signing_key().unwrap();
        let key = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(public_key_of(&key), public);
    }
}
