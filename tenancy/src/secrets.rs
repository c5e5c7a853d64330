//! `SECRET_KEY`: encrypts TOTP secrets at rest (ChaCha20-Poly1305, the principal's UUID as
//! associated data, a random nonce per write) and keys the HMAC that signs bearer tokens.

use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    ChaCha20Poly1305, Key, Nonce,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The 32-byte key from `SECRET_KEY`.
#[derive(Clone)]
pub struct SecretKey {
    cipher: ChaCha20Poly1305,
    /// HMAC state with the token key already absorbed: cloned per token, not re-keyed.
    token_mac: Hmac<Sha256>,
    /// The key callbacks are signed with, derived so that giving it to a receiver reveals
    /// nothing of `SECRET_KEY` (`plughost callback-key` prints it).
    callback_key: [u8; 32],
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(REDACTED)")
    }
}

/// Why a stored secret could not be decrypted.
#[derive(Debug, thiserror::Error)]
#[error("a stored secret cannot be decrypted: SECRET_KEY differs from the one it was written with, or the record is corrupt")]
pub struct DecryptError;

/// Why a key cannot be used (the text follows the key's name: "SECRET_KEY is not hexadecimal").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is not hexadecimal")]
    NotHex,
    #[error("must be 32 bytes (64 hexadecimal characters)")]
    Length,
    #[error("is not a usable key")]
    Unusable,
}

impl SecretKey {
    /// Parses 64 hexadecimal characters.
    pub fn from_hex(text: &str) -> Result<SecretKey, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::NotHex)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Length)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|_| KeyError::Unusable)?;
        mac.update(b"plughost bearer tokens v1");
        let token_key: [u8; 32] = mac.finalize().into_bytes().into();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|_| KeyError::Unusable)?;
        mac.update(b"plughost callbacks v1");
        let callback_key: [u8; 32] = mac.finalize().into_bytes().into();
        Ok(SecretKey {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            token_mac: <Hmac<Sha256> as Mac>::new_from_slice(&token_key).map_err(|_| KeyError::Unusable)?,
            callback_key,
        })
    }

    /// A fresh random key, as 64 hexadecimal characters (`plughost keygen`).
    pub fn generate_hex() -> String {
        hex::encode(random_bytes::<32>())
    }

    /// Encrypts `plain` for the principal `uuid`: hex of nonce ‖ ciphertext.
    pub fn encrypt(&self, uuid: &str, plain: &str) -> String {
        let nonce = random_bytes::<12>();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: uuid.as_bytes(),
                },
            )
            .unwrap_or_default();
        format!("{}{}", hex::encode(nonce), hex::encode(sealed))
    }

    /// Decrypts what [`SecretKey::encrypt`] wrote for `uuid`.
    pub fn decrypt(&self, uuid: &str, stored: &str) -> Result<String, DecryptError> {
        let bytes = hex::decode(stored).map_err(|_| DecryptError)?;
        if bytes.len() < 12 + 16 {
            return Err(DecryptError);
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: uuid.as_bytes(),
                },
            )
            .map_err(|_| DecryptError)?;
        String::from_utf8(plain).map_err(|_| DecryptError)
    }

    /// The HMAC-SHA256 of `payload` under the token key.
    pub fn sign(&self, payload: &[u8]) -> [u8; 32] {
        let mut mac = self.token_mac();
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the HMAC of `payload`, compared in constant time.
    pub fn verify(&self, payload: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.token_mac();
        mac.update(payload);
        mac.verify_slice(tag).is_ok()
    }

    /// The key callbacks are signed with: HMAC-SHA256 of `plughost callbacks v1` under
    /// `SECRET_KEY`.
    pub fn callback_key(&self) -> [u8; 32] {
        self.callback_key
    }

    fn token_mac(&self) -> Hmac<Sha256> {
        self.token_mac.clone()
    }
}

/// Bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).unwrap_or_else(|err| panic!("the operating system's random source failed: {err}"));
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_are_bound_to_their_principal() {
        let key = SecretKey::from_hex(&SecretKey::generate_hex()).unwrap();
        let stored = key.encrypt("uuid-a", "JBSWY3DPEHPK3PXP");
        assert_ne!(key.encrypt("uuid-a", "JBSWY3DPEHPK3PXP"), stored, "a fresh nonce per write");
        assert_eq!(key.decrypt("uuid-a", &stored).unwrap(), "JBSWY3DPEHPK3PXP");
        assert!(key.decrypt("uuid-b", &stored).is_err(), "bound to its UUID");
        let other = SecretKey::from_hex(&SecretKey::generate_hex()).unwrap();
        assert!(other.decrypt("uuid-a", &stored).is_err());
        assert!(key.decrypt("uuid-a", "00").is_err());
    }

    #[test]
    fn keys_are_validated() {
        assert!(SecretKey::from_hex("abc").is_err());
        assert!(SecretKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(SecretKey::from_hex(&"ab".repeat(31)).is_err());
        assert!(SecretKey::from_hex(&"ab".repeat(32)).is_ok());
    }

    #[test]
    fn token_tags_verify_only_their_payload() {
        let key = SecretKey::from_hex(&"01".repeat(32)).unwrap();
        let tag = key.sign(b"payload");
        assert!(key.verify(b"payload", &tag));
        assert!(!key.verify(b"payload!", &tag));
        assert!(!key.verify(b"payload", &tag[..31]));
    }
}
