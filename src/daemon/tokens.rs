//! The daemon's core: the account table, the coordinator that runs refreshes through the
//! shared pipeline (`refresh`), and the notifier. The HTTP edge and the background duties ask
//! it for tokens; it answers with tokens or typed failures, never with HTTP statuses.

use std::sync::Arc;

use parking_lot::Mutex;

use super::alert::{Alert, AlertEvent, Alerts};
use super::audit::Audit;
use super::events::Events;
use super::flight::{self, Failure, Refreshed};
use super::metrics::{Metrics, Snapshot};
use super::notify::Notifier;
use super::table::{AccountTable, CachedToken, Lookup, Peer, Slot};
use crate::account::{AccountState, Deadline, Grant};
use crate::clock::now_unix;
use crate::error::Error;
use crate::refresh::{self, Begun, Need, PendingCall};
use crate::store::{AnyGuard, AnyStore, RotationDue, SharedStore, StoreError};

/// Daemon-wide settings for refreshes.
#[derive(Debug, Clone, Copy)]
pub struct RefreshSettings {
    pub refresh_before: Option<u64>,
    pub max_backoff: u64,
}

pub struct Tokens {
    store: SharedStore,
    http: reqwest::Client,
    table: AccountTable,
    notifier: Notifier,
    metrics: Arc<Metrics>,
    settings: RefreshSettings,
    /// The vault this daemon serves (not secret), so clients can tell it is theirs.
    vault_id: String,
    data_version: Mutex<i64>,
}

impl Tokens {
    pub fn load(
        store: AnyStore,
        audit: Audit,
        alerts: Alerts,
        metrics: Arc<Metrics>,
        settings: RefreshSettings,
        owner_uid: u32,
    ) -> Result<Tokens, Error> {
        let alerts_from_outbox = store.fleet().is_some();
        let tokens = Tokens {
            data_version: Mutex::new(store.data_version()?),
            vault_id: store.vault_id()?,
            store: store.shared(),
            http: crate::oauth::token::http_client(),
            table: AccountTable::new(owner_uid),
            notifier: Notifier {
                audit,
                alerts,
                events: Events::default(),
                alerts_from_outbox,
            },
            metrics,
            settings,
        };
        tokens.reload_now()?;
        Ok(tokens)
    }

    pub fn table(&self) -> &AccountTable {
        &self.table
    }

    /// The fleet's changes as this daemon hears them (none for the embedded vault, whose
    /// changes are polled).
    pub fn change_feed(&self) -> Option<crate::store::ChangeFeed> {
        self.store.lock().fleet()?.change_feed()
    }

    /// The account `peer` asks for (see `AccountTable::lookup`).
    pub fn lookup(&self, peer: Peer, name: &str) -> Lookup {
        self.table.lookup(peer, name)
    }

    /// A token for `slot` as `need` says: from memory when possible, else from exactly one
    /// refresh however many callers ask at once. The refresh runs on a task of its own: a caller
    /// hanging up must not cancel it between the provider's answer and its commit, when the
    /// answer holds the only copy of a rotated refresh token.
    pub async fn obtain(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        need: Need,
    ) -> Result<Arc<CachedToken>, Failure> {
        if let Some(token) = flight::from_memory(slot, need) {
            return Ok(token);
        }
        let (tokens, task_slot) = (self.clone(), slot.clone());
        let refresh = tokio::spawn(async move { tokens.obtain_in_flight(&task_slot, need).await });
        match tokio::time::timeout(CALLER_WAIT, refresh).await {
            Ok(joined) => joined
                .unwrap_or_else(|_| Err(Failure::internal("the refresh task ended abnormally"))),
            Err(_) => Err(Failure::still_running(slot.name())),
        }
    }

    async fn obtain_in_flight(&self, slot: &Slot, need: Need) -> Result<Arc<CachedToken>, Failure> {
        flight::obtain(slot, need, self.settings.max_backoff, || {
            self.refresh(slot, need)
        })
        .await
    }

    /// Runs a background refresh of `slot` unless one is already running for it.
    pub fn spawn_background(self: &Arc<Self>, slot: &Arc<Slot>, need: Need) {
        if !slot.start_background() {
            return;
        }
        let (tokens, slot) = (self.clone(), slot.clone());
        tokio::spawn(async move {
            let _ = tokens.obtain_in_flight(&slot, need).await;
            slot.end_background();
        });
    }

