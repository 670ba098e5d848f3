//! A built-in OAuth 2.0 / OIDC provider on 127.0.0.1 for `vault demo` and the test suite. It
//! behaves like the real ones: PKCE S256 required, exact loopback redirect rules, offline access
//! only when asked for the provider's way, refresh-token rotation with reuse revoking the whole
//! grant, invalid_client, injected 503 / slow / HTML / garbage answers, the device flow, and
//! JWT-bearer verification against a trusted service-account key. It guards nothing real: every
//! token it issues is random and lives only in its memory.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "test-client.apps.example";
pub const CLIENT_SECRET: &str = "cs-PLANTED-client-secret-7f3a9c";
pub const PUBLIC_CLIENT_ID: &str = "public-client.apps.example";
/// Registered redirect URI: scheme, host and path must match exactly; the port is ignored.
const REGISTERED_REDIRECT_PATH: &str = "/";

/// Which request makes the server hand out a refresh token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OfflineRule {
    /// Google: `access_type=offline` and `prompt=consent`.
    Google,
    /// OIDC: scope `offline_access` and `prompt=consent`.
    OfflineAccessScope,
}

/// A fault injected into the next token-endpoint answers.
#[derive(Clone)]
pub enum Fault {
    Unavailable503,
    Slow(Duration),
    Html,
    Garbage,
    /// A hostile provider: 503 with this `Retry-After` value.
    RetryAfter(String),
    /// A hostile provider: `400 invalid_grant` with this `error_description` (control bytes…).
    Rejected(String),
    /// A hostile provider: 200 with a body of this many bytes, streamed without a length.
    Huge(u64),
    /// An answer as a real provider words it: this status and JSON body.
    Answer(u16, Value),
    /// The request is processed (a refresh rotates the token) and then the connection drops
    /// before the answer arrives: a lost answer.
    LoseAnswer,
    /// The request is processed (a refresh rotates the token), then the answer takes this long,
    /// as a busy server's does: a client that gives up meanwhile has lost it.
    SlowAnswer(Duration),
}

/// An answer that breaks off before its first byte.
struct Broken;

impl hyper::body::Body for Broken {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::other("connection lost"))))
    }
}

/// An endless-looking answer: `left` bytes of `{`, 64 KiB at a time, never held whole.
struct Flood {
    left: u64,
}

impl hyper::body::Body for Flood {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        const CHUNK: u64 = 64 * 1024;
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let size = self.left.min(CHUNK);
        self.left -= size;
        let chunk = bytes::Bytes::from(vec![b'{'; size as usize]);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }
}

struct Grant {
    alive: bool,
    current_refresh: String,
    previous_refresh: Option<String>,
    /// When the current refresh token replaced the previous one.
    rotated_at: Option<Instant>,
    scope: String,
}

struct PendingCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    offline: bool,
}

struct DeviceCode {
    polls: u32,
    last_poll: Option<Instant>,
}

pub struct Behaviour {
    pub offline_rule: OfflineRule,
    pub rotate: bool,
    pub access_lifetime: u64,
    pub deny_consent: bool,
    pub forge_state: bool,
    /// The confidential client's active secrets: a provider such as Microsoft Entra accepts
    /// several at once, so that one can be rotated without downtime.
    pub client_secrets: Vec<String>,
    pub faults: VecDeque<Fault>,
    /// Device flow: answer `slow_down` to the first poll.
    pub device_slow_down_first: bool,
    /// Every token answer takes this long.
    pub delay: Option<Duration>,
    /// Until then, every token request gets a bare 503 (no Retry-After).
    pub down_until: Option<Instant>,
    /// How long after a rotation the previous refresh token is still accepted (Okta's leeway,
    /// Auth0's reuse interval, Cognito's grace; FAPI 2.0 requires accepting a retry). `None`:
    /// any reuse kills the grant (Keycloak, Dex, Okta with leeway 0, oidc-provider).
    pub reuse_grace: Option<Duration>,
    /// Google for apps in "Testing" status: refresh tokens die after this many seconds, and the
    /// answers say so (`refresh_token_expires_in`).
    pub refresh_token_lifetime: Option<u64>,
    /// The provider's clock runs this many seconds off ours: every answer's `Date` says so.
    pub clock_skew: Option<i64>,
}

