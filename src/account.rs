//! What an account is: its non-secret settings, its secrets' kinds, and its lifecycle state.

use serde::{Deserialize, Serialize};

use crate::named::named_enum;
use crate::oauth::provider::Endpoints;
use crate::oauth::{ClientAuth, Outcome, RejectionKind};

named_enum! {
    /// The lifecycle state of an account. Every change of state is recorded as an event.
    pub enum AccountState {
        /// The last upstream call succeeded; tokens are being handed out.
        Active = "active",
        /// The last upstream call failed for a passing reason (5xx, timeout, refused connection).
        /// A cached access token is still served while it is valid; the account is retried.
        Degraded = "degraded",
        /// The provider rejected the refresh token or assertion (`invalid_grant`). Nothing but a
        /// new authorization (`vault login`) helps; the vault stops calling upstream for it.
        ReauthRequired = "reauth_required",
        /// The provider rejected the client (`invalid_client`) or the request's configuration
        /// (`invalid_request`, `invalid_scope`, `unsupported_grant_type`, …).
        ClientError = "client_error",
    }
}

/// What a state lets the vault do: the one place where that is decided.
struct Policy {
    /// Refreshed ahead of expiry by the daemon: only a grant that works has a token to keep warm.
    refresh_ahead: bool,
    /// Proven on the validation schedule. A rejected client is, because its fix happens at the
    /// provider (an admin re-enables the client or grants consent) and should be noticed.
    validate: bool,
    /// Refused at once (409) without calling the provider: the grant is dead, and its access
    /// tokens likely revoked with it, so even an unexpired cached one is not handed out.
    refuse_at_once: bool,
}

impl AccountState {
    fn policy(self) -> Policy {
        let (refresh_ahead, validate, refuse_at_once) = match self {
            AccountState::Active | AccountState::Degraded => (true, true, false),
            AccountState::ClientError => (false, true, false),
            AccountState::ReauthRequired => (false, false, true),
        };
        Policy {
            refresh_ahead,
            validate,
            refuse_at_once,
        }
    }

    pub fn may_refresh_ahead(self) -> bool {
        self.policy().refresh_ahead
    }

    pub fn may_validate(self) -> bool {
        self.policy().validate
    }

    pub fn refuses_at_once(self) -> bool {
        self.policy().refuse_at_once
    }

    /// The one place where the outcome of an upstream call decides the account's next state.
    pub fn after(outcome: &Outcome) -> AccountState {
        match outcome {
            Outcome::Refreshed(_) => AccountState::Active,
            Outcome::Transient(_) => AccountState::Degraded,
            Outcome::Permanent(rejection) => match rejection.kind {
                RejectionKind::InvalidGrant => AccountState::ReauthRequired,
                RejectionKind::InvalidClient | RejectionKind::Configuration => {
                    AccountState::ClientError
                }
            },
        }
    }
}

/// An account's change of state, as the store committed it: what the daemon mirrors, the audit
/// log records, the event stream announces and the alerter judges.
#[derive(Debug, Clone)]
pub struct Transition {
    pub account: String,
    pub from: AccountState,
    pub to: AccountState,
    pub reason: Option<String>,
}

named_enum! {
    /// How an account obtains access tokens, by name (`vault list`, events).
    pub enum GrantKind {
        RefreshToken = "refresh_token",
        ServiceAccount = "service_account",
        ClientCredentials = "client_credentials",
    }
}

/// How an account obtains access tokens, with what each way needs. Stored inside the settings
/// JSON as `"grant": "<kind>"` beside its fields, the shape every earlier version wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "grant", rename_all = "snake_case")]
pub enum Grant {
    /// A refresh token from a user's authorization (browser, device or imported).
    RefreshToken {
        client_id: String,
        /// How the user authorized, so `vault login` can do it again.
        login: LoginMethod,
        /// The user whose grant this is (from the ID token), so `vault login` can refuse another.
        #[serde(default)]
        identity: Option<crate::oauth::identity::Identity>,
    },
    /// A Google service-account key signing RFC 7523 JWT assertions.
    ServiceAccount {
        /// The key's `client_email`: the account the metadata endpoint names.
        service_account_email: String,
        /// The user to impersonate (domain-wide delegation), if any.
        subject: Option<String>,
    },
    /// The client's own credentials (`client_credentials`).
    ClientCredentials { client_id: String },
}

