//! Authorization code grant with PKCE (S256) and a loopback redirect on 127.0.0.1 (RFC 8252).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::oneshot;
use url::Url;

use super::provider::Endpoints;
use super::{Client, OAuthError, TokenGrant, scope_string, token};
use crate::crypto;
use crate::secret::{Secret, SecretString};

pub struct AuthorizationRequest<'a> {
    pub endpoints: &'a Endpoints,
    pub auth_url: &'a str,
    pub client: &'a Client,
    pub scopes: &'a [String],
    /// 0 picks a free port; a fixed port is for servers that register one.
    pub redirect_port: u16,
    pub timeout: Duration,
    /// Shows the user the authorization URL: `open_browser`, or `vault demo`'s automatic consent.
    pub opener: fn(&str),
}

type Callback = HashMap<String, String>;

/// Runs the browser login and exchanges the code. Returns the grant, which must carry a
/// refresh token: one without it is refused with a hint on how to get offline access.
pub async fn authorize(
    http: &reqwest::Client,
    request: AuthorizationRequest<'_>,
) -> Result<TokenGrant, OAuthError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", request.redirect_port))
        .await
        .map_err(|source| OAuthError::Listen {
            port: request.redirect_port,
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| OAuthError::Listen { port: 0, source })?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/");
    let verifier = random_token::<32>()?;
    let state = random_token::<16>()?;
    let url = authorization_url(&request, &redirect_uri, &verifier, &state)?;

    let (sender, receiver) = oneshot::channel::<Callback>();
    let (stop, stopped) = oneshot::channel::<()>();
    let router = Router::new()
        .route("/", get(receive_redirect))
        .with_state(Arc::new(Waiting {
            state: state.clone(),
            sender: Mutex::new(Some(sender)),
        }));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });

    (request.opener)(url.as_str());
    let callback = wait_for_redirect(receiver, request.timeout).await;
    let _ = stop.send(());
    // Let the browser's page finish loading; never hang on a client that keeps its connection.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    let code = check_callback(callback?, &state, request.endpoints)?;

    let answer = token::request(
        http,
        &request.endpoints.token_url,
        Some(request.client),
        &[
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", verifier.expose()),
        ],
    )
    .await;
    super::require_refresh_token(answer.classify().into_result()?, request.endpoints)
}

/// A URL-safe random string with `N` bytes of entropy (PKCE verifier, state).
fn random_token<const N: usize>() -> Result<SecretString, OAuthError> {
    let bytes = crypto::random_bytes::<N>().map_err(|err| OAuthError::Provider(err.to_string()))?;
    Ok(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.expose())))
}

/// RFC 7636 S256: BASE64URL(SHA256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn authorization_url(
    request: &AuthorizationRequest<'_>,
    redirect_uri: &str,
    verifier: &SecretString,
    state: &SecretString,
) -> Result<Url, OAuthError> {
    let mut url = super::provider::check_endpoint_url(request.auth_url)?;
    let (extra, scopes) = request.endpoints.offline.apply(request.scopes);
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &request.client.id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scope_string(&scopes))
            .append_pair("state", state.expose())
            .append_pair("code_challenge", &pkce_challenge(verifier.expose()))
            .append_pair("code_challenge_method", "S256");
        for (key, value) in extra {
            query.append_pair(key, value);
        }
    }
    Ok(url)
}

/// The login the loopback listener waits for: its `state`, and where its redirect goes.
struct Waiting {
    state: SecretString,
    sender: Mutex<Option<oneshot::Sender<Callback>>>,
}

/// Takes the redirect whose `state` is this login's. Any other request to the port (any local
/// process can send one) is answered and ignored: it must not end the login.
async fn receive_redirect(
    State(waiting): State<Arc<Waiting>>,
    Query(params): Query<Callback>,
) -> (axum::http::StatusCode, Html<&'static str>) {
    use axum::http::StatusCode;
    let ours = params
        .get("state")
        .is_some_and(|state| state == waiting.state.expose());
    if !ours {
        return (
            StatusCode::BAD_REQUEST,
            Html(
                "<h1>tokenvault</h1><p>This redirect is not for the login in progress; ignored.</p>",
            ),
        );
    }
    let taken = waiting.sender.lock().ok().and_then(|mut slot| slot.take());
    let Some(sender) = taken else {
        return (
            StatusCode::OK,
            Html("<h1>tokenvault</h1><p>This login was already answered.</p>"),
        );
    };
    let denied = params.contains_key("error");
    let _ = sender.send(params);
    let page = if denied {
        "<h1>tokenvault</h1><p>Authorization was not granted. You can close this tab.</p>"
    } else {
        "<h1>tokenvault</h1><p>Done. You can close this tab and return to the terminal.</p>"
    };
    (StatusCode::OK, Html(page))
}