#[derive(Default)]
pub struct Counters {
    pub token_requests: u32,
    pub refresh_grants: u32,
    /// Requests refused `invalid_client` (an unknown client, or a secret it does not hold).
    pub client_rejections: u32,
    pub slow_downs: u32,
    /// Rotated refresh tokens accepted once more within `reuse_grace`.
    pub grace_reuses: u32,
    /// Gaps between consecutive device polls.
    pub device_poll_gaps: Vec<Duration>,
}

struct Inner {
    base: String,
    behaviour: Behaviour,
    counters: Counters,
    codes: HashMap<String, PendingCode>,
    grants: Vec<Grant>,
    /// refresh token → (grant index, still current)
    refresh_tokens: HashMap<String, (usize, bool)>,
    devices: HashMap<String, DeviceCode>,
    /// Every credential the server knows or issued, for leak scans.
    issued_secrets: Vec<String>,
    /// access token → the scope it was issued for, and when it expires
    access_tokens: HashMap<String, (String, Instant)>,
    webhooks: Vec<Value>,
    /// The service account's keys it accepts assertions from (RSAPublicKey, DER).
    sa_public_keys: Vec<Vec<u8>>,
    sa_email: String,
}

#[derive(Clone)]
pub struct DevProvider {
    inner: Arc<Mutex<Inner>>,
    pub base: String,
    _runtime: Arc<tokio::runtime::Runtime>,
}

