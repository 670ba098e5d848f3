//! `Secret<T>`: a value that is zeroized when dropped and that no formatting trait can reveal.
//!
//! Every long-lived credential (client secret, refresh token, private key) and every access token
//! travels through the program inside a `Secret`. Reading it takes an explicit `expose()`, so each
//! place that touches the plaintext is visible in the code.

use std::fmt;

use serde::{Deserialize, Deserializer};
use zeroize::Zeroize;

pub struct Secret<T: Zeroize>(T);

pub type SecretString = Secret<String>;
pub type SecretBytes = Secret<Vec<u8>>;

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The plaintext. Callers must not copy it anywhere that outlives the `Secret`.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub(crate) fn expose_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl SecretString {
    /// Trims surrounding whitespace (a trailing newline from a file or pipe) without leaving an
    /// unzeroized copy behind.
    pub fn trimmed(&self) -> SecretString {
        Secret(self.0.trim().to_owned())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy exactly as long as the text, for secrets kept long in great numbers (this one
    /// is zeroized when dropped, like any).
    pub fn boxed(&self) -> Secret<Box<str>> {
        Secret(self.0.as_str().into())
    }
}

impl SecretBytes {
    /// Converts decrypted bytes into text, zeroizing the bytes either way.
    pub fn into_string(mut self) -> Option<SecretString> {
        let bytes = std::mem::take(&mut self.0);
        match String::from_utf8(bytes) {
            Ok(text) => Some(Secret(text)),
            Err(err) => {
                err.into_bytes().zeroize();
                None
            }
        }
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize + Clone> Clone for Secret<T> {
    fn clone(&self) -> Self {
        Secret(self.0.clone())
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl<'de, T: Zeroize + Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = SecretString::from("hunter2-refresh".to_owned());
        let shown = format!("{secret:?} {:?}", Some(&secret));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn trimmed_drops_newline() {
        let secret = SecretString::from("abc\n".to_owned());
        assert_eq!(secret.trimmed().expose(), "abc");
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert!(SecretBytes::new(vec![0xff, 0xfe]).into_string().is_none());
    }
}
