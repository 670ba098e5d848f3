//! The providers' key-management APIs on 127.0.0.1, in the request and answer shapes their
//! documentation gives, acting on the fake OAuth provider's credentials: Google IAM
//! (`projects.serviceAccounts.keys` list/create/delete; a created key is a Google JSON key file,
//! base64, in `privateKeyData`, whose assertions the provider then accepts) and Microsoft Graph
//! (`applications(appId='…')` `passwordCredentials`, `addPassword`, `removePassword`, changing
//! the client secrets the provider accepts). Each checks the caller's bearer token: issued by the
//! provider, for the API's scope. Either can refuse permission, or do what it was asked and
//! then never answer (the vault is killed while it waits).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::KeyPair;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::support::fake_oauth::{CLIENT_ID, CLIENT_SECRET, FakeOAuth};

const FIXTURE_KEY_ID: &str = "0123456789abcdef0123456789abcdef01234567";
const IAM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Which call is carried out and then left unanswered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    List,
    Create,
    Delete,
}

struct Key {
    id: String,
    public: Vec<u8>,
    /// IAM: `validAfterTime`; Graph: `startDateTime`.
    created: String,
    /// Graph only.
    display_name: Option<String>,
    secret: Option<String>,
}

struct World {
    provider: FakeOAuth,
    email: String,
    keys: Vec<Key>,
    spare_pems: VecDeque<String>,
    denied: bool,
    hang_on: Option<Op>,
    /// A hostile API: `keys.create` answers this instead.
    forged_create: Option<Value>,
    /// Each call carried out, in order.
    calls: Vec<Op>,
    base: String,
}

/// A key-management API and what it holds.
#[derive(Clone)]
pub struct FakeKeys {
    world: Arc<Mutex<World>>,
    pub base: String,
    _runtime: Arc<tokio::runtime::Runtime>,
}

impl FakeKeys {
    /// The ids of the keys (or secrets) that exist.
    pub fn key_ids(&self) -> Vec<String> {
        self.world().keys.iter().map(|key| key.id.clone()).collect()
    }

    /// The calls carried out so far.
    pub fn calls(&self) -> Vec<Op> {
        self.world().calls.clone()
    }

    pub fn deny(&self, denied: bool) {
        self.world().denied = denied;
    }

    pub fn hang_on(&self, op: Option<Op>) {
        self.world().hang_on = op;
    }

    /// Makes `keys.create` answer `body` (a hostile or broken API).
    pub fn forge_create(&self, body: Value) {
        self.world().forged_create = Some(body);
    }

