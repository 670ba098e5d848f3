use std::io::IsTerminal;

use clap::Args;
use serde::Serialize;

use super::{Context, when};
use crate::account::{Account, AccountState, Grant, SecretKind};
use crate::clock::now_unix;
use crate::config::Config;
use crate::error::Error;
use crate::timing::Firing;

#[derive(Args)]
pub(super) struct StatusArgs {
    /// One account, in detail (default: a table of all)
    name: Option<String>,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

pub(super) fn list(context: &Context) -> Result<(), Error> {
    let accounts = context.open()?.accounts()?;
    if accounts.is_empty() {
        println!("No accounts yet. Add one with: vault add-account NAME …");
        return Ok(());
    }
    println!("{:<24} {:<20} {:<10} STATE", "NAME", "KIND", "PROVIDER");
    for account in accounts {
        println!(
            "{:<24} {:<20} {:<10} {}",
            account.name,
            account.config.grant.kind().as_str(),
            account.config.endpoints.provider,
            account.state.as_str()
        );
    }
    Ok(())
}

/// One account's status, as the table, the details and `--json` show it. Never a secret.
#[derive(Serialize)]
struct Status<'a> {
    name: &'a str,
    state: AccountState,
    kind: &'static str,
    provider: &'a str,
    /// Whose grant it is (from the ID token), when known.
    identity: Option<&'a str>,
    token_expires_at: Option<i64>,
    refresh_token_expires_at: Option<i64>,
    /// The newest client secret's expiry, as recorded with `set-client-secret --expires`.
    client_secret_expires_at: Option<i64>,
    last_refresh_at: Option<i64>,
    last_validated_at: Option<i64>,
    /// When the daemon will next prove the credential (none while re-authorization is needed).
    next_validation_at: Option<i64>,
    validation_schedule: String,
    last_error: Option<&'a str>,
}

/// The global validation schedule, as text and next firing, computed once for every account.
#[derive(Clone, Copy)]
struct Global<'a> {
    schedule: &'a str,
    firing: Firing,
}

fn status_of<'a>(account: &'a Account, global: Global<'_>, now: i64) -> Status<'a> {
    let own = account
        .validation_schedule
        .as_deref()
        .and_then(|text| crate::config::parse_schedule(text).ok());
    let firing = own
        .as_ref()
        .map_or(global.firing, |own| Firing::of(own, now));
    let next_validation_at = account
        .state
        .may_validate()
        .then(|| firing.for_account(&account.name));
    Status {
        name: &account.name,
        state: account.state,
        kind: account.config.grant.kind().as_str(),
        provider: &account.config.endpoints.provider,
        identity: account
            .config
            .grant
            .identity()
            .map(|identity| identity.shown()),
        token_expires_at: account.access_expires_at,
        refresh_token_expires_at: account.refresh_expires_at,
        client_secret_expires_at: account.client_secret_expires_at,
        last_refresh_at: account.last_refresh_at,
        last_validated_at: account.last_validated_at,
        next_validation_at,
        validation_schedule: own
            .as_ref()
            .map_or_else(|| global.schedule.to_owned(), ToString::to_string),
        last_error: account.last_error.as_deref(),
    }
}

pub(super) fn status(context: &Context, args: StatusArgs) -> Result<(), Error> {
    let store = context.open()?;
    // A broken config.toml must not hide the accounts' states; the daemon reports it on start.
    let config = Config::load(&context.dir).unwrap_or_default();
    let now = now_unix();
    let accounts = match &args.name {
        Some(name) => vec![store.account(name)?],
        None => store.accounts()?,
    };
    let schedule = config.validation.schedule.to_string();
    let global = Global {
        schedule: &schedule,
        firing: Firing::of(&config.validation.schedule, now),
    };
    let statuses: Vec<Status<'_>> = accounts
        .iter()
        .map(|account| status_of(account, global, now))
        .collect();
    if args.json {
        let json = match (&args.name, statuses.first()) {
            (Some(_), Some(one)) => serde_json::to_string_pretty(one),
            _ => serde_json::to_string_pretty(&statuses),
        };
        println!("{}", json.map_err(|err| Error::Internal(err.to_string()))?);
    } else if args.name.is_some() {
        let rotating = store.has_secret(&accounts[0], SecretKind::PreviousClientSecret)?;
        print_details(&accounts[0], &statuses[0], rotating);
    } else if statuses.is_empty() {
        println!("No accounts yet. Add one with: vault add-account NAME …");
    } else {
        print_table(&statuses, now);
    }
    Ok(())
}

