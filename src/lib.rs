//! tokenvault: a local credential vault with OAuth 2.0 token lifecycle management.
//!
//! The `vault` binary is a thin command line over this library.
//!
//! # Map
//! - **Edges that trust nothing**: `cli` (arguments), `client` (the daemon's socket: its directory
//!   and peer are checked before a byte is sent), `server` (the socket API, the metadata and
//!   metrics endpoints, connection caps and write deadlines), `oauth` (provider answers: read up
//!   to 64 KiB, numbers clamped, text made printable, refusals diagnosed by `oauth::catalog`),
//!   `archive` (import files), `config` (`config.toml`).
//! - **The sealed store**: `store` (SQLite; secrets AES-256-GCM-sealed with AAD binding account,
//!   kind and key version; account settings HMAC-signed), `crypto`, `keys` (where the master key
//!   lives), `files` (the directory checks every layer shares), `secret` (zeroized, unprintable).
//! - **Getting a token**: `refresh` plans under the account's lock (cached, or one upstream call),
//!   sends, and commits the outcome — a rotated refresh token durably before its access token is
//!   handed out. The CLI calls it directly; the daemon through `server::tokens`, which adds the
//!   in-memory cache, single flight and backoff.
//! - **Background duties** of `vault serve`: `refresher` (ahead of expiry), `validator` (cron),
//!   `deadline_watch` (announced refresh-token deadlines), `alert`, `audit`, `log`.
//!
//! A token request on the socket: `server::api` reads the peer's uid (SO_PEERCRED) and asks
//! `server::tokens::Tokens::lookup` whether it is granted; `Tokens::obtain` answers from memory when
//! the cached token lasts `min_valid`, else one caller runs `refresh::plan` → `UpstreamCall::send`
//! → `refresh::finish` while the others wait for its result; failures become a `Problem`, which
//! the edge turns into a status and a JSON error code.

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
#[cfg(test)]
mod fuzzing;
pub mod keys;
mod log;
mod named;
pub mod oauth;
pub mod process;
mod refresh;
mod revoke;
pub mod secret;
mod service;
pub mod store;
mod timing;
mod users;

pub use error::Error;
