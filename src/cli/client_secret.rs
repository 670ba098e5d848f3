//! `vault set-client-secret`: rotate an account's client secret at the provider without
//! downtime — the new one is used first, the previous one kept as a fallback until retired.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::add::{read_secret_file, read_stdin_secret};
use super::{Context, block_on};
use crate::error::Error;
use crate::oauth::token::http_client;
use crate::refresh;
use crate::secret::SecretString;
use crate::store::{AnyStore, SecretRotation, StoreError};

#[derive(Args)]
pub(super) struct SetClientSecretArgs {
    name: String,
    /// Read the new client secret from this file (never give a secret as an argument)
    #[arg(long, value_name = "PATH", conflicts_with = "retire_old")]
    client_secret_file: Option<PathBuf>,
    /// Read the new client secret from standard input
    #[arg(long, conflicts_with_all = ["client_secret_file", "retire_old"])]
    client_secret_stdin: bool,
    /// When the new secret expires (YYYY-MM-DD, or an RFC 3339 time): an alert
    /// (client_secret_expiring) goes out ahead of it
    #[arg(long, value_name = "DATE", conflicts_with = "retire_old")]
    expires: Option<String>,
    /// Record --expires for the secret in use instead of setting a new one
    #[arg(
        long,
        requires = "expires",
        conflicts_with_all = ["client_secret_file", "client_secret_stdin", "retire_old"]
    )]
    current: bool,
    /// End a rotation: prove the newest secret works alone, then forget the previous one
    #[arg(long)]
    retire_old: bool,
}

pub(super) fn run(context: &Context, args: SetClientSecretArgs) -> Result<(), Error> {
    let mut store = context.open_any()?;
    if args.retire_old {
        return retire(&mut store, &args.name);
    }
    let expires_at = args.expires.as_deref().map(expiry).transpose()?;
    if args.current {
        store.set_client_secret_expiry(&args.name, expires_at)?;
        println!(
            "Recorded when the client secret of {} expires; an alert (client_secret_expiring) goes out ahead of it.",
            args.name
        );
        return Ok(());
    }
    let secret = new_secret(&args)?;
    let rotation = store.set_client_secret(&args.name, &secret, expires_at)?;
    let kept = match rotation {
        SecretRotation::Started => "The secret used until now is kept as a fallback",
        SecretRotation::NewestReplaced => {
            "It replaces the newest secret set earlier; the secret used before that is still kept as a fallback"
        }
    };
    let name = &args.name;
    prove_newest(&mut store, name).inspect_err(|_| {
        eprintln!("The new client secret of {name} is stored. {kept}.");
    })?;
    println!(
        "The new client secret of {name} works: the provider issued a token with it. {kept};\nonce you have deleted it at the provider: vault set-client-secret {name} --retire-old"
    );
    Ok(())
}

/// Ends a rotation, only once the newest secret has worked alone.
fn retire(store: &mut AnyStore, name: &str) -> Result<(), Error> {
    // Without a rotation under way there is nothing to retire, and nothing to spend a refresh on.
    let account = store.account(name)?;
    if !account.keeps_previous_client_secret {
        return Err(StoreError::NoPreviousClientSecret(name.to_owned()).into());
    }
    prove_newest(store, name)?;
    store.retire_previous_client_secret(name)?;
    println!(
        "Retired the previous client secret of {name}; the newest one works alone. Delete the old one at the provider if it is still there."
    );
    Ok(())
}

/// A live refresh; an error unless the newest client secret, not the previous one, got it.
fn prove_newest(store: &mut AnyStore, name: &str) -> Result<(), Error> {
    let settled = block_on(refresh::prove(store, &http_client(), name))??;
    settled.issued?;
    if settled.fell_back {
        return Err(Error::NewClientSecretRefused {
            account: name.to_owned(),
        });
    }
    Ok(())
}

/// The new secret from a file, stdin or a prompt; never from an argument (argv is public).
fn new_secret(args: &SetClientSecretArgs) -> Result<SecretString, Error> {
    if let Some(path) = &args.client_secret_file {
        return read_secret_file(path, "client secret");
    }
    if args.client_secret_stdin {
        return read_stdin_secret("client secret");
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Input(
            "give the new client secret with --client-secret-file PATH or --client-secret-stdin"
                .into(),
        ));
    }
    let typed = rpassword::prompt_password(format!("New client secret for {}: ", args.name))
        .map_err(|err| Error::Input(format!("cannot read the client secret: {err}")))?;
    let secret = SecretString::from(typed).trimmed();
    if secret.is_empty() {
        return Err(Error::Input(
            "no client secret typed; nothing was changed".into(),
        ));
    }
    Ok(secret)
}

/// `--expires`: a date (midnight UTC) or an RFC 3339 time, in the future.
fn expiry(text: &str) -> Result<i64, Error> {
    let at = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|midnight| midnight.and_utc().timestamp())
        .or_else(|| {
            chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|time| time.timestamp())
        })
        .ok_or_else(|| {
            Error::Input(format!(
                "--expires {text:?} is not a date: write YYYY-MM-DD (e.g. 2027-06-01) or an RFC 3339 time"
            ))
        })?;
    if at <= crate::clock::now_unix() {
        return Err(Error::Input(format!(
            "--expires {text} is in the past; give the date the new secret expires"
        )));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_takes_dates_and_times_in_the_future_only() {
        assert_eq!(expiry("2999-06-01").unwrap(), 32_485_190_400);
        assert_eq!(
            expiry("2999-06-01T12:00:00+02:00").unwrap(),
            32_485_190_400 + 10 * 3600
        );
        for bad in [
            "2020-01-01",
            "tomorrow",
            "2999-13-01",
            "",
            "99999999999-01-01",
        ] {
            assert!(expiry(bad).is_err(), "{bad}");
        }
    }
}
