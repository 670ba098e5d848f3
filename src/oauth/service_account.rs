//! Google service-account keys and the JWT bearer grant (RFC 7523), signed RS256 with ring.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::{OAuthError, Outcome};
use crate::secret::{Secret, SecretString};

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google refuses assertions whose `exp - iat` exceeds one hour.
const ASSERTION_LIFETIME: i64 = 3600;
/// Backdating `iat` absorbs a local clock running ahead of the provider's ("Invalid JWT").
const CLOCK_SKEW: i64 = 60;

/// The fields of Google's JSON key file that tokenvault uses.
#[derive(Deserialize)]
pub struct ServiceAccountKey {
    #[serde(rename = "type")]
    pub kind: String,
    pub client_email: String,
    pub private_key: SecretString,
    pub private_key_id: Option<String>,
    pub token_uri: String,
}

fn key_error(message: impl Into<String>) -> OAuthError {
    OAuthError::ServiceAccountKey(message.into())
}

impl ServiceAccountKey {
    /// Parses and checks a key file's text; the private key must load as an RSA PKCS#8 key.
    pub fn parse(text: &SecretString) -> Result<ServiceAccountKey, OAuthError> {
        let key: ServiceAccountKey = serde_json::from_str(text.expose()).map_err(|err| {
            // serde's message names a line and column, never the content.
            key_error(format!(
                "not a Google service-account JSON key ({}). Download a new key: IAM & Admin → Service accounts → Keys → Add key → JSON",
                describe_json_error(&err)
            ))
        })?;
        if key.kind != "service_account" {
            return Err(key_error(format!(
                "the file's \"type\" is {:?}, not \"service_account\"",
                key.kind
            )));
        }
        key.key_pair()?;
        super::provider::check_endpoint_url(&key.token_uri)?;
        Ok(key)
    }

    fn key_pair(&self) -> Result<RsaKeyPair, OAuthError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(self.private_key.expose().as_bytes())
            .map_err(|_| key_error("\"private_key\" is not a PEM-encoded PKCS#8 private key"))?;
        RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|_| {
            key_error("\"private_key\" is not an RSA key that ring accepts (2048-8192 bits)")
        })
    }

    /// A signed assertion for `scopes`, impersonating `subject` when given (domain-wide delegation).
    pub fn assertion(
        &self,
        token_url: &str,
        scopes: &[String],
        subject: Option<&str>,
        now: i64,
    ) -> Result<SecretString, OAuthError> {
        #[derive(Serialize)]
        struct Header<'a> {
            alg: &'static str,
            typ: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            kid: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: String,
            aud: &'a str,
            iat: i64,
            exp: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            sub: Option<&'a str>,
        }
        let iat = now - CLOCK_SKEW;
        let header = Header {
            alg: "RS256",
            typ: "JWT",
            kid: self.private_key_id.as_deref(),
        };
        let claims = Claims {
            iss: &self.client_email,
            scope: super::scope_string(scopes),
            aud: token_url,
            iat,
            exp: iat + ASSERTION_LIFETIME,
            sub: subject,
        };
        let signing_input = format!("{}.{}", base64_json(&header), base64_json(&claims));
        let key_pair = self.key_pair()?;
        let mut signature = vec![0u8; key_pair.public().modulus_len()];
        key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| key_error("signing the assertion failed"))?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

/// The JWT bearer grant (RFC 7523) for `key`, `scopes` and optional `subject`.
pub async fn jwt_bearer_grant(
    http: &reqwest::Client,
    key: &ServiceAccountKey,
    scopes: &[String],
    subject: Option<&str>,
) -> Result<Outcome, OAuthError> {
    let assertion = key.assertion(&key.token_uri, scopes, subject, crate::clock::now_unix())?;
    let params = [
        ("grant_type", JWT_BEARER_GRANT),
        ("assertion", assertion.expose().as_str()),
    ];
    Ok(super::token::request(http, &key.token_uri, None, &params)
        .await
        .classify())
}

fn base64_json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings and integers always serialize.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Describes a JSON error by category and position only: serde's own message can quote content.
fn describe_json_error(err: &serde_json::Error) -> String {
    let what = match err.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "malformed JSON",
        serde_json::error::Category::Data => "a field is missing or has the wrong type",
        serde_json::error::Category::Io => "unreadable",
    };
    format!("{what} at line {} column {}", err.line(), err.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Any file given as a Google key is used or refused with a message that quotes none
        /// of it.
        #[test]
        fn any_key_file_is_refused_clearly(
            body in crate::fuzzing::untrusted_json(&[
                "type", "client_email", "private_key", "private_key_id", "token_uri",
            ]),
        ) {
            let text = SecretString::from(String::from_utf8_lossy(&body).into_owned());
            if let Err(err) = ServiceAccountKey::parse(&text) {
                proptest::prop_assert!(!err.to_string().is_empty());
            }
        }
    }
}
