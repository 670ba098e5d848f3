//! Alerts: when an account enters `reauth_required` or `client_error`, or stays `degraded` longer
//! than a threshold, and once "recovered" when it heals. One alert per state change, never one
//! per retry. Sinks: the daemon's log (always), `alert.command`, `alert.webhook`, and a desktop
//! notification where a session bus exists. No sink ever blocks the daemon, and no secret is
//! ever in an alert: only the account name, the event and the reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::account::{AccountState, Deadline, Transition};
use crate::clock::now_unix;
use crate::config::AlertConfig;
use crate::daemon::metrics::Metrics;
use crate::log::Level;
use crate::named::named_enum;

/// A slow alert command is killed after this.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
const WEBHOOK_ATTEMPTS: u32 = 3;

named_enum! {
    /// What an alert is about. Serialized (webhook JSON) and passed (`VAULT_EVENT`) as its name.
    pub enum AlertEvent {
        ReauthRequired = "reauth_required",
        ClientError = "client_error",
        Degraded = "degraded",
        Recovered = "recovered",
        Expiring = "expiring",
        ClientSecretExpiring = "client_secret_expiring",
        /// The account's key is older than its rotation age and the provider does not let the
        /// vault rotate it.
        Aging = "aging",
        /// A due rotation of the account's key failed; the key in use is kept.
        RotationFailed = "rotation_failed",
        /// The provider rotated the refresh token and the vault could not store the new one.
        RefreshTokenUncommitted = "refresh_token_uncommitted",
    }
}

impl AlertEvent {
    /// A due key rotation failed: the key only ages when the provider does not let the vault
    /// rotate it at all; any other failure may pass.
    pub fn for_unrotated_key(denied: bool) -> AlertEvent {
        if denied {
            AlertEvent::Aging
        } else {
            AlertEvent::RotationFailed
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// A fleet's alert row: the same on every host that might deliver it, so a receiver can
    /// drop a duplicate (also the `webhook-id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub account: String,
    pub event: AlertEvent,
    pub reason: String,
    pub at: i64,
}

/// What the alerter is told.
enum Message {
    Changed(Transition),
    /// Sent as it is.
    Raised(Alert),
    /// A credential stops working at `at`, whatever the vault does.
    DeadlineNear {
        deadline: Deadline,
        account: String,
        at: i64,
    },
}

/// The alerter's handle: state changes in, alerts out on its own task.
#[derive(Clone)]
pub struct Alerts {
    sender: mpsc::UnboundedSender<Message>,
}

impl Alerts {
    /// Starts the alerter; fails only when a configured webhook signing secret cannot be used.
    pub fn start(
        config: AlertConfig,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Alerts, String> {
        let signer = match &config.webhook_secret_file {
            Some(path) => Some(Arc::new(WebhookSigner::load(path)?)),
            None => None,
        };
        let sinks = Sinks {
            config,
            http,
            signer,
            metrics,
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(sinks, receiver));
        Ok(Alerts { sender })
    }

    pub fn state_changed(&self, change: Transition) {
        let _ = self.sender.send(Message::Changed(change));
    }

    /// A due key rotation failed (`AlertEvent::for_unrotated_key`); the reason names the fix.
    pub fn key_not_rotated(&self, account: String, event: AlertEvent, reason: String) {
        let _ = self.sender.send(Message::Raised(Alert {
            id: None,
            account,
            event,
            reason,
            at: now_unix(),
        }));
    }

    /// The provider rotated `account`'s refresh token and the new one could not be stored
    /// (`reason`). Sent from this host: only it held the new token, and a fleet's outbox may be
    /// as unreachable as the store.
    pub fn rotation_uncommitted(&self, account: String, reason: String) {
        let _ = self.sender.send(Message::Raised(Alert {
            id: None,
            account,
            event: AlertEvent::RefreshTokenUncommitted,
            reason,
            at: now_unix(),
        }));
    }

    /// An alert decided elsewhere (a fleet's outbox), sent as it is.
    pub fn deliver(&self, alert: Alert) {
        let _ = self.sender.send(Message::Raised(alert));
    }

    pub fn deadline_near(&self, deadline: Deadline, account: String, at: i64) {
        let _ = self.sender.send(Message::DeadlineNear {
            deadline,
            account,
            at,
        });
    }
}

/// What the alerter remembers per account.
#[derive(Default)]
struct Watch {
    /// Degraded since, while degraded.
    degraded_since: Option<i64>,
    /// An alert went out and no "recovered" yet.
    alerted: bool,
}

async fn run(sinks: Sinks, mut messages: mpsc::UnboundedReceiver<Message>) {
    let mut watches: HashMap<String, Watch> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(Message::Changed(change)) => {
                    let watch = watches.entry(change.account.clone()).or_default();
                    if let Some(alert) = on_change(watch, &change) {
                        sinks.send(alert);
                    }
                }
                Some(Message::Raised(alert)) => sinks.send(alert),
                Some(Message::DeadlineNear { deadline, account, at }) => {
                    sinks.send(deadline_near(deadline, account, at));
                }
                None => return,
            },
            _ = tick.tick() => {
                for (account, watch) in &mut watches {
                    if let Some(alert) = on_tick(watch, account, sinks.config.degraded_after_seconds) {
                        sinks.send(alert);
                    }
                }
            }
        }
    }
}

