//! tokenvault: a local credential vault with OAuth 2.0 token lifecycle management.
//!
//! The `vault` binary is a thin command line over this library.

#![forbid(unsafe_code)]

pub mod account;
mod alert;
mod archive;
mod audit;
pub mod cli;
mod client;
pub mod clock;
mod config;
mod crypto;
mod deadline_watch;
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
pub mod oauth;
pub mod process;
mod refresh;
mod refresher;
mod revoke;
mod scheduler;
pub mod secret;
mod server;
mod service;
pub mod store;
mod users;
mod validator;

pub use error::Error;
