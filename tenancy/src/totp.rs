//! TOTP per RFC 6238 (totp-rs): 6 digits, 30-second steps, one step of skew either way.

use totp_rs::{Algorithm, Builder, Secret, Totp};

pub const STEP_SECS: u64 = 30;
pub const SKEW_STEPS: u64 = 1;

/// Why a TOTP secret cannot be used (the text follows the secret's name: "ADMIN_TOTP_SECRET is
/// not base32 …").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("is not base32 (letters A–Z and digits 2–7)")]
    NotBase32,
    #[error("is not a usable TOTP secret ({0}); it must hold at least 128 bits (26 base32 characters)")]
    Unusable(String),
    #[error("cannot build the otpauth URI: {0}")]
    Uri(String),
}

/// A fresh 160-bit secret, base32 without padding (what authenticator apps take).
pub fn new_secret() -> String {
    data_encoding::BASE32_NOPAD.encode(&super::secrets::random_bytes::<20>())
}

/// Checks that a base32 secret is usable (at least 128 bits, as RFC 4226 asks).
pub fn check_secret(secret: &str) -> Result<(), TotpError> {
    totp(secret, "check").map(|_| ())
}

fn totp(secret: &str, account: &str) -> Result<Totp, TotpError> {
    let secret = Secret::try_from_base32(secret.trim()).map_err(|_| TotpError::NotBase32)?;
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(STEP_SECS)
        .with_skew(SKEW_STEPS as u16)
        .with_secret(secret)
        .with_issuer(Some("plughost"))
        .with_account_name(account)
        .build()
        .map_err(|err| TotpError::Unusable(err.to_string()))
}

/// The time step `code` matches at `unix_secs` (±1 step), if any. Malformed codes never match.
pub fn verify(secret: &str, code: &str, unix_secs: u64) -> Option<u64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret, "verify").ok()?;
    totp.check(code, unix_secs)
}

/// The code for `unix_secs`.
pub fn code_at(secret: &str, unix_secs: u64) -> Result<String, TotpError> {
    Ok(totp(secret, "code")?.generate(unix_secs).to_string())
}

/// The `otpauth://` URI an authenticator app enrols from.
pub fn otpauth_uri(secret: &str, account: &str) -> Result<String, TotpError> {
    let account = account.replace(':', "-");
    totp(secret, &account)?.to_url().map_err(|err| TotpError::Uri(err.to_string()))
}

pub use crate::clock::now;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_and_one_step_either_side() {
        let secret = new_secret();
        assert_eq!(secret.len(), 32);
        let t = 1_800_000_000;
        let code = code_at(&secret, t).unwrap();
        assert_eq!(verify(&secret, &code, t), Some(t / 30));
        assert_eq!(verify(&secret, &code, t + 30), Some(t / 30));
        assert_eq!(verify(&secret, &code, t - 30), Some(t / 30));
        assert_eq!(verify(&secret, &code, t + 60), None);
        assert_eq!(verify(&secret, &code, t - 60), None);
    }

    #[test]
    fn malformed_codes_and_secrets() {
        let secret = new_secret();
        for code in ["", "12345", "1234567", "abcdef", "12 456", "١٢٣٤٥٦"] {
            assert_eq!(verify(&secret, code, now()), None, "{code}");
        }
        assert!(check_secret("short").is_err());
        assert!(check_secret("not base32!").is_err());
        assert!(check_secret(&secret).is_ok());
        assert!(otpauth_uri(&secret, "tenant:acme").unwrap().starts_with("otpauth://totp/"));
    }
}