/// The alert a state change calls for, if any.
fn on_change(watch: &mut Watch, change: &Transition) -> Option<Alert> {
    let reason = change.reason.clone().unwrap_or_default();
    let event = match change.to {
        AccountState::ReauthRequired => Some(AlertEvent::ReauthRequired),
        AccountState::ClientError => Some(AlertEvent::ClientError),
        AccountState::Degraded => {
            watch.degraded_since.get_or_insert(now_unix());
            None
        }
        AccountState::Active if watch.alerted => Some(AlertEvent::Recovered),
        AccountState::Active => None,
    };
    if change.to != AccountState::Degraded {
        watch.degraded_since = None;
    }
    let event = event?;
    watch.alerted = event != AlertEvent::Recovered;
    Some(Alert {
        id: None,
        account: change.account.clone(),
        event,
        reason,
        at: now_unix(),
    })
}

/// The alert ahead of a credential's own deadline, naming what helps.
fn deadline_near(deadline: Deadline, account: String, at: i64) -> Alert {
    let (event, reason) = deadline_alert(deadline, &account, at);
    Alert {
        id: None,
        reason,
        account,
        event,
        at: now_unix(),
    }
}

/// What the alert ahead of `deadline` (at `at`) of `account` says.
pub fn deadline_alert(deadline: Deadline, account: &str, at: i64) -> (AlertEvent, String) {
    let left = humantime::format_duration(Duration::from_secs(
        at.saturating_sub(now_unix()).max(0) as u64,
    ));
    match deadline {
        Deadline::RefreshToken => (
            AlertEvent::Expiring,
            format!(
                "the provider gave its refresh token a deadline: it stops working in {left} (a Google app in \"Testing\" status, or time-bound access). Authorize again before then: vault login {account}"
            ),
        ),
        Deadline::ClientSecret => (
            AlertEvent::ClientSecretExpiring,
            format!(
                "its client secret expires in {left}. Create a new secret for the app at the provider, then: vault set-client-secret {account} --expires DATE"
            ),
        ),
    }
}

/// A "degraded" alert once an account has been degraded for `threshold` seconds.
fn on_tick(watch: &mut Watch, account: &str, threshold: u64) -> Option<Alert> {
    let since = watch.degraded_since?;
    if watch.alerted || now_unix() - since < threshold as i64 {
        return None;
    }
    watch.alerted = true;
    Some(Alert {
        id: None,
        account: account.to_owned(),
        event: AlertEvent::Degraded,
        reason: format!(
            "the provider has failed transiently for {} s",
            now_unix() - since
        ),
        at: now_unix(),
    })
}

