//! Google service-account keys through the IAM API (`projects.serviceAccounts.keys`), used by
//! the key itself: a token for the `cloud-platform` scope signed with the current key, then
//! `keys.list`, `keys.create` (a Google JSON key file, base64, in `privateKeyData`) and
//! `keys.delete`. The service account needs `roles/iam.serviceAccountKeyAdmin` on itself.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use url::Url;

use super::api::{ApiError, Session, checked_key_id, parse, unix_time};
use super::{NewKey, RemoteKey};
use crate::oauth::service_account::{ServiceAccountKey, jwt_bearer_grant};
use crate::oauth::{Outcome, RejectionKind};
use crate::secret::{Secret, SecretString};

pub const DEFAULT_API: &str = "https://iam.googleapis.com";
/// What the token that calls the IAM API is for.
const IAM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const ROLE: &str = "grant the service account the role \"Service Account Key Admin\" (roles/iam.serviceAccountKeyAdmin) on itself: gcloud iam service-accounts add-iam-policy-binding EMAIL --member=serviceAccount:EMAIL --role=roles/iam.serviceAccountKeyAdmin";

/// The IAM API for one service account.
pub struct Iam {
    /// `…/v1/projects/-/serviceAccounts/EMAIL/keys`
    keys_url: Url,
    email: String,
}

impl Iam {
    pub fn new(api: &str, email: &str) -> Result<Iam, String> {
        let mut keys_url = Url::parse(api)
            .map_err(|err| format!("the IAM API URL {api:?} is not a URL: {err}"))?;
        keys_url
            .path_segments_mut()
            .map_err(|_| format!("the IAM API URL {api:?} cannot take a path"))?
            .pop_if_empty()
            .extend(["v1", "projects", "-", "serviceAccounts", email, "keys"]);
        Ok(Iam {
            keys_url,
            email: email.to_owned(),
        })
    }

    /// A token for the IAM API, from the key in use.
    pub async fn token(
        http: &reqwest::Client,
        key: &ServiceAccountKey,
    ) -> Result<Outcome, crate::oauth::OAuthError> {
        jwt_bearer_grant(http, key, &[IAM_SCOPE.to_owned()], None).await
    }

    fn key_url(&self, id: &str) -> Result<Url, ApiError> {
        let mut url = self.keys_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(checked_key_id(id)?);
        }
        Ok(url)
    }

    /// The user-managed keys of the service account.
    pub async fn list(&self, session: &Session) -> Result<Vec<RemoteKey>, ApiError> {
        #[derive(Deserialize)]
        struct Keys {
            /// Google leaves an empty list out.
            #[serde(default)]
            keys: Vec<Key>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Key {
            name: String,
            valid_after_time: Option<String>,
        }
        let mut url = self.keys_url.clone();
        url.query_pairs_mut()
            .append_pair("keyTypes", "USER_MANAGED");
        let answer: Keys = session.get(url).await?;
        answer
            .keys
            .into_iter()
            .map(|key| {
                Ok(RemoteKey {
                    id: checked_key_id(last_segment(&key.name))?.to_owned(),
                    created_at: key.valid_after_time.as_deref().and_then(unix_time),
                    ours: true,
                    hint: None,
                })
            })
            .collect()
    }

    /// A new key, its JSON key file checked to be a key of this service account.
    pub async fn create(&self, session: &Session) -> Result<NewKey, ApiError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            name: String,
            private_key_data: SecretString,
            valid_after_time: Option<String>,
        }
        let body = serde_json::json!({
            "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
            "keyAlgorithm": "KEY_ALG_RSA_2048",
        });
        let created: Created = parse(&session.post(self.keys_url.clone(), &body).await?)?;
        let id = checked_key_id(last_segment(&created.name))?.to_owned();
        let file = decode_key_file(&created.private_key_data)?;
        let key = ServiceAccountKey::parse(&file)
            .map_err(|err| ApiError::Unavailable(format!("the created key is unusable: {err}")))?;
        if key.client_email != self.email || key.private_key_id.as_deref() != Some(id.as_str()) {
            return Err(ApiError::Unavailable(
                "the created key file is not the key of this service account that the API named"
                    .into(),
            ));
        }
        Ok(NewKey {
            id,
            secret: file,
            created_at: created.valid_after_time.as_deref().and_then(unix_time),
            expires_at: None,
        })
    }

    pub async fn delete(&self, session: &Session, id: &str) -> Result<(), ApiError> {
        session.delete(self.key_url(id)?).await
    }
}

/// Whether a refusal of a key just created may be Google still spreading it ("Invalid JWT
/// Signature" for some seconds after `keys.create`).
pub fn may_be_spreading(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Permanent(rejection) if rejection.kind == RejectionKind::InvalidGrant)
}

fn decode_key_file(data: &SecretString) -> Result<SecretString, ApiError> {
    let bytes = Secret::new(STANDARD.decode(data.expose().trim()).map_err(|_| {
        ApiError::Unavailable("the created key's privateKeyData is not base64".into())
    })?);
    bytes.into_string().ok_or_else(|| {
        ApiError::Unavailable("the created key's privateKeyData is not a JSON key file".into())
    })
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_urls_name_the_service_account_and_only_a_checked_key_id() {
        let iam = Iam::new(DEFAULT_API, "robot@p.iam.gserviceaccount.com").unwrap();
        assert_eq!(
            iam.keys_url.as_str(),
            "https://iam.googleapis.com/v1/projects/-/serviceAccounts/robot@p.iam.gserviceaccount.com/keys"
        );
        assert!(
            iam.key_url("0123abcd")
                .unwrap()
                .as_str()
                .ends_with("/keys/0123abcd")
        );
        // An id from an edited record or a hostile answer never leaves the key's own path.
        for hostile in ["../../x", "a/b", "a?b", "", "%2e%2e", &"a".repeat(200)] {
            assert!(iam.key_url(hostile).is_err(), "{hostile}");
        }
    }

    #[test]
    fn a_created_key_file_must_be_base64_json() {
        assert!(decode_key_file(&SecretString::from("not base64!".to_owned())).is_err());
        let invalid_utf8 = STANDARD.encode([0xff, 0xfe]);
        assert!(decode_key_file(&SecretString::from(invalid_utf8)).is_err());
    }
}
