//! tokenvault: a local credential vault with OAuth 2.0 token lifecycle management.
//!
//! The `vault` binary is a thin command line over this library.
//!
//! # Map
//! - **Edges that trust nothing**: `cli` (arguments; dispatch in `cli/mod.rs`, one file per
//!   verb family), `client` (the daemon's socket: its directory and peer are checked before a
//!   byte is sent), `daemon::http` (the socket API, the metadata and metrics endpoints,
//!   connection caps and write deadlines — the only place where outcomes become HTTP statuses),
//!   `oauth` (provider answers: read up to 64 KiB, numbers clamped, text made printable,
//!   refusals diagnosed by `oauth::catalog`), `archive` (import files), `config` (`config.toml`).
//! - **One vocabulary**: `account` (`AccountState` with its policy — refresh ahead? validate?
//!   refuse at once? — `Transition`, the tagged `Grant`), `error` (`Problem`: one table of JSON
//!   code, HTTP status and exit code), `daemon::alert::AlertEvent`. Every name that leaves the
//!   program comes from one `named_enum!` table (`named`).
//! - **The sealed store**: `store` (SQLite, split by concern: `accounts`, `sealing`, `commits`,
//!   `events`, `schema`; secrets AES-256-GCM-sealed with AAD binding account, kind and key
//!   version; settings HMAC-signed; every token or state commit fenced on the account's
//!   `generation`). `store::RefreshStore` is the seam both backends implement: the embedded
//!   SQLite vault and fleet mode's PostgreSQL store (`store::postgres`: the lease row, fenced
//!   commits retried across a lost connection, host enrollment, the alert outbox), with
//!   `store::AnyStore` choosing between them for the CLI and the daemon. `crypto`, `keys` (where the master key lives), `files` (the directory checks
//!   every layer shares), `secret` (zeroized, unprintable).
//! - **One refresh pipeline**, `refresh`, for the CLI and the daemon: `begin` (a stored token
//!   good enough is read without any lock; otherwise the account's refresh guard is taken and
//!   the account read again) → `PendingCall::send` (consumes the call: a rotating refresh token
//!   is spent once, under the guard) → `Answered::settle` (commits, fenced, then releases the
//!   guard) → `Settled` (the token or the error, and the `Transition` the commit made).
//! - **`rotation`**: an account's own key rotated through its provider's API (Google IAM,
//!   Microsoft Graph), each step recorded so a crash leaves one working key.
//! - **`daemon`**, everything `vault serve` runs: `http` (the edge), `socket` (where and how the
//!   socket is created), `tokens` (the core the edge and the duties ask), `table` (accounts,
//!   grants, cached tokens), `flight` (single flight and backoff), `notify` (audit, events,
//!   alerts), the duties `reloader`, `refresher`, `validator`, `deadline_watch`, `rotator`
//!   (embedded vault) and `outbox` (a fleet's alerts), and `alert`,
//!   `audit`, `events`, `metrics`. `timing` (refresh-ahead, backoff, validation firings) is the
//!   pure maths both the daemon and `vault status` use.
//!
//! A token request on the socket: `daemon::http`'s accept thread reads the peer's uid
//! (SO_PEERCRED), applies its cap, and answers a plain request for a token in memory right there
//! (`http::fast`); any other request goes to hyper (`http::api`), which asks
//! `daemon::tokens::Tokens::lookup` (→ `table`) whether it is granted; `Tokens::obtain` (→
//! `flight::obtain`) answers from memory when the cached token lasts `min_valid`; otherwise one
//! caller runs the `refresh` pipeline (its store steps on a blocking thread) while the others
//! wait for its result; the committed `Transition`, if any, is mirrored in the table and told
//! to `notify`; a failure is a `Failure` carrying a `Problem`, which `http` turns into a status
//! and a JSON error code.

#![forbid(unsafe_code)]

pub mod account;
mod archive;
pub mod cli;
mod client;
pub mod clock;
mod config;
mod crypto;
mod daemon;
mod demo;
pub mod devprovider;
mod doctor;
mod enroll;
pub mod error;
mod files;
pub mod front;
#[cfg(test)]
mod fuzzing;
pub mod keys;
mod log;
mod named;
pub mod oauth;
mod passphrase;
pub mod process;
mod refresh;
mod revoke;
pub mod rotation;
pub mod secret;
mod service;
pub mod store;
mod timing;
mod users;

pub use error::Error;