/// Opens `url` with `$BROWSER` (the URL as its one argument), else xdg-open on a desktop. The URL
/// is always printed too, on a line of its own, for a browser on another machine.
pub fn open_browser(url: &str) {
    eprintln!("Open this URL in a browser to authorize tokenvault:\n\n{url}\n");
    let opener = match std::env::var("BROWSER") {
        Ok(browser) if !browser.trim().is_empty() => Some(browser),
        _ if std::env::var_os("DISPLAY").is_some()
            || std::env::var_os("WAYLAND_DISPLAY").is_some() =>
        {
            Some("xdg-open".to_owned())
        }
        _ => None,
    };
    if let Some(opener) = opener {
        let spawned = std::process::Command::new(&opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(err) = spawned {
            eprintln!("(could not start {opener}: {err}; open the URL yourself)");
        }
    }
}

/// Waits for the redirect, showing a countdown on a terminal.
async fn wait_for_redirect(
    receiver: oneshot::Receiver<Callback>,
    timeout: Duration,
) -> Result<Callback, OAuthError> {
    let deadline = Instant::now() + timeout;
    let terminal = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(receiver);
    loop {
        tokio::select! {
            received = &mut receiver => {
                if terminal { eprintln!(); }
                return received.map_err(|_| OAuthError::NoCode);
            }
            _ = ticker.tick() => {
                let left = deadline.saturating_duration_since(Instant::now()).as_secs();
                if left == 0 {
                    if terminal { eprintln!(); }
                    return Err(OAuthError::Timeout(timeout.as_secs()));
                }
                if terminal {
                    eprint!("\rWaiting for the browser to redirect back… {left:>4} s left ");
                    let _ = std::io::stderr().flush();
                }
            }
        }
    }
}

/// Checks `state` and `iss` (RFC 9207) and takes the code out of the redirect.
fn check_callback(
    mut callback: Callback,
    expected_state: &SecretString,
    endpoints: &Endpoints,
) -> Result<SecretString, OAuthError> {
    let expected_issuer = endpoints.issuer.as_deref();
    let state_ok = callback
        .get("state")
        .is_some_and(|state| state == expected_state.expose());
    if let Some(error) = callback.remove("error") {
        if !state_ok {
            return Err(OAuthError::StateMismatch);
        }
        return Err(match error.as_str() {
            "access_denied" => OAuthError::ConsentDenied,
            _ => {
                let description = callback.remove("error_description").unwrap_or_default();
                OAuthError::AuthorizationFailed(
                    super::printable(&format!("{error} {description}"))
                        .trim()
                        .to_owned(),
                )
            }
        });
    }
    if !state_ok {
        return Err(OAuthError::StateMismatch);
    }
    if let (Some(expected), true, None) =
        (expected_issuer, endpoints.iss_required, callback.get("iss"))
    {
        return Err(OAuthError::IssuerMissing(expected.to_owned()));
    }
    if let (Some(expected), Some(got)) = (expected_issuer, callback.get("iss"))
        && expected.trim_end_matches('/') != got.trim_end_matches('/')
    {
        return Err(OAuthError::IssuerMismatch {
            expected: expected.to_owned(),
            got: got.clone(),
        });
    }
    callback
        .remove("code")
        .map(Secret::new)
        .ok_or(OAuthError::NoCode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    fn callback(pairs: &[(&str, &str)]) -> Callback {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn endpoints(issuer: Option<&str>, iss_required: bool) -> Endpoints {
        Endpoints {
            provider: "oidc".into(),
            token_url: "https://i/token".into(),
            auth_url: None,
            device_url: None,
            issuer: issuer.map(str::to_owned),
            iss_required,
            revocation_url: None,
            offline: super::super::provider::OfflineAccess::OfflineAccessScope,
            key_api_url: None,
        }
    }

    #[test]
    fn callback_checks() {
        let state = SecretString::from("s1".to_owned());
        let pinned = endpoints(Some("https://i"), false);
        let ok = check_callback(
            callback(&[("code", "c"), ("state", "s1"), ("iss", "https://i")]),
            &state,
            &pinned,
        );
        assert_eq!(ok.unwrap().expose(), "c");
        assert!(matches!(
            check_callback(
                callback(&[("code", "c"), ("state", "x")]),
                &state,
                &endpoints(None, false)
            ),
            Err(OAuthError::StateMismatch)
        ));
        assert!(matches!(
            check_callback(
                callback(&[("code", "c"), ("state", "s1"), ("iss", "https://evil")]),
                &state,
                &pinned
            ),
            Err(OAuthError::IssuerMismatch { .. })
        ));
        assert!(matches!(
            check_callback(
                callback(&[("error", "access_denied"), ("state", "s1")]),
                &state,
                &pinned
            ),
            Err(OAuthError::ConsentDenied)
        ));
        // RFC 9207: a server that promises iss must send it.
        let without_iss = callback(&[("code", "c"), ("state", "s1")]);
        assert!(check_callback(without_iss.clone(), &state, &pinned).is_ok());
        assert!(matches!(
            check_callback(without_iss, &state, &endpoints(Some("https://i"), true)),
            Err(OAuthError::IssuerMissing(_))
        ));
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Any redirect a local process sends is checked, never a panic.
        #[test]
        fn any_redirect_is_checked(
            pairs in proptest::collection::vec(
                (proptest::sample::select(&["code", "state", "iss", "error", "error_description", "x"][..]), ".{0,20}"),
                0..6,
            ),
            iss_required in proptest::prelude::any::<bool>(),
        ) {
            let callback: Callback = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let state = SecretString::from("s1".to_owned());
            if let Err(err) = check_callback(callback, &state, &endpoints(Some("https://i"), iss_required)) {
                proptest::prop_assert!(!err.to_string().contains(char::is_control));
            }
        }
    }
}