    /// Validates `slot` for the firing at `firing`, unless another fleet host took that firing.
    pub fn validate_once(self: &Arc<Self>, slot: &Arc<Slot>, firing: i64) {
        let (tokens, slot) = (self.clone(), slot.clone());
        tokio::spawn(async move {
            let (store, name) = (tokens.store.clone(), slot.name().to_owned());
            let claimed = blocking(move || {
                let store = store.lock();
                Ok(store.claim_validation(&name, firing)?)
            })
            .await;
            match claimed {
                Ok(true) => tokens.spawn_background(&slot, Need::Proof),
                Ok(false) => {}
                Err(err) => crate::log::emit(
                    crate::log::Level::Warning,
                    "cannot claim a validation",
                    &[("account", slot.name()), ("error", &err.to_string())],
                ),
            }
        });
    }

    /// Runs the validations another host claimed and did not finish (it died, or its proof
    /// failed), once their claim ran out.
    pub async fn rerun_abandoned_validations(self: &Arc<Self>) {
        let store = self.store.clone();
        let names = blocking(move || {
            let store = store.lock();
            Ok(store.claim_abandoned_validations()?)
        })
        .await;
        match names {
            Ok(names) => self.table.for_each(|slot| {
                if names.iter().any(|name| name == slot.name()) {
                    self.spawn_background(slot, Need::Proof);
                }
            }),
            Err(err) => crate::log::emit(
                crate::log::Level::Warning,
                "cannot look for abandoned validations",
                &[("error", &err.to_string())],
            ),
        }
    }