fn random(prefix: &str) -> String {
    let mut bytes = [0u8; 18];
    // A failing system RNG leaves zeros: this provider guards nothing real.
    let _ = SystemRandom::new().fill(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

impl DevProvider {
    /// Starts the provider on a free port of 127.0.0.1, on a runtime of its own; call it from
    /// outside any async runtime.
    pub fn start(offline_rule: OfflineRule) -> std::io::Result<DevProvider> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr: SocketAddr = listener.local_addr()?;
        let base = format!("http://127.0.0.1:{}", addr.port());
        let inner = Arc::new(Mutex::new(Inner {
            base: base.clone(),
            behaviour: Behaviour {
                offline_rule,
                rotate: false,
                access_lifetime: 3600,
                deny_consent: false,
                forge_state: false,
                client_secrets: vec![CLIENT_SECRET.to_owned()],
                faults: VecDeque::new(),
                device_slow_down_first: false,
                delay: None,
                down_until: None,
                reuse_grace: None,
                refresh_token_lifetime: None,
                clock_skew: None,
            },
            counters: Counters::default(),
            codes: HashMap::new(),
            grants: Vec::new(),
            refresh_tokens: HashMap::new(),
            devices: HashMap::new(),
            issued_secrets: vec![CLIENT_SECRET.to_owned()],
            access_tokens: HashMap::new(),
            webhooks: Vec::new(),
            sa_public_keys: Vec::new(),
            sa_email: String::new(),
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/device", post(device_authorization))
            .route("/webhook", post(webhook))
            .layer(axum::middleware::map_response_with_state(
                inner.clone(),
                skewed_date,
            ))
            .with_state(inner.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(DevProvider {
            inner,
            base,
            _runtime: Arc::new(runtime),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Accepts JWT assertions from the service account `email` signed by `public_key`
    /// (an RSAPublicKey, DER), besides the keys it accepted already.
    pub fn trust_service_account(&self, email: &str, public_key: Vec<u8>) {
        let mut inner = self.lock();
        inner.sa_email = email.to_owned();
        if !inner.sa_public_keys.contains(&public_key) {
            inner.sa_public_keys.push(public_key);
        }
    }

    /// Stops accepting assertions signed by `public_key` (the key was deleted).
    pub fn distrust_service_account_key(&self, public_key: &[u8]) {
        self.lock().sa_public_keys.retain(|key| key != public_key);
    }

    pub fn configure(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.lock().behaviour);
    }

    pub fn inject(&self, fault: Fault) {
        self.lock().behaviour.faults.push_back(fault);
    }

    pub fn counters<T>(&self, read: impl FnOnce(&Counters) -> T) -> T {
        read(&self.lock().counters)
    }

    /// Every secret the server issued or holds (client secret, refresh tokens, device codes).
    pub fn secrets(&self) -> Vec<String> {
        self.lock().issued_secrets.clone()
    }

    pub fn is_access_token(&self, token: &str) -> bool {
        self.lock().access_tokens.contains_key(token)
    }

    /// Whether this server issued `token` and it had not expired at `at`.
    pub fn was_live_access_token(&self, token: &str, at: Instant) -> bool {
        self.lock()
            .access_tokens
            .get(token)
            .is_some_and(|(_, expires)| at < *expires)
    }

    /// The scope an access token this server issued was granted.
    pub fn access_token_scope(&self, token: &str) -> Option<String> {
        self.lock()
            .access_tokens
            .get(token)
            .map(|(scope, _)| scope.clone())
    }

    /// Revokes every grant, as a user removing the app's access would.
    pub fn revoke_all(&self) {
        for grant in &mut self.lock().grants {
            grant.alive = false;
        }
    }

    /// The alert webhook bodies received.
    pub fn webhooks(&self) -> Vec<Value> {
        self.lock().webhooks.clone()
    }

    /// Presents the first refresh token of the first grant again, as a leaked copy would be:
    /// after rotation that is a reuse, and the provider revokes the whole grant.
    pub fn replay_first_refresh_token(&self) {
        let mut inner = self.lock();
        let Some(token) = inner
            .issued_secrets
            .iter()
            .find(|s| s.starts_with("rt-"))
            .cloned()
        else {
            return;
        };
        let form = HashMap::from([("refresh_token".to_owned(), token)]);
        let _ = refresh(&mut inner, &form);
    }

    /// The newest grant's current refresh token, the one it replaced, and whether it is alive.
    pub fn newest_grant(&self) -> Option<(String, Option<String>, bool)> {
        let inner = self.lock();
        let grant = inner.grants.last()?;
        Some((
            grant.current_refresh.clone(),
            grant.previous_refresh.clone(),
            grant.alive,
        ))
    }

    pub fn live_grants(&self) -> usize {
        self.lock()
            .grants
            .iter()
            .filter(|grant| grant.alive)
            .count()
    }

    /// A refresh token issued as if the user had authorized elsewhere (to import).
    pub fn issue_refresh_token(&self, scope: &str) -> String {
        let mut inner = self.lock();
        new_grant(&mut inner, scope)
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.base)
    }
    pub fn auth_url(&self) -> String {
        format!("{}/authorize", self.base)
    }
    pub fn device_url(&self) -> String {
        format!("{}/device", self.base)
    }
}

fn new_grant(inner: &mut Inner, scope: &str) -> String {
    let refresh = random("rt-PLANTED-");
    inner.grants.push(Grant {
        alive: true,
        current_refresh: refresh.clone(),
        previous_refresh: None,
        rotated_at: None,
        scope: scope.to_owned(),
    });
    inner
        .refresh_tokens
        .insert(refresh.clone(), (inner.grants.len() - 1, true));
    inner.issued_secrets.push(refresh.clone());
    refresh
}

/// The state stays usable even if a handler panicked while holding it.
fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Shared = State<Arc<Mutex<Inner>>>;

async fn discovery(State(inner): Shared) -> Response {
    let base = lock(&inner).base.clone();
    axum::Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "device_authorization_endpoint": format!("{base}/device"),
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }))
    .into_response()
}

fn page(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html")],
        format!("<html><body>{text}</body></html>"),
    )
        .into_response()
}

/// Exact loopback redirect matching: http, a loopback host, any port, the registered path.
fn redirect_allowed(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]") && path == REGISTERED_REDIRECT_PATH
}

async fn authorize(
    State(inner): Shared,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = lock(&inner);
    let get = |key: &str| params.get(key).cloned().unwrap_or_default();
    let client_id = get("client_id");
    if client_id != CLIENT_ID && client_id != PUBLIC_CLIENT_ID {
        return page(StatusCode::BAD_REQUEST, "invalid_client: unknown client");
    }
    let redirect_uri = get("redirect_uri");
    if !redirect_allowed(&redirect_uri) {
        return page(StatusCode::BAD_REQUEST, "redirect_uri_mismatch");
    }
    let state = if inner.behaviour.forge_state {
        "forged-state".to_owned()
    } else {
        get("state")
    };
    let iss = inner.base.clone();
    let redirect = |query: Vec<(&str, String)>| {
        let Ok(mut url) = url::Url::parse(&redirect_uri) else {
            return page(StatusCode::BAD_REQUEST, "redirect_uri_mismatch");
        };
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
    };
    if get("response_type") != "code"
        || get("code_challenge_method") != "S256"
        || get("code_challenge").is_empty()
    {
        // RFC 9207: error responses carry `iss` too, as the certified server's do.
        return redirect(vec![
            ("error", "invalid_request".into()),
            ("error_description", "PKCE with S256 is required".into()),
            ("state", state),
            ("iss", iss),
        ]);
    }
    if inner.behaviour.deny_consent {
        return redirect(vec![
            ("error", "access_denied".into()),
            ("state", state),
            ("iss", iss),
        ]);
    }
    let scope = get("scope");
    let consent = get("prompt") == "consent";
    let offline = consent
        && match inner.behaviour.offline_rule {
            OfflineRule::Google => get("access_type") == "offline",
            OfflineRule::OfflineAccessScope => scope.split(' ').any(|s| s == "offline_access"),
        };
    let code = random("code-");
    inner.codes.insert(
        code.clone(),
        PendingCode {
            client_id,
            redirect_uri: redirect_uri.clone(),
            challenge: get("code_challenge"),
            scope,
            offline,
        },
    );
    redirect(vec![("code", code), ("state", state), ("iss", iss)])
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// A `Date` header from the provider's own (skewed) clock; without a skew, hyper's.
async fn skewed_date(State(shared): Shared, mut response: Response) -> Response {
    if let Some(skew) = lock(&shared).behaviour.clock_skew {
        let at = chrono::Utc::now() + chrono::Duration::seconds(skew);
        let date = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        if let Ok(value) = header::HeaderValue::from_str(&date) {
            response.headers_mut().insert(header::DATE, value);
        }
    }
    response
}

/// Client authentication: exactly one method; Basic credentials are form-urlencoded first.
fn authenticate(
    inner: &mut Inner,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<String, Box<Response>> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .map(|encoded| {
            let decoded =
                String::from_utf8(STANDARD.decode(encoded).unwrap_or_default()).unwrap_or_default();
            let (id, secret) = decoded.split_once(':').unwrap_or_default();
            let decode = |text: &str| {
                url::form_urlencoded::parse(format!("x={text}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (decode(id), decode(secret))
        });
    let body_secret = form.get("client_secret").cloned();
    let (id, secret) = match (basic, body_secret) {
        (Some(_), Some(_)) => {
            return Err(Box::new(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one client authentication method",
            )));
        }
        (Some((id, secret)), None) => (id, Some(secret)),
        (None, secret) => (form.get("client_id").cloned().unwrap_or_default(), secret),
    };
    let invalid = || {
        oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found or its secret is wrong.",
        )
    };
    match (id.as_str(), secret) {
        (CLIENT_ID, Some(secret)) if inner.behaviour.client_secrets.contains(&secret) => Ok(id),
        (PUBLIC_CLIENT_ID, None) => Ok(id),
        _ => {
            inner.counters.client_rejections += 1;
            Err(Box::new(invalid()))
        }
    }
}

fn issue_access(inner: &mut Inner, scope: &str, refresh: Option<String>) -> Response {
    let access = random("at-");
    // An absurd lifetime (the hostile-provider tests) lasts as long as an Instant can.
    let issued = Instant::now();
    let expires = issued
        .checked_add(Duration::from_secs(inner.behaviour.access_lifetime))
        .or_else(|| issued.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(issued);
    inner
        .access_tokens
        .insert(access.clone(), (scope.to_owned(), expires));
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": inner.behaviour.access_lifetime,
        "scope": scope,
    });
    if let Some(refresh) = refresh {
        body["refresh_token"] = json!(refresh);
    }
    if let Some(lifetime) = inner.behaviour.refresh_token_lifetime {
        body["refresh_token_expires_in"] = json!(lifetime);
    }
    axum::Json(body).into_response()
}

async fn token(State(shared): Shared, headers: HeaderMap, body: String) -> Response {
    let fault = {
        let mut inner = lock(&shared);
        inner.counters.token_requests += 1;
        inner.behaviour.faults.pop_front()
    };
    let (delay, down) = {
        let inner = lock(&shared);
        (
            inner.behaviour.delay,
            inner
                .behaviour
                .down_until
                .is_some_and(|until| Instant::now() < until),
        )
    };
    if down {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Some(Fault::Unavailable503) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "7")],
                "upstream overloaded",
            )
                .into_response();
        }
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Html) => return page(StatusCode::OK, "<h1>Sign in to continue</h1>"),
        Some(Fault::Garbage) => return (StatusCode::OK, "\u{1}\u{2}garbage{{{").into_response(),
        Some(Fault::RetryAfter(value)) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, value)],
                "come back much later",
            )
                .into_response();
        }
        Some(Fault::Rejected(description)) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &description);
        }
        Some(Fault::Huge(size)) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Body::new(Flood { left: size }),
            )
                .into_response();
        }
        Some(Fault::Answer(status, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            return (status, axum::Json(body)).into_response();
        }
        Some(Fault::LoseAnswer) => {
            // Processed in full, then the answer is lost on the way.
            drop(answer(&shared, &headers, &body));
            return (StatusCode::OK, axum::body::Body::new(Broken)).into_response();
        }
        Some(Fault::SlowAnswer(delay)) => {
            let answered = answer(&shared, &headers, &body);
            tokio::time::sleep(delay).await;
            return answered;
        }
        None => {}
    }
    answer(&shared, &headers, &body)
}