/// Where alerts go.
struct Sinks {
    config: AlertConfig,
    http: reqwest::Client,
    signer: Option<Arc<WebhookSigner>>,
    metrics: Arc<Metrics>,
}

impl Sinks {
    fn send(&self, alert: Alert) {
        crate::log::emit(
            Level::Warning,
            "alert",
            &[
                ("account", &alert.account),
                ("event", alert.event.as_str()),
                ("reason", &alert.reason),
            ],
        );
        if let Some(command) = self.config.command.clone() {
            let metrics = self.metrics.clone();
            let alert = alert.clone();
            tokio::spawn(async move {
                metrics.alert("command", run_command(command, alert).await);
            });
        }
        if let Some(url) = self.config.webhook.clone() {
            let (http, signer, metrics) =
                (self.http.clone(), self.signer.clone(), self.metrics.clone());
            let alert = alert.clone();
            tokio::spawn(async move {
                metrics.alert("webhook", post_webhook(http, url, signer, alert).await);
            });
        }
        if self.config.desktop && session_bus_present() {
            tokio::spawn(notify_desktop(alert));
        }
    }
}

/// Whether a desktop session bus is there for notify-send: its address is set and, when it
/// names a socket file, that file exists.
pub(crate) fn session_bus_present() -> bool {
    let Some(address) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS") else {
        return false;
    };
    let address = address.to_string_lossy();
    match address
        .strip_prefix("unix:path=")
        .map(|rest| rest.split(',').next().unwrap_or(rest))
    {
        Some(path) => std::path::Path::new(path).exists(),
        None => true,
    }
}

/// Signs webhooks the Standard Webhooks way, so a receiver can tell the vault's alerts from
/// forged ones and drop replays: `webhook-signature: v1,<base64 HMAC-SHA256 of
/// "{webhook-id}.{webhook-timestamp}.{body}">`.
pub struct WebhookSigner(ring::hmac::Key);

impl WebhookSigner {
    /// The secret as Standard Webhooks writes it (`whsec_` + base64), or any other text, whose
    /// bytes are then the key.
    fn load(path: &std::path::Path) -> Result<WebhookSigner, String> {
        use base64::Engine;
        let text = crate::files::read_private_file(path)?;
        let key = match text.expose().strip_prefix(b"whsec_") {
            Some(encoded) => crate::secret::Secret::new(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| {
                        format!("{}: whsec_ must be followed by base64", path.display())
                    })?,
            ),
            None => text,
        };
        if key.expose().len() < 16 {
            return Err(format!(
                "{}: the webhook secret is shorter than 16 bytes; make one with: echo \"whsec_$(head -c 32 /dev/urandom | base64)\" > FILE",
                path.display()
            ));
        }
        Ok(WebhookSigner(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            key.expose(),
        )))
    }

    fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        use base64::Engine;
        let mut context = ring::hmac::Context::with_key(&self.0);
        context.update(format!("{id}.{timestamp}.").as_bytes());
        context.update(body);
        let tag = context.sign();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    }
}

/// `/bin/sh -c COMMAND` with the alert in its environment (never interpolated into the command).
/// Whether the command ran and succeeded.
async fn run_command(command: String, alert: Alert) -> bool {
    let child = crate::process::with_allowed_env(&mut tokio::process::Command::new("/bin/sh"))
        .arg("-c")
        .arg(&command)
        .env("VAULT_ACCOUNT", &alert.account)
        .env("VAULT_EVENT", alert.event.as_str())
        .env("VAULT_REASON", &alert.reason)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            crate::log::emit(
                Level::Warning,
                "alert command could not start",
                &[("error", &err.to_string())],
            );
            return false;
        }
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => return true,
        Ok(Ok(status)) => crate::log::emit(
            Level::Warning,
            "alert command failed",
            &[("status", &status.to_string())],
        ),
        Ok(Err(err)) => crate::log::emit(
            Level::Warning,
            "alert command failed",
            &[("error", &err.to_string())],
        ),
        Err(_) => crate::log::emit(
            Level::Warning,
            "alert command took too long; killed",
            &[("seconds", &COMMAND_TIMEOUT.as_secs().to_string())],
        ),
    }
    false
}

