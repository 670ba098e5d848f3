//! Whose grant an account holds: the subject (and email) of the ID token that came with it.
//! `vault login` compares a new grant's identity with the recorded one, so a re-login in the
//! wrong browser profile cannot silently swap whose mail the account sends.
//!
//! The ID token is read without checking its signature: it comes straight from the token
//! endpoint over the connection the vault opened (OIDC Core §3.1.3.7 allows TLS server
//! validation in place of the signature there), and it decides nothing but this comparison.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::secret::SecretString;

/// The user a grant belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The issuer's stable identifier of the user (`sub`).
    pub subject: String,
    pub email: Option<String>,
}

impl Identity {
    /// The ID token's identity, when it is a readable JWT with a subject.
    pub fn from_id_token(id_token: &SecretString) -> Option<Identity> {
        #[derive(Deserialize)]
        struct Claims {
            sub: String,
            email: Option<String>,
        }
        let payload = id_token.expose().split('.').nth(1)?;
        let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        let claims: Claims = serde_json::from_slice(&json).ok()?;
        Some(Identity {
            subject: super::printable(&claims.sub),
            email: claims.email.as_deref().map(super::printable),
        })
    }

    /// How the user is shown: the email when known, else the subject.
    pub fn shown(&self) -> &str {
        self.email.as_deref().unwrap_or(&self.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> SecretString {
        SecretString::from(format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims)))
    }

    #[test]
    fn the_id_tokens_subject_and_email() {
        let identity =
            Identity::from_id_token(&jwt(r#"{"sub":"alice","email":"a@example.com"}"#)).unwrap();
        assert_eq!(identity.subject, "alice");
        assert_eq!(identity.shown(), "a@example.com");
        assert_eq!(Identity::from_id_token(&jwt(r#"{"email":"x"}"#)), None);
        assert_eq!(
            Identity::from_id_token(&SecretString::from("opaque".to_owned())),
            None
        );
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Any ID token a provider sends is read or ignored, never a panic.
        #[test]
        fn any_id_token_is_read_or_ignored(
            header in ".{0,20}",
            claims in crate::fuzzing::untrusted_json(&["sub", "email", "iss", "aud"]),
            raw in ".{0,60}",
        ) {
            let encoded = URL_SAFE_NO_PAD.encode(&claims);
            let _ = Identity::from_id_token(&SecretString::from(format!("{header}.{encoded}.x")));
            let _ = Identity::from_id_token(&SecretString::from(raw));
        }
    }
}