/// The token endpoint's answer to a request, as the server processes it.
fn answer(shared: &Arc<Mutex<Inner>>, headers: &HeaderMap, body: &str) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let mut inner = lock(shared);
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    if grant_type == "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return jwt_bearer(&mut inner, &form);
    }
    let client_id = match authenticate(&mut inner, headers, &form) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match grant_type.as_str() {
        "authorization_code" => exchange_code(&mut inner, &client_id, &form),
        "refresh_token" => refresh(&mut inner, &form),
        "urn:ietf:params:oauth:grant-type:device_code" => poll_device(&mut inner, &form),
        "client_credentials" => {
            let scope = form.get("scope").cloned().unwrap_or_default();
            issue_access(&mut inner, &scope, None)
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant type not supported",
        ),
    }
}

fn exchange_code(inner: &mut Inner, client_id: &str, form: &HashMap<String, String>) -> Response {
    let invalid = |why: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why);
    let Some(pending) = inner
        .codes
        .remove(form.get("code").map(String::as_str).unwrap_or_default())
    else {
        return invalid("Malformed auth code.");
    };
    if pending.client_id != client_id || Some(&pending.redirect_uri) != form.get("redirect_uri") {
        return invalid("Bad Request");
    }
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    if URL_SAFE_NO_PAD.encode(digest.as_ref()) != pending.challenge {
        return invalid("Invalid code verifier.");
    }
    let refresh = pending.offline.then(|| new_grant(inner, &pending.scope));
    issue_access(inner, &pending.scope, refresh)
}