    /// The secret texts of the Graph secrets that exist.
    pub fn secrets(&self) -> Vec<String> {
        self.world()
            .keys
            .iter()
            .filter_map(|key| key.secret.clone())
            .collect()
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn public_key(pem: &str) -> Vec<u8> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    pair.public_key().as_ref().to_vec()
}

fn spare_pems() -> VecDeque<String> {
    let text = include_str!("../../fixtures/spare-rsa-keys.pem");
    text.split_inclusive("-----END PRIVATE KEY-----\n")
        .map(str::to_owned)
        .collect()
}

fn serve(world: World, routes: Router<Arc<Mutex<World>>>) -> FakeKeys {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let world = Arc::new(Mutex::new(World {
        base: base.clone(),
        ..world
    }));
    let app = routes.with_state(world.clone());
    runtime.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FakeKeys {
        world,
        base,
        _runtime: Arc::new(runtime),
    }
}

fn empty_world(provider: &FakeOAuth, email: &str) -> World {
    World {
        provider: provider.clone(),
        email: email.to_owned(),
        keys: Vec::new(),
        spare_pems: spare_pems(),
        denied: false,
        hang_on: None,
        forged_create: None,
        calls: Vec::new(),
        base: String::new(),
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buffer = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut buffer).unwrap();
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

type Shared = State<Arc<Mutex<World>>>;

fn lock(world: &Arc<Mutex<World>>) -> std::sync::MutexGuard<'_, World> {
    world
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The caller's bearer token, if the provider issued it for `scope`.
fn authorized(world: &World, headers: &HeaderMap, scope: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| world.provider.access_token_scope(token))
        .is_some_and(|granted| granted == scope)
}

/// Records the call; when it is the one to hang on, the answer never comes.
async fn answer(world: &Arc<Mutex<World>>, op: Op, response: Response) -> Response {
    let hang = {
        let mut world = lock(world);
        world.calls.push(op);
        world.hang_on == Some(op)
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    response
}

// Google IAM.

/// IAM for the fixture service account, holding its fixture key.
pub fn start_iam(provider: &FakeOAuth) -> FakeKeys {
    crate::support::fake_oauth::trust_fixture_service_account(provider);
    let fixture: Value =
        serde_json::from_str(include_str!("../../fixtures/service-account.json")).unwrap();
    let mut world = empty_world(provider, fixture["client_email"].as_str().unwrap());
    world.keys.push(Key {
        id: FIXTURE_KEY_ID.into(),
        public: public_key(fixture["private_key"].as_str().unwrap()),
        created: "2026-01-05T10:00:00Z".into(),
        display_name: None,
        secret: None,
    });
    let keys = "/v1/projects/{project}/serviceAccounts/{email}/keys";
    let routes = Router::new()
        .route(keys, get(iam_list).post(iam_create))
        .route(&format!("{keys}/{{id}}"), axum::routing::delete(iam_delete));
    serve(world, routes)
}

fn google_error(code: u16, status: &str, message: &str) -> Response {
    let body = json!({ "error": { "code": code, "message": message, "status": status } });
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

/// The refusal IAM gives, if any: a wrong token, another service account, no permission.
fn iam_refusal(
    world: &World,
    headers: &HeaderMap,
    project: &str,
    email: &str,
    permission: &str,
) -> Option<Response> {
    if !authorized(world, headers, IAM_SCOPE) {
        return Some(google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        ));
    }
    if project != "-" || email != world.email || world.denied {
        return Some(google_error(
            403,
            "PERMISSION_DENIED",
            &format!("Permission '{permission}' denied on resource (or it may not exist)."),
        ));
    }
    None
}

async fn iam_list(
    State(shared): Shared,
    Path((project, email)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let response = {
        let world = lock(&shared);
        if let Some(refusal) = iam_refusal(
            &world,
            &headers,
            &project,
            &email,
            "iam.serviceAccountKeys.list",
        ) {
            return refusal;
        }
        assert_eq!(query, [("keyTypes".to_owned(), "USER_MANAGED".to_owned())]);
        let keys: Vec<Value> = world
            .keys
            .iter()
            .map(|key| {
                json!({
                    "name": format!("projects/tokenvault-tests/serviceAccounts/{}/keys/{}", world.email, key.id),
                    "validAfterTime": key.created,
                    "validBeforeTime": "9999-12-31T23:59:59Z",
                    "keyAlgorithm": "KEY_ALG_RSA_2048",
                    "keyOrigin": "GOOGLE_PROVIDED",
                    "keyType": "USER_MANAGED",
                })
            })
            .collect();
        // Google leaves an empty list out.
        let body = if keys.is_empty() {
            json!({})
        } else {
            json!({ "keys": keys })
        };
        axum::Json(body).into_response()
    };
    answer(&shared, Op::List, response).await
}

async fn iam_create(
    State(shared): Shared,
    Path((project, email)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let response = {
        let mut world = lock(&shared);
        if let Some(refusal) = iam_refusal(
            &world,
            &headers,
            &project,
            &email,
            "iam.serviceAccountKeys.create",
        ) {
            return refusal;
        }
        let request: Value = serde_json::from_str(&body).unwrap_or_default();
        if request["privateKeyType"] != "TYPE_GOOGLE_CREDENTIALS_FILE" {
            return google_error(400, "INVALID_ARGUMENT", "Invalid value for privateKeyType");
        }
        if let Some(forged) = world.forged_create.clone() {
            return axum::Json(forged).into_response();
        }
        if world.keys.len() >= 10 {
            return google_error(400, "FAILED_PRECONDITION", "Precondition check failed.");
        }
        let pem = world
            .spare_pems
            .pop_front()
            .expect("the test ran out of spare keys");
        let id = random_hex(20);
        let created = now_rfc3339();
        let file = json!({
            "type": "service_account",
            "project_id": "tokenvault-tests",
            "private_key_id": id,
            "private_key": pem,
            "client_email": world.email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": world.provider.token_url(),
        });
        let public = public_key(&pem);
        world
            .provider
            .trust_service_account(&world.email.clone(), public.clone());
        world.keys.push(Key {
            id: id.clone(),
            public,
            created: created.clone(),
            display_name: None,
            secret: None,
        });
        axum::Json(json!({
            "name": format!("projects/tokenvault-tests/serviceAccounts/{}/keys/{id}", world.email),
            "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
            "privateKeyData": STANDARD.encode(file.to_string()),
            "validAfterTime": created,
            "validBeforeTime": "9999-12-31T23:59:59Z",
            "keyAlgorithm": "KEY_ALG_RSA_2048",
            "keyOrigin": "GOOGLE_PROVIDED",
            "keyType": "USER_MANAGED",
        }))
        .into_response()
    };
    answer(&shared, Op::Create, response).await
}

async fn iam_delete(
    State(shared): Shared,
    Path((project, email, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let response = {
        let mut world = lock(&shared);
        if let Some(refusal) = iam_refusal(
            &world,
            &headers,
            &project,
            &email,
            "iam.serviceAccountKeys.delete",
        ) {
            return refusal;
        }
        let Some(index) = world.keys.iter().position(|key| key.id == id) else {
            return google_error(
                404,
                "NOT_FOUND",
                &format!(
                    "Service account key projects/-/serviceAccounts/{email}/keys/{id} does not exist."
                ),
            );
        };
        let key = world.keys.remove(index);
        world.provider.distrust_service_account_key(&key.public);
        axum::Json(json!({})).into_response()
    };
    answer(&shared, Op::Delete, response).await
}

// Microsoft Graph.

/// Graph for the provider's confidential client, holding its one client secret.
pub fn start_graph(provider: &FakeOAuth) -> FakeKeys {
    let mut world = empty_world(provider, "");
    world.keys.push(Key {
        id: "0a1b2c3d-0000-4000-8000-000000000001".into(),
        public: Vec::new(),
        created: "2026-01-05T10:00:00Z".into(),
        display_name: Some("set up by hand".into()),
        secret: Some(CLIENT_SECRET.into()),
    });
    let app = "/v1.0/{app}";
    let routes = Router::new()
        .route(app, get(graph_list))
        .route(&format!("{app}/addPassword"), post(graph_add))
        .route(&format!("{app}/removePassword"), post(graph_remove));
    let keys = serve(world, routes);
    keys.world()
        .provider
        .configure(|b| b.client_secrets = vec![CLIENT_SECRET.into()]);
    keys
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "error": { "code": code, "message": message, "innerError": { "date": now_rfc3339(), "request-id": "5a4b0c1e-0000-4000-8000-000000000000" } } });
    (status, axum::Json(body)).into_response()
}

fn graph_refusal(world: &World, headers: &HeaderMap, app: &str) -> Option<Response> {
    if !authorized(world, headers, &format!("{}/.default", world.base)) {
        return Some(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        ));
    }
    if app != format!("applications(appId='{CLIENT_ID}')") {
        return Some(graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{app}' does not exist or one of its queried reference-property objects are not present."
            ),
        ));
    }
    if world.denied {
        return Some(graph_error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ));
    }
    None
}

