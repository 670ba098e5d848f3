//! Calls to a provider's key-management API (Google IAM, Microsoft Graph): JSON with a bearer
//! token, answers read to a bound into a zeroized buffer (a created key comes back in one), and
//! refusals sorted by what helps. Both APIs word an error as `{"error": {"code", "message",
//! "status"?}}`.

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::oauth::printable;
use crate::oauth::token::{BodyError, read_body, transport_reason};
use crate::secret::{SecretBytes, SecretString};

/// Why a key-management call failed.
#[derive(Debug)]
pub enum ApiError {
    /// 401/403: the credential may not manage its own keys.
    Denied(String),
    /// 404: the key (or the application) is not there.
    Gone(String),
    /// Another 4xx: the API refused the request as it stands (a policy, a quota).
    Refused(String),
    /// Unreachable, 5xx, 429, or an answer that is not what the API documents.
    Unavailable(String),
}

impl ApiError {
    pub fn detail(&self) -> &str {
        match self {
            ApiError::Denied(detail)
            | ApiError::Gone(detail)
            | ApiError::Refused(detail)
            | ApiError::Unavailable(detail) => detail,
        }
    }
}

/// An authenticated session with one key-management API.
pub struct Session {
    http: reqwest::Client,
    bearer: SecretString,
}

impl Session {
    pub fn new(http: &reqwest::Client, bearer: SecretString) -> Session {
        Session {
            http: http.clone(),
            bearer,
        }
    }

    /// GET `url`, its JSON answer as `T`.
    pub async fn get<T: DeserializeOwned>(&self, url: url::Url) -> Result<T, ApiError> {
        parse(&self.send(self.http.get(url)).await?)
    }

    /// POST `body` as JSON to `url`; the raw answer (it may hold a key: zeroized when dropped).
    pub async fn post(
        &self,
        url: url::Url,
        body: &serde_json::Value,
    ) -> Result<SecretBytes, ApiError> {
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(request).await
    }

    pub async fn delete(&self, url: url::Url) -> Result<(), ApiError> {
        self.send(self.http.delete(url)).await.map(drop)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<SecretBytes, ApiError> {
        let bearer = format!("Bearer {}", self.bearer.expose());
        let response = request
            .header(AUTHORIZATION, bearer)
            .send()
            .await
            .map_err(|err| {
                ApiError::Unavailable(format!("no answer: {}", transport_reason(&err)))
            })?;
        let status = response.status().as_u16();
        let body = read_body(response).await.map_err(|err| {
            ApiError::Unavailable(match err {
                BodyError::TooLarge => "the answer was larger than any the API documents".into(),
                BodyError::Cut => "the answer was cut off".into(),
            })
        })?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let detail = format!("HTTP {status}: {}", error_text(body.expose()));
        Err(match status {
            401 | 403 => ApiError::Denied(detail),
            404 => ApiError::Gone(detail),
            429 => ApiError::Unavailable(detail),
            400..=499 => ApiError::Refused(detail),
            _ => ApiError::Unavailable(detail),
        })
    }
}

/// An answer as the documented shape `T`.
pub fn parse<T: DeserializeOwned>(body: &SecretBytes) -> Result<T, ApiError> {
    serde_json::from_slice(body.expose()).map_err(|err| {
        ApiError::Unavailable(format!(
            "the answer is not what the API documents (line {} column {})",
            err.line(),
            err.column()
        ))
    })
}

/// The API's own words for a refusal (`error.status`/`code` and `message`), made printable.
fn error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Answer {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        #[serde(default)]
        code: serde_json::Value,
        #[serde(default)]
        status: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return "no error description".into();
    };
    let code = match (answer.error.status, answer.error.code) {
        (Some(status), _) => status,
        (None, serde_json::Value::String(code)) => code,
        (None, code) => code.to_string(),
    };
    printable(&format!(
        "{code}: {}",
        answer.error.message.unwrap_or_default()
    ))
}

/// An RFC 3339 time as Unix seconds.
pub fn unix_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.timestamp())
}

/// A provider's key id as it may go into a URL path and the vault's records: letters, digits
/// and '-' (Google's are hex, Microsoft's GUIDs).
pub fn checked_key_id(id: &str) -> Result<&str, ApiError> {
    let fine = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if fine {
        Ok(id)
    } else {
        Err(ApiError::Unavailable(format!(
            "the API named a key {:?}, not an id it documents",
            printable(&id.chars().take(40).collect::<String>())
        )))
    }
}