fn refresh(inner: &mut Inner, form: &HashMap<String, String>) -> Response {
    inner.counters.refresh_grants += 1;
    let invalid = || {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Token has been expired or revoked.",
        )
    };
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let Some(&(index, current)) = inner.refresh_tokens.get(&presented) else {
        return invalid();
    };
    if !current {
        let grant = &inner.grants[index];
        let within_grace = grant.previous_refresh.as_deref() == Some(presented.as_str())
            && grant
                .rotated_at
                .zip(inner.behaviour.reuse_grace)
                .is_some_and(|(at, grace)| at.elapsed() < grace);
        if within_grace && grant.alive {
            // A retry after a lost answer: the current refresh token again.
            inner.counters.grace_reuses += 1;
            let (scope, current) = (grant.scope.clone(), grant.current_refresh.clone());
            return issue_access(inner, &scope, Some(current));
        }
        // Reuse of a rotated token: the whole grant dies, the newest token too.
        inner.grants[index].alive = false;
        return invalid();
    }
    if !inner.grants[index].alive {
        return invalid();
    }
    let scope = inner.grants[index].scope.clone();
    if !inner.behaviour.rotate {
        return issue_access(inner, &scope, None);
    }
    let next = random("rt-PLANTED-");
    inner.refresh_tokens.insert(presented, (index, false));
    inner.refresh_tokens.insert(next.clone(), (index, true));
    let previous = std::mem::replace(&mut inner.grants[index].current_refresh, next.clone());
    inner.grants[index].previous_refresh = Some(previous);
    inner.grants[index].rotated_at = Some(Instant::now());
    inner.issued_secrets.push(next.clone());
    issue_access(inner, &scope, Some(next))
}