fn graph_credential(key: &Key, with_secret: bool) -> Value {
    let secret = key.secret.clone().unwrap_or_default();
    json!({
        "customKeyIdentifier": null,
        "displayName": key.display_name,
        "endDateTime": "2028-12-01T00:00:00Z",
        "hint": secret.chars().take(3).collect::<String>(),
        "keyId": key.id,
        "secretText": if with_secret { json!(secret) } else { Value::Null },
        "startDateTime": key.created,
    })
}

async fn graph_list(
    State(shared): Shared,
    Path(app): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let response = {
        let world = lock(&shared);
        if let Some(refusal) = graph_refusal(&world, &headers, &app) {
            return refusal;
        }
        assert_eq!(
            query,
            [("$select".to_owned(), "passwordCredentials".to_owned())]
        );
        let credentials: Vec<Value> = world
            .keys
            .iter()
            .map(|key| graph_credential(key, false))
            .collect();
        axum::Json(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#applications(passwordCredentials)/$entity",
            "passwordCredentials": credentials,
        }))
        .into_response()
    };
    answer(&shared, Op::List, response).await
}

async fn graph_add(
    State(shared): Shared,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let response = {
        let mut world = lock(&shared);
        if let Some(refusal) = graph_refusal(&world, &headers, &app) {
            return refusal;
        }
        let request: Value = serde_json::from_str(&body).unwrap_or_default();
        let Some(display_name) = request["passwordCredential"]["displayName"].as_str() else {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "Invalid passwordCredential",
            );
        };
        let secret = format!("Qx8~{}", random_hex(16));
        let key = Key {
            id: format!(
                "{}-{}-4{}-8{}-{}",
                random_hex(4),
                random_hex(2),
                &random_hex(2)[1..],
                &random_hex(2)[1..],
                random_hex(6)
            ),
            public: Vec::new(),
            created: now_rfc3339(),
            display_name: Some(display_name.to_owned()),
            secret: Some(secret.clone()),
        };
        let answer = graph_credential(&key, true);
        world.keys.push(key);
        world.provider.configure(|b| b.client_secrets.push(secret));
        axum::Json(answer).into_response()
    };
    answer(&shared, Op::Create, response).await
}

async fn graph_remove(
    State(shared): Shared,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let response = {
        let mut world = lock(&shared);
        if let Some(refusal) = graph_refusal(&world, &headers, &app) {
            return refusal;
        }
        let request: Value = serde_json::from_str(&body).unwrap_or_default();
        let id = request["keyId"].as_str().unwrap_or_default();
        let Some(index) = world.keys.iter().position(|key| key.id == id) else {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                &format!("No password credential found with keyId {id}."),
            );
        };
        let key = world.keys.remove(index);
        let removed = key.secret.unwrap_or_default();
        world
            .provider
            .configure(|b| b.client_secrets.retain(|secret| *secret != removed));
        StatusCode::NO_CONTENT.into_response()
    };
    answer(&shared, Op::Delete, response).await
}
