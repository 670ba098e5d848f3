//! AES-256-GCM sealing (ring) with a fresh random 96-bit nonce per seal.
//!
//! A sealed blob is `nonce || ciphertext || tag`. The caller supplies the additional authenticated
//! data that binds the blob to where it lives, so a blob moved elsewhere fails to open.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

use crate::secret::{Secret, SecretBytes};

pub const KEY_LEN: usize = 32;

#[derive(Debug, Error)]
pub enum CryptoError {
    #[error(
        "a sealed secret failed to open: the key is wrong, or the data was altered or moved to another row"
    )]
    Open,
    #[error("the system random number generator failed")]
    Random,
}

/// An AES-256-GCM key.
pub struct Key(LessSafeKey);

impl Key {
    pub fn from_bytes(bytes: &Secret<[u8; KEY_LEN]>) -> Key {
        // The length is fixed by the type, so ring cannot refuse it.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes.expose()).expect("32-byte AES-256 key");
        Key(LessSafeKey::new(unbound))
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Random)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut blob[NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Random)?;
        blob.extend_from_slice(tag.as_ref());
        Ok(blob)
    }

    pub fn open(&self, blob: &[u8], aad: &[u8]) -> Result<SecretBytes, CryptoError> {
        if blob.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Open);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
        // Decrypt inside the Secret so the plaintext is zeroized on every path.
        let mut buffer = SecretBytes::new(sealed.to_vec());
        let plain_len = self
            .0
            .open_in_place(nonce, Aad::from(aad), buffer.expose_mut())
            .map_err(|_| CryptoError::Open)?
            .len();
        buffer.expose_mut().truncate(plain_len);
        Ok(buffer)
    }
}

/// HMAC-SHA256 that vouches for the plaintext settings deciding where secrets are sent.
#[derive(Clone)]
pub struct MacKey(ring::hmac::Key);

impl MacKey {
    /// Derived from the data key (HMAC with a fixed label): whoever can open the secrets can
    /// vouch for the settings, and no one without the master key can.
    pub fn derive(data_key: &Secret<[u8; KEY_LEN]>) -> MacKey {
        use ring::hmac;
        let root = hmac::Key::new(hmac::HMAC_SHA256, data_key.expose());
        let tag = hmac::sign(&root, b"tokenvault account settings v1");
        let mut derived = Secret::new([0u8; KEY_LEN]);
        derived.expose_mut().copy_from_slice(tag.as_ref());
        MacKey(hmac::Key::new(hmac::HMAC_SHA256, derived.expose()))
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        ring::hmac::sign(&self.0, message).as_ref().to_vec()
    }

    /// Constant-time comparison.
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        ring::hmac::verify(&self.0, message, tag).is_ok()
    }
}

/// An AES-256-GCM key from HKDF-SHA256: `secret` (the input keying material, e.g. a
/// Diffie-Hellman agreement) extracted with `salt` and expanded for `info`, which binds the key
/// to what it is for.
pub fn derive_key(salt: &[u8], secret: &[u8], info: &str) -> Result<Key, CryptoError> {
    use ring::hkdf;
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
    let pieces = [info.as_bytes()];
    let okm = prk
        .expand(&pieces, hkdf::HKDF_SHA256)
        .map_err(|_| CryptoError::Random)?;
    let mut raw = Secret::new([0u8; KEY_LEN]);
    okm.fill(raw.expose_mut())
        .map_err(|_| CryptoError::Random)?;
    Ok(Key::from_bytes(&raw))
}

/// `N` bytes from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<Secret<[u8; N]>, CryptoError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CryptoError::Random)?;
    Ok(Secret::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::from_bytes(&random_bytes::<KEY_LEN>().unwrap())
    }

    #[test]
    fn round_trip() {
        let key = key();
        let blob = key.seal(b"refresh-token", b"aad").unwrap();
        assert_eq!(key.open(&blob, b"aad").unwrap().expose(), b"refresh-token");
    }

    #[test]
    fn fresh_nonce_each_seal() {
        let key = key();
        assert_ne!(key.seal(b"x", b"a").unwrap(), key.seal(b"x", b"a").unwrap());
    }

    #[test]
    fn other_aad_or_key_or_tamper_fails() {
        let key = key();
        let mut blob = key.seal(b"secret", b"account=1").unwrap();
        assert!(key.open(&blob, b"account=2").is_err());
        assert!(self::key().open(&blob, b"account=1").is_err());
        blob[14] ^= 1;
        assert!(key.open(&blob, b"account=1").is_err());
        assert!(key.open(&blob[..5], b"account=1").is_err());
    }
}