    /// One run of the refresh pipeline: begin (under the account's refresh guard, on a blocking
    /// thread), send, settle (likewise). The state the store committed is mirrored and
    /// announced; the token is cached.
    async fn refresh(&self, slot: &Slot, need: Need) -> Refreshed {
        let store = self.store.clone();
        let name = slot.name().to_owned();
        let scope = slot.scope().clone();
        // A stored token is copied for the cache on the blocking thread that read it: the
        // 100,000 long-lived copies a big vault loads then sit among that thread's few short-lived
        // allocations, not among the request buffers of the runtime's threads (whose holes they
        // would split, growing the heap).
        let give_up = std::time::Instant::now() + LEASE_WAIT;
        let begun = loop {
            let (store, name, scope) = (store.clone(), name.clone(), scope.clone());
            let begun = blocking(move || {
                let store = patient_lock(&store)?;
                Ok(match refresh::begin(&*store, &name, need)? {
                    Begun::Cached(token) => Started::Stored(CachedToken::new(&token, scope)),
                    Begun::Call(call) => Started::Call(call),
                })
            })
            .await;
            match begun {
                // Another host of the fleet is refreshing it: wait for its commit without
                // holding the store, which every other request and duty of this daemon needs.
                Err(Error::Store(StoreError::LeaseHeld(_)))
                    if std::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(LEASE_RETRY).await;
                }
                begun => break begun?,
            }
        };
        let (token, upstream_problem) = match begun {
            Started::Stored(stored) => (stored, None),
            Started::Call(call) => self.call_upstream(slot, need, call).await?,
        };
        if slot.cache(token.clone(), upstream_problem.is_none()) {
            self.notifier.token_replaced(slot.name(), token.expires_at);
        }
        Ok((token, upstream_problem))
    }

    /// Sends a pending call and settles it (on a blocking thread); the state the store committed
    /// is mirrored and announced.
    async fn call_upstream(
        &self,
        slot: &Slot,
        need: Need,
        call: Box<PendingCall<AnyGuard>>,
    ) -> Refreshed {
        let started = std::time::Instant::now();
        let answered = call.send(&self.http).await;
        let seconds = started.elapsed().as_secs_f64();
        self.metrics
            .upstream_call(slot.name(), need, answered.outcome(), seconds);
        let store = self.store.clone();
        let settled = blocking(move || {
            let mut store = store.lock();
            Ok(answered.settle(&mut *store))
        })
        .await?;
        if let Some(transition) = settled.transition {
            slot.set_state(transition.to);
            self.notifier.state_changed(transition);
        }
        if settled.rotation_uncommitted {
            self.rotation_uncommitted(slot.name(), &settled.issued);
        }
        if settled.fell_back {
            crate::log::emit(
                crate::log::Level::Warning,
                "the provider refused the newest client secret; the previous one was used",
                &[
                    ("account", slot.name()),
                    (
                        "fix",
                        "check the secret, then: vault set-client-secret NAME",
                    ),
                ],
            );
        }
        let issued = settled.issued?;
        let scope = settled
            .scope
            .map_or_else(|| slot.scope().clone(), Arc::from);
        Ok((
            CachedToken::new(&issued.token, scope),
            issued.upstream_problem,
        ))
    }

    /// The provider rotated the account's refresh token and the store refused the new one (its
    /// commit failed for good): said at once, as a warning and an alert, before the old token
    /// is refused at the next refresh.
    fn rotation_uncommitted(&self, name: &str, committed: &Result<refresh::Issued, Error>) {
        let reason = committed
            .as_ref()
            .err()
            .map_or_else(String::new, ToString::to_string);
        crate::log::emit(
            crate::log::Level::Warning,
            "a rotated refresh token could not be stored",
            &[("account", name), ("error", &reason)],
        );
        self.notifier
            .alerts
            .rotation_uncommitted(name.to_owned(), reason);
    }

    /// Alerts every `deadline` less than `before` seconds away, once per date (recorded in the
    /// vault).
    pub async fn alert_deadlines(&self, deadline: Deadline, before: u64) {
        let store = self.store.clone();
        let until = now_unix().saturating_add(i64::try_from(before).unwrap_or(i64::MAX));
        let due = blocking(move || {
            let mut store = store.lock();
            Ok(match &mut *store {
                AnyStore::Local(store) => store.take_deadlines(deadline, until)?,
                // Once per fleet, through the outbox (the outbox duty delivers it).
                AnyStore::Fleet(store) => {
                    store.alert_deadlines(deadline, until, crate::daemon::alert::deadline_alert)?;
                    Vec::new()
                }
            })
        })
        .await;
        match due {
            Ok(due) => {
                for (name, at) in due {
                    self.notifier.alerts.deadline_near(deadline, name, at);
                }
            }
            Err(err) => crate::log::emit(
                crate::log::Level::Warning,
                "cannot check credential deadlines",
                &[("error", &err.to_string())],
            ),
        }
    }

    /// The accounts whose key the rotation duty looks at; `None` (logged) when the store
    /// cannot say.
    pub async fn rotation_candidates(&self) -> Option<Vec<RotationDue>> {
        let store = self.store.clone();
        let candidates = blocking(move || {
            let store = store.lock();
            Ok(store.rotation_candidates()?)
        })
        .await;
        candidates
            .inspect_err(|err| {
                crate::log::emit(
                    crate::log::Level::Warning,
                    "cannot check which keys to rotate",
                    &[("error", &err.to_string())],
                );
            })
            .ok()
    }

    /// Rotates account `name`'s own key at its provider, and tells of it (ids only).
    pub async fn rotate_key(&self, name: &str) -> Result<(), Error> {
        let report =
            crate::rotation::rotate(&self.store, &self.http, name, crate::rotation::When::IfDue)
                .await?;
        let replaced = report.retired.as_deref().unwrap_or("");
        match &report.new_key {
            Some(key_id) => {
                crate::log::emit(
                    crate::log::Level::Info,
                    "rotated the account's key",
                    &[
                        ("account", name),
                        ("key_id", key_id),
                        ("replaced", replaced),
                    ],
                );
                self.notifier
                    .key_rotated(name, key_id, report.retired.as_deref());
            }
            None if report.retired.is_some() || !report.strays.is_empty() => crate::log::emit(
                crate::log::Level::Info,
                "finished an interrupted key rotation",
                &[("account", name), ("deleted", replaced)],
            ),
            // Rotated meanwhile by another host or process.
            None => {}
        }
        Ok(())
    }

    /// A rotation failed: logged each time, alerted once per due date (recorded in the vault,
    /// so a restart does not repeat it).
    pub async fn key_not_rotated(&self, name: &str, due_at: Option<i64>, error: &Error) {
        let reason = error.to_string();
        crate::log::emit(
            crate::log::Level::Warning,
            "the account's key was not rotated",
            &[("account", name), ("error", &reason)],
        );
        let denied = matches!(error, Error::Rotation(rotation) if rotation.is_denied());
        let event = AlertEvent::for_unrotated_key(denied);
        let (store, account) = (self.store.clone(), name.to_owned());
        let detail = due_at.map_or_else(|| "unfinished".to_owned(), |at| at.to_string());
        let told = reason.clone();
        let first = blocking(move || {
            let mut store = store.lock();
            Ok(match &mut *store {
                AnyStore::Local(store) => store.record_once(&account, event.as_str(), &detail)?,
                // Once per fleet, through the outbox (the outbox duty delivers it).
                AnyStore::Fleet(store) => {
                    store.alert_once(&account, event, due_at.unwrap_or(0), &told)?;
                    false
                }
            })
        })
        .await;
        if first.unwrap_or(true) {
            self.notifier
                .alerts
                .key_not_rotated(name.to_owned(), event, reason);
        }
    }

    /// Tells the fleet this host's daemon is alive (logged when the database cannot be told).
    pub async fn heartbeat(&self) {
        let store = self.store.clone();
        let told = blocking(move || {
            let store = store.lock();
            Ok(store.fleet().ok_or_else(not_in_fleet)?.heartbeat()?)
        })
        .await;
        if let Err(err) = told {
            crate::log::emit(
                crate::log::Level::Warning,
                "cannot reach the fleet database",
                &[("error", &err.to_string())],
            );
        }
    }

    /// A fleet's alert outbox: writes the alerts for accounts degraded longer than
    /// `degraded_after`, then delivers what no host is delivering through this daemon's sinks.
    pub async fn deliver_outbox(&self, degraded_after: u64) {
        let store = self.store.clone();
        let claimed = blocking(move || {
            let store = store.lock();
            let fleet = store.fleet().ok_or_else(not_in_fleet)?;
            fleet.alert_long_degraded(degraded_after)?;
            Ok(fleet.claim_alerts()?)
        })
        .await;
        let claimed = match claimed {
            Ok(claimed) if claimed.is_empty() => return,
            Ok(claimed) => claimed,
            Err(err) => {
                crate::log::emit(
                    crate::log::Level::Warning,
                    "cannot read the fleet's alerts",
                    &[("error", &err.to_string())],
                );
                return;
            }
        };
        let ids: Vec<i64> = claimed.iter().map(|alert| alert.id).collect();
        for alert in claimed {
            self.notifier.alerts.deliver(Alert {
                id: Some(alert.id),
                account: alert.account,
                event: alert.event,
                reason: alert.reason,
                at: alert.at,
            });
        }
        let store = self.store.clone();
        let marked = blocking(move || {
            let store = store.lock();
            Ok(store
                .fleet()
                .ok_or_else(not_in_fleet)?
                .mark_delivered(ids)?)
        })
        .await;
        if let Err(err) = marked {
            crate::log::emit(
                crate::log::Level::Warning,
                "cannot mark the fleet's alerts delivered (another host may deliver them again)",
                &[("error", &err.to_string())],
            );
        }
    }

    /// How the metadata endpoint names an account: its service-account email, else its name.
    /// `None` when there is no such account. Reads the store; for start-up, not the hot path.
    pub fn service_account_email(&self, name: &str) -> Option<String> {
        let account = self.store.lock().account(name).ok()?;
        Some(match account.config.grant {
            Grant::ServiceAccount {
                service_account_email,
                ..
            } => service_account_email,
            _ => account.name,
        })
    }

    /// The vault owner, as a peer (for listeners that carry no credentials).
    pub fn owner(&self) -> Peer {
        Peer {
            uid: self.table.owner_uid(),
            gid: 0,
            pid: None,
        }
    }

    pub fn vault_id(&self) -> &str {
        &self.vault_id
    }

    pub fn audit(&self) -> &Audit {
        &self.notifier.audit
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn events(&self) -> &Events {
        &self.notifier.events
    }

    /// The metrics exposition: the counters, every account's state and token expiry from the
    /// table, and the refresh-token deadlines from the store.
    pub async fn metrics_text(&self) -> String {
        let mut accounts: Vec<(String, AccountState, Option<i64>)> = Vec::new();
        self.table.for_each(|slot| {
            accounts.push((
                slot.name().to_owned(),
                slot.state(),
                slot.times().expires_at,
            ));
        });
        let store = self.store.clone();
        let deadlines = blocking(move || {
            let store = store.lock();
            let mut all = Vec::new();
            // A fleet records no deadlines yet.
            if let Some(store) = store.local() {
                for &deadline in Deadline::ALL {
                    all.push((deadline, store.deadlines(deadline)?));
                }
            }
            Ok(all)
        })
        .await
        .unwrap_or_default();
        self.metrics.render(Snapshot {
            accounts,
            deadlines,
            now: now_unix(),
        })
    }

    /// Picks up accounts, grants and logins changed by other processes, if the vault changed.
    pub async fn reload_if_changed(self: &Arc<Self>) {
        let tokens = self.clone();
        let looked = blocking(move || {
            let version = {
                let mut store = tokens.store.lock();
                // A rekey by another host moves every account: take the new key first.
                store.follow_rekey()?;
                store.data_version()?
            };
            let mut known = tokens.data_version.lock();
            if *known != version {
                *known = version;
                drop(known);
                tokens.reload_now()?;
            }
            Ok(())
        })
        .await;
        if let Err(err) = looked {
            crate::log::emit(
                crate::log::Level::Warning,
                "cannot look for changes in the vault",
                &[("error", &err.to_string())],
            );
        }
    }

    /// Renews the accounts another host changed, as heard (a fleet daemon does, between the
    /// full looks of `reload_if_changed`); the whole table when one of them is new or gone.
    /// False when it could not: the ids heard are spent, so only a full look finds them now.
    pub async fn reload_heard(self: &Arc<Self>) -> bool {
        let tokens = self.clone();
        let renewed = blocking(move || {
            let store = tokens.store.lock();
            let Some(fleet) = store.fleet() else {
                return Ok(());
            };
            let ids = fleet.changed_accounts();
            if ids.is_empty() {
                return Ok(());
            }
            let heard = ids.len();
            let mut found = 0;
            let renewed = tokens.table.renew(|visit| {
                fleet.visit_summaries_of(Some(ids), |account| {
                    found += 1;
                    visit(account);
                })
            })?;
            drop(store);
            // An account added (not in the table) or removed (not found): everything is
            // looked at; what was renewed is announced first, or it would go unsaid.
            match renewed {
                Some(transitions) => {
                    tokens.announce(transitions);
                    if found < heard {
                        tokens.reload_now()?;
                    }
                }
                None => tokens.reload_now()?,
            }
            Ok(())
        })
        .await;
        if let Err(err) = &renewed {
            crate::log::emit(
                crate::log::Level::Warning,
                "cannot reload the accounts another host changed",
                &[("error", &err.to_string())],
            );
        }
        renewed.is_ok()
    }

    fn announce(&self, transitions: Vec<crate::account::Transition>) {
        for transition in transitions {
            self.notifier.state_changed(transition);
        }
    }

    fn reload_now(&self) -> Result<(), Error> {
        let transitions = {
            let store = self.store.lock();
            let grants = store.grants()?;
            self.table
                .rebuild(|visit| store.visit_summaries(visit), grants)?
        };
        self.announce(transitions);
        Ok(())
    }
}

