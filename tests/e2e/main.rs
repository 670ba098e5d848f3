//! End-to-end tests: the real `vault` binary, a real SQLite vault, real HTTP to a fake OAuth
//! server on 127.0.0.1.

mod attacks;
mod conformance;
mod crash;
mod daemon;
mod demo;
mod ecosystem;
mod errors;
mod fleet;
mod flows;
mod hostile_provider;
mod key_rotation;
mod keyring;
mod lifecycle;
mod mail;
mod passphrase;
mod rotation;
mod security;
mod support;
