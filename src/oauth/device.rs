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

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: SecretString,
    user_code: String,
    /// Google spells it `verification_url`.
    #[serde(alias = "verification_url")]
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default = "default_interval")]
    interval: u64,
}

fn default_interval() -> u64 {
    5
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
    let authorization = start(http, device_url, &client.id, &scope).await?;
    eprintln!(
        "To authorize tokenvault, visit:\n\n    {}\n\nand enter the code:  {}\n",
        authorization.verification_uri, authorization.user_code
    );
    if let Some(complete) = &authorization.verification_uri_complete {
        eprintln!("(or open {complete})\n");
    }
    poll(http, endpoints, client, &authorization).await
}

async fn start(
    http: &reqwest::Client,
    device_url: &str,
    client_id: &str,
    scope: &str,
) -> Result<DeviceAuthorization, OAuthError> {
    super::provider::check_endpoint_url(device_url)?;
    let response = http
        .post(device_url)
        .form(&[("client_id", client_id), ("scope", scope)])
        .send()
        .await
        .map_err(|_| {
            OAuthError::Provider(format!(
                "cannot reach the device authorization endpoint {device_url}"
            ))
        })?;
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    if let Ok(authorization) = serde_json::from_slice::<DeviceAuthorization>(&body) {
        return Ok(authorization);
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|value| {
            value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
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
    let deadline = Instant::now() + Duration::from_secs(authorization.expires_in);
    let mut interval = Duration::from_secs(authorization.interval.max(1));
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
                interval += SLOW_DOWN_STEP
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
