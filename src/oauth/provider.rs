//! Where a provider's endpoints are and what it needs to hand out a refresh token.

use serde::{Deserialize, Serialize};
use url::Url;

use super::OAuthError;

/// What the authorization request must carry for the provider to issue a refresh token.
/// Without it, real servers answer 200 with no refresh token at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineAccess {
    /// Google: `access_type=offline` and `prompt=consent`.
    AccessTypeOffline,
    /// OIDC servers and Microsoft: scope `offline_access` and `prompt=consent`.
    OfflineAccessScope,
    /// An explicitly configured server: nothing is added.
    AsConfigured,
}

impl OfflineAccess {
    /// Extra authorization-request parameters, and the scopes with what this style requires.
    pub fn apply(self, scopes: &[String]) -> (Vec<(&'static str, &'static str)>, Vec<String>) {
        let mut scopes = scopes.to_vec();
        match self {
            OfflineAccess::AccessTypeOffline => (
                vec![("access_type", "offline"), ("prompt", "consent")],
                scopes,
            ),
            OfflineAccess::OfflineAccessScope => {
                if !scopes.iter().any(|scope| scope == "offline_access") {
                    scopes.push("offline_access".to_owned());
                }
                (vec![("prompt", "consent")], scopes)
            }
            OfflineAccess::AsConfigured => (Vec::new(), scopes),
        }
    }

    /// What to tell a user whose code exchange came back without a refresh token.
    pub fn missing_refresh_token_hint(self) -> &'static str {
        match self {
            OfflineAccess::AccessTypeOffline => {
                "tokenvault asked for access_type=offline and prompt=consent; check that the OAuth client is of type \"Desktop app\" and that consent was given"
            }
            OfflineAccess::OfflineAccessScope => {
                "tokenvault asked for the offline_access scope and prompt=consent; allow offline_access for this client on the authorization server"
            }
            OfflineAccess::AsConfigured => {
                "ask for offline access: add the scope the server needs (often --scope offline_access), or use --provider google / --issuer URL so tokenvault adds it"
            }
        }
    }
}

/// A provider's endpoints as stored with each account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    /// `google`, `microsoft`, `oidc` (discovered) or `custom`.
    pub provider: String,
    pub token_url: String,
    pub auth_url: Option<String>,
    pub device_url: Option<String>,
    /// Expected `iss` on the redirect (RFC 9207), when known.
    pub issuer: Option<String>,
    /// The server said it always sends `iss` on the redirect (discovery's
    /// `authorization_response_iss_parameter_supported`): one without it is refused.
    #[serde(default)]
    pub iss_required: bool,
    /// RFC 7009 token revocation (`vault remove` ends the grant there), when known.
    #[serde(default)]
    pub revocation_url: Option<String>,
    pub offline: OfflineAccess,
    /// The API through which the account's own key is rotated (Google IAM, Microsoft Graph),
    /// when not the provider's public one (a sovereign cloud, a test server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_api_url: Option<String>,
}

/// How the user named the provider on the command line.
pub enum ProviderChoice {
    Google,
    Microsoft {
        tenant: String,
    },
    /// Any OIDC / RFC 8414 server, found by discovery.
    Issuer(String),
    /// Only explicit URLs (`--token-url` is then required).
    Custom,
}

/// Explicit endpoint URLs, which replace those of the chosen provider (a proxy, a sovereign
/// cloud, a test server) while keeping its offline-access rules.
#[derive(Default)]
pub struct EndpointOverrides {
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    pub device_url: Option<String>,
    pub key_api_url: Option<String>,
}

impl ProviderChoice {
    /// Turns the choice into endpoints, fetching discovery metadata for an issuer.
    pub async fn resolve(
        self,
        overrides: EndpointOverrides,
        http: &reqwest::Client,
    ) -> Result<Endpoints, OAuthError> {
        let mut endpoints = match self {
            ProviderChoice::Google => Endpoints {
                provider: "google".into(),
                token_url: "https://oauth2.googleapis.com/token".into(),
                auth_url: Some("https://accounts.google.com/o/oauth2/v2/auth".into()),
                device_url: Some("https://oauth2.googleapis.com/device/code".into()),
                issuer: Some("https://accounts.google.com".into()),
                iss_required: false,
                revocation_url: Some("https://oauth2.googleapis.com/revoke".into()),
                offline: OfflineAccess::AccessTypeOffline,
                key_api_url: None,
            },
            ProviderChoice::Microsoft { tenant } => {
                let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
                Endpoints {
                    provider: "microsoft".into(),
                    token_url: format!("{base}/token"),
                    auth_url: Some(format!("{base}/authorize")),
                    device_url: Some(format!("{base}/devicecode")),
                    // Multi-tenant issuers are templated ({tenantid}); iss cannot be pinned.
                    issuer: None,
                    iss_required: false,
                    revocation_url: None,
                    offline: OfflineAccess::OfflineAccessScope,
                    key_api_url: None,
                }
            }
            ProviderChoice::Issuer(issuer) => discover(http, &issuer).await?,
            ProviderChoice::Custom => Endpoints::token_only(
                "custom",
                overrides.token_url.clone().ok_or_else(|| {
                    OAuthError::Provider(
                        "name the provider: --provider google|microsoft, --issuer URL, or --token-url URL (with --auth-url or --device-url)".into(),
                    )
                })?,
            ),
        };
        if overrides.token_url.is_some() || overrides.auth_url.is_some() {
            // A replaced authorization server cannot be expected to use the original issuer.
            endpoints.issuer = None;
            endpoints.iss_required = false;
            endpoints.revocation_url = None;
        }
        endpoints.token_url = overrides.token_url.unwrap_or(endpoints.token_url);
        endpoints.auth_url = overrides.auth_url.or(endpoints.auth_url);
        endpoints.device_url = overrides.device_url.or(endpoints.device_url);
        endpoints.key_api_url = overrides.key_api_url;
        endpoints.check()?;
        Ok(endpoints)
    }
}

