//! Device authorization grant (RFC 8628): show a code, poll the token endpoint.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::provider::Endpoints;
use super::token::{self, TokenAnswer};
use super::{Client, OAuthError, TokenGrant, scope_string};
use crate::secret::SecretString;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8628 §3.5: `slow_down` adds 5 seconds to the polling interval.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// A device code is typed by a person: its life is minutes (RFC 8628 suggests 30). A longer one
/// from the provider is clamped, and so is the polling interval, so no answer can overflow a
/// deadline or park the command for days.
const MAX_DEVICE_LIFETIME: u64 = 3600;
const MAX_INTERVAL: u64 = 60;

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: SecretString,
    user_code: String,
    /// Google spells it `verification_url`.
    #[serde(alias = "verification_url")]
    verification_uri: String,
    verification_uri_complete: Option<String>,
    #[serde(deserialize_with = "token::number_or_string")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "token::number_or_string")]
    interval: Option<u64>,
}

impl DeviceAuthorization {
    fn lifetime(&self) -> Duration {
        Duration::from_secs(self.expires_in.unwrap_or(1800).min(MAX_DEVICE_LIFETIME))
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.interval.unwrap_or(5).clamp(1, MAX_INTERVAL))
    }
}

pub async fn authorize(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    device_url: &str,
    client: &Client,
    scopes: &[String],
) -> Result<TokenGrant, OAuthError> {
    let (_, scopes) = endpoints.offline.apply(scopes);
    let scope = scope_string(&scopes);
    let authorization = start(http, device_url, client, &scope).await?;
    eprintln!(
        "To authorize tokenvault, visit:\n\n    {}\n\nand enter the code:  {}\n",
        super::printable(&authorization.verification_uri),
        super::printable(&authorization.user_code)
    );
    if let Some(complete) = &authorization.verification_uri_complete {
        eprintln!("(or open {})\n", super::printable(complete));
    }
    poll(http, endpoints, client, &authorization).await
}

/// RFC 8628 §3.1: the device authorization request authenticates the client exactly as a token
/// request does (basic or post for a confidential client; `client_id` alone for a public one).
async fn start(
    http: &reqwest::Client,
    device_url: &str,
    client: &Client,
    scope: &str,
) -> Result<DeviceAuthorization, OAuthError> {
    super::provider::check_endpoint_url(device_url)?;
    let response = token::build_request(http, device_url, Some(client), &[("scope", scope)])
        .send()
        .await
        .map_err(|_| {
            OAuthError::Provider(format!(
                "cannot reach the device authorization endpoint {device_url}"
            ))
        })?;
    let status = response.status().as_u16();
    let body = token::read_body(response)
        .await
        .unwrap_or_else(|_| crate::secret::Secret::new(Vec::new()));
    if let Ok(authorization) = serde_json::from_slice::<DeviceAuthorization>(body.expose()) {
        return Ok(authorization);
    }
    let detail = serde_json::from_slice::<serde_json::Value>(body.expose())
        .ok()
        .and_then(|value| {
            value
                .get("error")
                .and_then(|e| e.as_str())
                .map(super::printable)
        })
        .unwrap_or_else(|| "not a device authorization answer".to_owned());
    Err(OAuthError::Provider(format!(
        "the device authorization endpoint answered HTTP {status} ({detail}). Check --client-id, --scope and that the client allows the device flow"
    )))
}

async fn poll(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    client: &Client,
    authorization: &DeviceAuthorization,
) -> Result<TokenGrant, OAuthError> {
    let deadline = Instant::now() + authorization.lifetime();
    let mut interval = authorization.interval();
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() >= deadline {
            return Err(OAuthError::DeviceCodeExpired);
        }
        let answer = token::request(
            http,
            &endpoints.token_url,
            Some(client),
            &[
                ("grant_type", DEVICE_GRANT),
                ("device_code", authorization.device_code.expose()),
            ],
        )
        .await;
        match answer {
            TokenAnswer::Refused(refused) if refused.error == "authorization_pending" => {}
            TokenAnswer::Refused(refused) if refused.error == "slow_down" => {
                interval = (interval + SLOW_DOWN_STEP).min(Duration::from_secs(MAX_INTERVAL))
            }
            TokenAnswer::Refused(refused) if refused.error == "access_denied" => {
                return Err(OAuthError::ConsentDenied);
            }
            TokenAnswer::Refused(refused) if refused.error == "expired_token" => {
                return Err(OAuthError::DeviceCodeExpired);
            }
            other => {
                return super::require_refresh_token(other.classify().into_result()?, endpoints);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Whatever a device authorization endpoint answers, its numbers cannot overflow a
        /// deadline or park the command.
        #[test]
        fn device_answers_have_bounded_numbers(
            body in crate::fuzzing::untrusted_json(&[
                "device_code", "user_code", "verification_uri", "verification_url",
                "verification_uri_complete", "expires_in", "interval",
            ]),
        ) {
            if let Ok(answer) = serde_json::from_slice::<DeviceAuthorization>(&body) {
                proptest::prop_assert!(answer.lifetime() <= Duration::from_secs(MAX_DEVICE_LIFETIME));
                let interval = answer.interval();
                proptest::prop_assert!(interval >= Duration::from_secs(1));
                proptest::prop_assert!(interval <= Duration::from_secs(MAX_INTERVAL));
                let _ = std::time::Instant::now() + answer.lifetime();
            }
        }
    }
}