impl Grant {
    pub fn kind(&self) -> GrantKind {
        match self {
            Grant::RefreshToken { .. } => GrantKind::RefreshToken,
            Grant::ServiceAccount { .. } => GrantKind::ServiceAccount,
            Grant::ClientCredentials { .. } => GrantKind::ClientCredentials,
        }
    }

    /// The OAuth client's id, for the grants that have a client.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Grant::RefreshToken { client_id, .. } | Grant::ClientCredentials { client_id } => {
                Some(client_id)
            }
            Grant::ServiceAccount { .. } => None,
        }
    }

    /// The user whose grant this is, when known.
    pub fn identity(&self) -> Option<&crate::oauth::identity::Identity> {
        match self {
            Grant::RefreshToken { identity, .. } => identity.as_ref(),
            _ => None,
        }
    }
}

/// How the user authorized a refresh-token account, so `vault login` can do it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginMethod {
    Browser,
    Device,
}

/// An account's settings. None of these is secret; they are stored as JSON in plaintext, signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountConfig {
    #[serde(flatten)]
    pub grant: Grant,
    pub endpoints: Endpoints,
    pub client_auth: ClientAuth,
    pub scopes: Vec<String>,
}

named_enum! {
    /// The kinds of sealed secret an account can hold. The kind is part of each blob's AAD.
    pub enum SecretKind {
        ClientSecret = "client_secret",
        /// The client secret before the newest, kept while a rotation is under way: tried when
        /// the provider refuses the newest with `invalid_client`, until the user retires it.
        PreviousClientSecret = "previous_client_secret",
        RefreshToken = "refresh_token",
        ServiceAccountKey = "service_account_key",
        AccessToken = "access_token",
        /// Where a rotation of the account's own key stands (`store::RotationRecord`, JSON).
        /// Not secret, but sealed: a database edit must not choose which key the provider is
        /// told to delete.
        KeyRotation = "key_rotation",
    }
}

named_enum! {
    /// A date on which one of an account's credentials stops working whatever the vault does;
    /// the user is alerted ahead of it, once per date. Its name is the event recorded then.
    pub enum Deadline {
        /// Announced by the provider (`refresh_token_expires_in`): only a new login helps.
        RefreshToken = "expiring",
        /// Recorded by the user (`vault set-client-secret --expires`): a new secret helps.
        ClientSecret = "client_secret_expiring",
    }
}

/// An account as stored: settings plus what the vault knows of its tokens (never their values).
#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub config: AccountConfig,
    pub state: AccountState,
    pub created_at: i64,
    pub last_refresh_at: Option<i64>,
    pub last_validated_at: Option<i64>,
    pub last_error: Option<String>,
    pub access_expires_at: Option<i64>,
    pub refresh_expires_at: Option<i64>,
    /// When the newest client secret stops working, as the user recorded it (Microsoft Entra
    /// client secrets expire after at most two years).
    pub client_secret_expires_at: Option<i64>,
    /// When the account's own key (service-account key, client secret) in use was created at
    /// the provider, when known; else the account's `created_at` stands in.
    pub key_created_at: Option<i64>,
    /// How often the daemon rotates that key, in seconds (`vault schedule --rotate-every`).
    pub rotate_every: Option<i64>,
    /// The account's own validation schedule (cron), overriding config.toml's.
    pub validation_schedule: Option<String>,
    /// The account's own refresh-ahead margin in seconds, overriding config.toml's.
    pub refresh_before: Option<u64>,
    /// Incremented by every committed change of its tokens or state: a refresh commits only if
    /// it is still the one read before the provider was called.
    pub generation: i64,
    /// A previous client secret is kept beside the newest (a client-secret rotation under way):
    /// a refresh falls back to it when the provider refuses the newest.
    pub keeps_previous_client_secret: bool,
}

/// Someone besides the vault's owner who may fetch an account's access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    Uid(u32),
    /// Matched against the caller's primary group (what SO_PEERCRED reports).
    Gid(u32),
}