async fn webhook(State(shared): Shared, body: String) -> Response {
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    lock(&shared).webhooks.push(value);
    StatusCode::NO_CONTENT.into_response()
}

/// RFC 8628 §3.1, as a certified server enforces it: the client authenticates here exactly as
/// at the token endpoint, so a confidential client sending its bare `client_id` gets 401.
async fn device_authorization(State(shared): Shared, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let mut inner = lock(&shared);
    if let Err(refusal) = authenticate(&mut inner, &headers, &form) {
        return *refusal;
    }
    let device_code = random("dc-PLANTED-");
    inner.issued_secrets.push(device_code.clone());
    inner.devices.insert(
        device_code.clone(),
        DeviceCode {
            polls: 0,
            last_poll: None,
        },
    );
    let base = inner.base.clone();
    axum::Json(json!({
        "device_code": device_code,
        "user_code": "WDJB-MJHT",
        "verification_uri": format!("{base}/activate"),
        "expires_in": 600,
        "interval": 1,
    }))
    .into_response()
}

/// The user approves on the second poll; `slow_down` first when configured.
fn poll_device(inner: &mut Inner, form: &HashMap<String, String>) -> Response {
    let slow_first = inner.behaviour.device_slow_down_first;
    let code = form.get("device_code").cloned().unwrap_or_default();
    let Some(device) = inner.devices.get_mut(&code) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown device code",
        );
    };
    let now = Instant::now();
    let gap = device.last_poll.map(|last| now - last);
    device.last_poll = Some(now);
    device.polls += 1;
    let polls = device.polls;
    if let Some(gap) = gap {
        inner.counters.device_poll_gaps.push(gap);
    }
    if slow_first && polls == 1 {
        inner.counters.slow_downs += 1;
        return oauth_error(StatusCode::BAD_REQUEST, "slow_down", "polling too fast");
    }
    if polls < 2 + u32::from(slow_first) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "authorization_pending",
            "waiting for the user",
        );
    }
    inner.devices.remove(&code);
    let scope = form
        .get("scope")
        .cloned()
        .unwrap_or_else(|| "offline_access".to_owned());
    let refresh = new_grant(inner, &scope);
    issue_access(inner, &scope, Some(refresh))
}

const GOOGLE_TOKEN_AUDIENCE: &str = "https://oauth2.googleapis.com/token";

/// RFC 7523 checks as Google makes them: RS256 signature, iss, aud, exp - iat ≤ 3600, not expired.
fn jwt_bearer(inner: &mut Inner, form: &HashMap<String, String>) -> Response {
    let invalid = |why: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why);
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return invalid("Invalid JWT: malformed");
    }
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap_or_default();
    let signed = format!("{}.{}", parts[0], parts[1]);
    let signed_by_trusted_key = inner.sa_public_keys.iter().any(|key| {
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key)
            .verify(signed.as_bytes(), &signature)
            .is_ok()
    });
    if !signed_by_trusted_key {
        return invalid("Invalid JWT Signature.");
    }
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap_or_default())
            .unwrap_or_default();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap_or_default())
            .unwrap_or_default();
    // Google's documented audience, which Google's own client library always sends (whatever
    // the key file's token_uri), or this server's token endpoint (the key file's token_uri here,
    // as RFC 7523 suggests and real keys have: they name Google's endpoint).
    let token_url = format!("{}/token", inner.base);
    let audiences = [GOOGLE_TOKEN_AUDIENCE, token_url.as_str()];
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    if header["alg"] != "RS256"
        || claims["iss"] != inner.sa_email.as_str()
        || !audiences.iter().any(|audience| claims["aud"] == *audience)
        || exp.saturating_sub(iat) > 3600
        || exp <= now()
        || iat > now() + 60
    {
        return invalid(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
        );
    }
    let scope = claims["scope"].as_str().unwrap_or_default().to_owned();
    issue_access(inner, &scope, None)
}
