//! The daemon's health for the monitoring people already run: OpenMetrics text (which Prometheus
//! scrapes) on `GET /v1/metrics`, for the vault's owner only. Counters are kept as things
//! happen; the per-account gauges are read from the account table at scrape time. No secret,
//! only account names, states, counts and times.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::account::{AccountState, Deadline};
use crate::named::named_enum;
use crate::oauth::Outcome;
use crate::refresh::Need;

/// What scrapers are told the body is.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    account: String,
    /// `on_demand` (a caller's min_valid), `ahead` (before expiry) or `validation`.
    purpose: &'static str,
    /// `refreshed`, `transient` or `permanent`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

impl StateLabels {
    fn of(state: AccountState) -> StateLabels {
        StateLabels {
            state: state.as_str(),
        }
    }
}

named_enum! {
    /// How a connection to the socket was served.
    pub enum ConnectionPath {
        /// Its token request was waiting at the accept, and answered on the accepting thread.
        AtAccept = "at_accept",
        /// Its token request came a moment later; answered on the accepting thread too.
        AfterWait = "after_wait",
        /// Everything else: served by the HTTP server.
        Http = "http",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: &'static str,
}

/// The counters the daemon keeps while it runs.
pub struct Metrics {
    connections: Family<PathLabels, Counter>,
    upstream_calls: Family<CallLabels, Counter>,
    upstream_seconds: Histogram,
    token_answers: Family<StatusLabels, Counter>,
    alerts: Family<SinkLabels, Counter>,
}

/// What the scrape adds from the account table at that moment.
pub struct Snapshot {
    /// (account, state, access token expiry).
    pub accounts: Vec<(String, AccountState, Option<i64>)>,
    /// Each kind of deadline with its (account, date) pairs.
    pub deadlines: Vec<(Deadline, Vec<(String, i64)>)>,
    pub now: i64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            connections: Family::default(),
            upstream_calls: Family::default(),
            // 10 ms … ~82 s: the token endpoint's usual answer to its request timeout.
            upstream_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            token_answers: Family::default(),
            alerts: Family::default(),
        }
    }
}

impl Metrics {
    /// One call to a token endpoint, its purpose, outcome and duration.
    pub fn upstream_call(&self, account: &str, need: Need, outcome: &Outcome, seconds: f64) {
        let purpose = match need {
            Need::Valid { .. } => "on_demand",
            Need::Ahead { .. } => "ahead",
            Need::Proof => "validation",
        };
        let outcome = match outcome {
            Outcome::Refreshed(_) => "refreshed",
            Outcome::Transient(_) => "transient",
            Outcome::Permanent(_) => "permanent",
        };
        self.upstream_calls
            .get_or_create(&CallLabels {
                account: account.to_owned(),
                purpose,
                outcome,
            })
            .inc();
        self.upstream_seconds.observe(seconds);
    }

    /// One connection to the socket, and how it was served.
    pub fn connection(&self, path: ConnectionPath) {
        self.connections
            .get_or_create(&PathLabels {
                path: path.as_str(),
            })
            .inc();
    }

    /// One answer to a token request on the socket or the metadata endpoint.
    pub fn token_answer(&self, status: u16) {
        self.token_answers
            .get_or_create(&StatusLabels { status })
            .inc();
    }

    /// One alert handed to `sink` (`command`, `webhook`), and whether it got there.
    pub fn alert(&self, sink: &'static str, delivered: bool) {
        let result = if delivered { "sent" } else { "failed" };
        self.alerts
            .get_or_create(&SinkLabels { sink, result })
            .inc();
    }

    /// The exposition: the counters, and the gauges of `snapshot`.
    pub fn render(&self, snapshot: Snapshot) -> String {
        let mut registry = Registry::with_prefix("tokenvault");
        registry.register(
            "socket_connections",
            "Connections to the socket, by how they were served",
            self.connections.clone(),
        );
        registry.register(
            "upstream_calls",
            "Calls to token endpoints, by account, purpose and outcome",
            self.upstream_calls.clone(),
        );
        registry.register(
            "upstream_call_duration_seconds",
            "How long token endpoints took to answer",
            self.upstream_seconds.clone(),
        );
        registry.register(
            "token_answers",
            "Answers to token requests, by HTTP status",
            self.token_answers.clone(),
        );
        registry.register(
            "alerts",
            "Alerts handed to each sink, by result",
            self.alerts.clone(),
        );
        let states = Family::<StateLabels, Gauge>::default();
        let expiry = Family::<AccountLabels, Gauge>::default();
        for (account, state, expires_at) in snapshot.accounts {
            states.get_or_create(&StateLabels::of(state)).inc();
            if let Some(at) = expires_at {
                expiry
                    .get_or_create(&AccountLabels { account })
                    .set(at.saturating_sub(snapshot.now));
            }
        }
        registry.register("accounts", "Accounts by state", states);
        registry.register(
            "access_token_expiry_seconds",
            "Seconds until each account's cached access token expires (negative: expired)",
            expiry,
        );
        for (deadline, dates) in snapshot.deadlines {
            let gauges = Family::<AccountLabels, Gauge>::default();
            for (account, at) in dates {
                gauges
                    .get_or_create(&AccountLabels { account })
                    .set(at.saturating_sub(snapshot.now));
            }
            let (name, help) = match deadline {
                Deadline::RefreshToken => (
                    "refresh_token_deadline_seconds",
                    "Seconds until a refresh token's announced deadline (refresh_token_expires_in)",
                ),
                Deadline::ClientSecret => (
                    "client_secret_expiry_seconds",
                    "Seconds until a client secret's recorded expiry (vault set-client-secret --expires)",
                ),
            };
            registry.register(name, help, gauges);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}