fn print_table(statuses: &[Status<'_>], now: i64) {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    println!(
        "{:<24} {:<16} {:<10} {:<13} {:<16} {:<16} LAST ERROR",
        "NAME", "STATE", "TOKEN", "LAST REFRESH", "LAST VALIDATION", "NEXT VALIDATION"
    );
    for status in statuses {
        let state = format!("{:<16}", status.state.as_str());
        let state = if colour {
            paint(status.state, &state)
        } else {
            state
        };
        let mut error = status.last_error.unwrap_or("-").replace('\n', " ");
        if error.chars().count() > 60 {
            error = error.chars().take(59).collect::<String>() + "…";
        }
        println!(
            "{:<24} {state} {:<10} {:<13} {:<16} {:<16} {error}",
            status.name,
            relative(status.token_expires_at, now),
            relative(status.last_refresh_at, now),
            relative(status.last_validated_at, now),
            relative(status.next_validation_at, now),
        );
    }
}

/// Green when fine, yellow when degraded, red when a person must act.
fn paint(state: AccountState, padded: &str) -> String {
    let code = match state {
        AccountState::Active => "32",
        AccountState::Degraded => "33",
        AccountState::ReauthRequired | AccountState::ClientError => "31",
    };
    format!("\x1b[{code}m{padded}\x1b[0m")
}

/// "in 59m", "3m ago", "-" — compact, for the table.
fn relative(unix: Option<i64>, now: i64) -> String {
    let Some(unix) = unix else {
        return "-".to_owned();
    };
    let delta = unix - now;
    let span = delta.unsigned_abs();
    let short = match span {
        0..120 => format!("{span}s"),
        120..7200 => format!("{}m", span / 60),
        7200..172_800 => format!("{}h", span / 3600),
        _ => format!("{}d", span / 86_400),
    };
    if delta >= 0 {
        format!("in {short}")
    } else {
        format!("{short} ago")
    }
}

/// `rotating`: a previous client secret is kept as a fallback.
fn print_details(account: &Account, status: &Status<'_>, rotating: bool) {
    let optional = |unix: Option<i64>| unix.map_or_else(|| "never".to_owned(), when);
    let config = &account.config;
    println!("{}", account.name);
    println!("  state            {}", status.state.as_str());
    println!("  kind             {} ({})", status.kind, status.provider);
    if let Some(client_id) = config.grant.client_id() {
        println!("  client id        {client_id}");
    }
    if let Some(identity) = status.identity {
        println!("  signed in as     {identity}");
    }
    if let Grant::ServiceAccount {
        service_account_email,
        subject,
    } = &config.grant
    {
        println!("  service account  {service_account_email}");
        if let Some(subject) = subject {
            println!("  subject          {subject}");
        }
    }
    if status.client_secret_expires_at.is_some() {
        println!(
            "  secret expires   {}",
            optional(status.client_secret_expires_at)
        );
    }
    if rotating {
        println!(
            "  previous secret  kept as a fallback; once deleted at the provider: vault set-client-secret {} --retire-old",
            account.name
        );
    }
    println!("  scopes           {}", config.scopes.join(" "));
    println!("  token expires    {}", optional(status.token_expires_at));
    if status.refresh_token_expires_at.is_some() {
        println!(
            "  refresh expires  {}",
            optional(status.refresh_token_expires_at)
        );
    }
    println!("  last refresh     {}", optional(status.last_refresh_at));
    println!("  last validation  {}", optional(status.last_validated_at));
    println!(
        "  next validation  {} (\"{}\")",
        optional(status.next_validation_at),
        status.validation_schedule
    );
    if let Some(seconds) = account.refresh_before {
        println!("  refresh ahead    {seconds} s before expiry");
    }
    println!("  last error       {}", status.last_error.unwrap_or("none"));
    println!("  added            {}", when(account.created_at));
}

/// Revokes the account's grant at the provider (unless `keep_grant`), then removes it here.
/// A failed revocation is reported; the local removal happens all the same.
pub(super) fn remove(context: &Context, name: &str, keep_grant: bool) -> Result<(), Error> {
    use crate::revoke::{Revocation, revoke_grant};
    let mut store = context.open()?;
    let _lock = store.lock_account(name)?;
    let account = store.account(name)?;
    let upstream = if keep_grant {
        "The grant was kept at the provider (--keep-grant).".to_owned()
    } else {
        let http = crate::oauth::token::http_client();
        match super::block_on(revoke_grant(&store, &account, &http))?? {
            Revocation::Revoked => "The provider revoked its grant.".to_owned(),
            Revocation::NoGrant => "It held no grant to revoke.".to_owned(),
            Revocation::NoEndpoint => "The provider has no revocation endpoint tokenvault knows: revoke the app's access in the provider's account settings if it should end.".to_owned(),
            Revocation::Failed(reason) => {
                eprintln!("vault: warning: the grant could not be revoked at the provider: {reason}. Revoke the app's access in the provider's account settings.");
                "The provider still knows the grant.".to_owned()
            }
        }
    };
    store.remove_account(name)?;
    println!("Removed account {name} and its secrets. {upstream}");
    Ok(())
}