impl Principal {
    pub fn kind(self) -> &'static str {
        match self {
            Principal::Uid(_) => "uid",
            Principal::Gid(_) => "gid",
        }
    }

    pub fn id(self) -> u32 {
        match self {
            Principal::Uid(id) | Principal::Gid(id) => id,
        }
    }

    pub fn from_parts(kind: &str, id: u32) -> Option<Principal> {
        match kind {
            "uid" => Some(Principal::Uid(id)),
            "gid" => Some(Principal::Gid(id)),
            _ => None,
        }
    }
}

/// What the daemon keeps of each account: enough to authorize and answer, no settings parsed.
#[derive(Debug, Clone)]
pub struct AccountSummary {
    pub name: String,
    pub state: AccountState,
    pub access_expires_at: Option<i64>,
    pub last_refresh_at: Option<i64>,
    pub last_validated_at: Option<i64>,
    /// A cron expression overriding the global validation schedule.
    pub validation_schedule: Option<String>,
    /// Seconds before expiry to refresh, overriding the global setting.
    pub refresh_before: Option<u64>,
    /// The configured scopes, space-separated.
    pub scope: String,
    /// What the provider said when the last upstream call failed.
    pub last_error: Option<String>,
}

/// A hash of an account name that every process and version computes alike (FNV-1a, 64 bits):
/// the byte an account locks in `refresh.lock`, and the jitter that spreads accounts' refreshes
/// and validations, must not change with the compiler that built the daemon.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Account names go into URL paths, log lines, metric labels and shell recipes: keep them to a
/// safe alphabet.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "account name {name:?} is not allowed: use 1-64 letters, digits, '-', '_', '.', '@', not starting with '.'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_hash_is_fnv_1a() {
        assert_eq!(name_hash("mail"), 2_258_947_338_516_563_758);
        assert_eq!(name_hash(""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn state_names_round_trip() {
        for &state in AccountState::ALL {
            assert_eq!(AccountState::parse(state.as_str()), Some(state));
        }
    }

    /// Settings as versions before the tagged grant wrote them (every field at the top level,
    /// nulls for what a grant does not use) load as the right variant and round-trip.
    #[test]
    fn settings_written_before_the_tagged_grant_still_load() {
        let endpoints = r#""endpoints": {"provider": "custom", "token_url": "https://p/token", "auth_url": null, "device_url": null, "issuer": null, "revocation_url": null, "offline": "as_configured"}"#;
        let stored = [
            (
                r#""grant": "refresh_token", "client_id": "id", "client_auth": "basic", "scopes": ["a"], "login": "device", "service_account_email": null, "key_id": null, "subject": null, "identity": {"subject": "alice", "email": null}"#,
                GrantKind::RefreshToken,
            ),
            (
                r#""grant": "service_account", "client_id": null, "client_auth": "post", "scopes": ["a"], "login": "browser", "service_account_email": "sa@p.iam", "key_id": "k1", "subject": "bob@example.com""#,
                GrantKind::ServiceAccount,
            ),
            (
                r#""grant": "client_credentials", "client_id": "svc", "client_auth": "post", "scopes": [], "login": "browser", "service_account_email": null, "key_id": null, "subject": null"#,
                GrantKind::ClientCredentials,
            ),
        ];
        for (fields, kind) in stored {
            let json = format!("{{{fields}, {endpoints}}}");
            let config: AccountConfig = serde_json::from_str(&json).expect(&json);
            assert_eq!(config.grant.kind(), kind);
            let again: AccountConfig =
                serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
            assert_eq!(again, config);
        }
        let config: AccountConfig =
            serde_json::from_str(&format!("{{{}, {endpoints}}}", stored[0].0)).unwrap();
        assert_eq!(config.grant.identity().map(|id| id.shown()), Some("alice"));
        let config: AccountConfig =
            serde_json::from_str(&format!("{{{}, {endpoints}}}", stored[1].0)).unwrap();
        assert_eq!(
            config.grant,
            Grant::ServiceAccount {
                service_account_email: "sa@p.iam".into(),
                subject: Some("bob@example.com".into()),
            }
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("work-gmail").is_ok());
        assert!(validate_name("me@example.com").is_ok());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
    }
}
