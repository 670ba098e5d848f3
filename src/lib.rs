//! tokenvault: a local credential vault with OAuth 2.0 token lifecycle management.
//!
//! The `vault` binary is a thin command line over this library.

#![forbid(unsafe_code)]

pub mod account;
pub mod alert;
pub mod archive;
pub mod audit;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod deadline_watch;
pub mod demo;
pub mod devprovider;
pub mod doctor;
pub mod enroll;
pub mod error;
pub mod files;
#[cfg(test)]
mod fuzzing;
pub mod keys;
pub mod log;
pub mod oauth;
pub mod process;
pub mod refresh;
pub mod refresher;
pub mod revoke;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod service;
pub mod store;
pub mod users;
pub mod validator;

pub use error::Error;