impl Endpoints {
    /// A server known only by its token endpoint (service-account keys, `--token-url`).
    pub fn token_only(provider: &str, token_url: String) -> Endpoints {
        Endpoints {
            provider: provider.into(),
            token_url,
            auth_url: None,
            device_url: None,
            issuer: None,
            iss_required: false,
            revocation_url: None,
            offline: OfflineAccess::AsConfigured,
            key_api_url: None,
        }
    }

    /// Every URL is https (or plain http on loopback): checked when an account is added or
    /// imported, and again before each upstream call.
    pub fn check(&self) -> Result<(), OAuthError> {
        for url in [
            Some(&self.token_url),
            self.auth_url.as_ref(),
            self.device_url.as_ref(),
            self.revocation_url.as_ref(),
            self.key_api_url.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            check_endpoint_url(url)?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    token_endpoint: String,
    authorization_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
    revocation_endpoint: Option<String>,
}

/// OIDC discovery, falling back to RFC 8414 authorization-server metadata.
async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Endpoints, OAuthError> {
    let base = check_endpoint_url(issuer)?;
    let trimmed = issuer.trim_end_matches('/');
    let candidates = [
        format!("{trimmed}/.well-known/openid-configuration"),
        format!(
            "{}://{}/.well-known/oauth-authorization-server{}",
            base.scheme(),
            base.host_str().unwrap_or_default(),
            base.path().trim_end_matches('/')
        ),
    ];
    let mut last_problem = String::new();
    for candidate in candidates {
        match fetch_metadata(http, &candidate).await {
            Ok(metadata) => return endpoints_from_metadata(issuer, metadata),
            Err(problem) => last_problem = format!("{candidate}: {problem}"),
        }
    }
    Err(OAuthError::Provider(format!(
        "cannot discover the endpoints of issuer {issuer} ({last_problem}). Check the URL, or give --auth-url and --token-url"
    )))
}

async fn fetch_metadata(http: &reqwest::Client, url: &str) -> Result<Metadata, String> {
    let response = http.get(url).send().await.map_err(|err| {
        if err.is_timeout() {
            "timed out".to_owned()
        } else {
            "unreachable".to_owned()
        }
    })?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status().as_u16()));
    }
    let body = super::token::read_body(response)
        .await
        .map_err(|problem| match problem {
            super::token::BodyError::TooLarge => format!(
                "the answer is larger than {} KiB",
                super::token::MAX_ANSWER / 1024
            ),
            super::token::BodyError::Cut => "the answer was cut short".to_owned(),
        })?;
    serde_json::from_slice(body.expose()).map_err(|_| "not discovery metadata JSON".to_owned())
}

fn endpoints_from_metadata(issuer: &str, metadata: Metadata) -> Result<Endpoints, OAuthError> {
    // RFC 8414 §3.3: the metadata must name the issuer that was asked for.
    if metadata.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(OAuthError::Provider(format!(
            "the discovery document of {issuer} names issuer {:?}; refusing mismatched metadata",
            metadata.issuer
        )));
    }
    let endpoints = Endpoints {
        provider: "oidc".into(),
        token_url: metadata.token_endpoint,
        auth_url: metadata.authorization_endpoint,
        device_url: metadata.device_authorization_endpoint,
        issuer: Some(metadata.issuer),
        iss_required: metadata.authorization_response_iss_parameter_supported,
        revocation_url: metadata.revocation_endpoint,
        offline: OfflineAccess::OfflineAccessScope,
        key_api_url: None,
    };
    // The document is the server's word: every URL in it is checked like one typed by the user.
    endpoints.check()?;
    Ok(endpoints)
}

/// Endpoint URLs must be https, except on loopback (local test servers, development).
pub fn check_endpoint_url(text: &str) -> Result<Url, OAuthError> {
    let url = Url::parse(text)
        .map_err(|err| OAuthError::Provider(format!("{text:?} is not a URL ({err})")))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(OAuthError::Provider(format!(
            "{text} must be an https URL (plain http is allowed only on 127.0.0.1 / localhost)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_access_scope_is_added_once() {
        let (extra, scopes) = OfflineAccess::OfflineAccessScope.apply(&["openid".into()]);
        assert_eq!(scopes, ["openid", "offline_access"]);
        assert_eq!(extra, [("prompt", "consent")]);
        let (_, again) = OfflineAccess::OfflineAccessScope.apply(&scopes);
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn google_asks_for_offline_and_consent() {
        let (extra, _) = OfflineAccess::AccessTypeOffline.apply(&[]);
        assert!(extra.contains(&("access_type", "offline")));
        assert!(extra.contains(&("prompt", "consent")));
    }

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(check_endpoint_url("http://127.0.0.1:8080/token").is_ok());
        assert!(check_endpoint_url("https://example.com/token").is_ok());
        assert!(check_endpoint_url("http://example.com/token").is_err());
        assert!(check_endpoint_url("not a url").is_err());
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Any discovery document is turned into checked endpoints or a clear refusal.
        #[test]
        fn any_discovery_document_is_checked(
            body in crate::fuzzing::untrusted_json(&[
                "issuer", "token_endpoint", "authorization_endpoint",
                "device_authorization_endpoint", "authorization_response_iss_parameter_supported",
            ]),
        ) {
            if let Ok(metadata) = serde_json::from_slice::<Metadata>(&body) {
                let issuer = metadata.issuer.clone();
                if let Ok(endpoints) = endpoints_from_metadata(&issuer, metadata) {
                    proptest::prop_assert!(endpoints.check().is_ok());
                }
            }
        }
    }
}