/// What beginning a refresh found: a stored token good enough (copied for the cache), or the
/// call to make.
enum Started {
    Stored(Arc<CachedToken>),
    Call(Box<PendingCall<AnyGuard>>),
}

fn not_in_fleet() -> Error {
    Error::Internal("a duty of one kind of vault ran on the other".into())
}

/// How long a request waits for another host's refresh of its account (a refresh takes well
/// under a second; a lease whose holder died runs out on its own), and how often it looks.
const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const LEASE_RETRY: std::time::Duration = std::time::Duration::from_millis(150);

/// How long a caller waits for its account's refresh before it is answered `store_unavailable`
/// (the refresh goes on): past a provider's 30-s timeout, what is left is a commit waiting for a
/// fleet's database, which may take two minutes. Shorter than `vault token`'s own wait (60 s).
const CALLER_WAIT: std::time::Duration = std::time::Duration::from_secs(45);

/// How long a refresh waits for the store before answering `store_unavailable`: a commit that
/// waits for a fleet database gone away holds the store for up to two minutes, and requests for
/// other accounts must not hang that long behind it. (The commit itself always waits: it may
/// carry the only copy of a rotated refresh token.)
const STORE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The store, once free within `STORE_PATIENCE`. The lock hands itself to a waiter that has
/// waited (parking_lot's eventual fairness): a steady stream of short store work does not starve
/// a request into a spurious `store_unavailable`.
fn patient_lock<T>(store: &Mutex<T>) -> Result<parking_lot::MutexGuard<'_, T>, Error> {
    store
        .try_lock_for(STORE_PATIENCE)
        .ok_or_else(|| StoreError::Busy.into())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Err(Error::Internal("a store task failed".into())))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Store work that never lets up (each piece short, the next one queued at once) must not
    /// keep a waiting request out for its whole patience.
    #[test]
    fn a_request_waiting_for_the_store_gets_it_between_short_pieces_of_work() {
        let store = Arc::new(Mutex::new(()));
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _piece = store.lock();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        let got = patient_lock(&store).is_ok();
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
        assert!(
            got,
            "starved for {STORE_PATIENCE:?} by short pieces of work"
        );
    }
}