/// POSTs the alert as JSON, retried with the same `webhook-id` (receivers deduplicate on it),
/// each attempt timestamped and, with a secret, signed. Whether it was delivered.
async fn post_webhook(
    http: reqwest::Client,
    url: url::Url,
    signer: Option<Arc<WebhookSigner>>,
    alert: Alert,
) -> bool {
    let Ok(body) = serde_json::to_vec(&alert) else {
        return false;
    };
    let id = match alert.id {
        // Every host that may deliver a fleet's alert names it alike.
        Some(id) => format!("msg_fleet_{id}"),
        None => crate::crypto::random_bytes::<12>().map_or_else(
            |_| format!("msg_{}_{}", alert.at, alert.account),
            |bytes| {
                let hex: String = bytes.expose().iter().map(|b| format!("{b:02x}")).collect();
                format!("msg_{hex}")
            },
        ),
    };
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let timestamp = now_unix();
        let mut request = http
            .post(url.clone())
            .timeout(WEBHOOK_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .body(body.clone());
        if let Some(signer) = &signer {
            request = request.header("webhook-signature", signer.signature(&id, timestamp, &body));
        }
        let sent = request.send().await;
        match sent {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) => crate::log::emit(
                Level::Warning,
                "alert webhook refused",
                &[
                    ("status", response.status().as_str()),
                    ("attempt", &attempt.to_string()),
                ],
            ),
            Err(_) => crate::log::emit(
                Level::Warning,
                "alert webhook unreachable",
                &[("attempt", &attempt.to_string())],
            ),
        }
        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
    }
    false
}

async fn notify_desktop(alert: Alert) {
    let _ = crate::process::with_allowed_env(&mut tokio::process::Command::new("notify-send"))
        .args([
            "--app-name=tokenvault",
            &format!("tokenvault: {} {}", alert.account, alert.event.as_str()),
            &alert.reason,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(to: AccountState) -> Transition {
        Transition {
            account: "a".into(),
            from: AccountState::Active,
            to,
            reason: Some("why".into()),
        }
    }

    #[test]
    fn one_alert_per_change_and_one_recovery() {
        let mut watch = Watch::default();
        assert_eq!(
            on_change(&mut watch, &change(AccountState::ReauthRequired))
                .unwrap()
                .event,
            AlertEvent::ReauthRequired
        );
        assert_eq!(
            on_change(&mut watch, &change(AccountState::Active))
                .unwrap()
                .event,
            AlertEvent::Recovered
        );
        assert!(on_change(&mut watch, &change(AccountState::Active)).is_none());
    }

    #[test]
    fn degraded_alerts_only_when_it_lasts() {
        let mut watch = Watch::default();
        assert!(on_change(&mut watch, &change(AccountState::Degraded)).is_none());
        assert!(on_tick(&mut watch, "a", 3600).is_none());
        // Short blips heal silently.
        assert!(on_change(&mut watch, &change(AccountState::Active)).is_none());
        on_change(&mut watch, &change(AccountState::Degraded));
        assert_eq!(
            on_tick(&mut watch, "a", 0).unwrap().event,
            AlertEvent::Degraded
        );
        assert!(on_tick(&mut watch, "a", 0).is_none(), "once");
        assert_eq!(
            on_change(&mut watch, &change(AccountState::Active))
                .unwrap()
                .event,
            AlertEvent::Recovered
        );
    }
}
