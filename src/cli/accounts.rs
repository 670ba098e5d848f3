use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use clap::Args;
use serde::Serialize;

use super::{Context, when};
use crate::account::{Account, AccountState, AccountSummary, Grant};
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
    let accounts = context.open_any()?.accounts()?;
    if accounts.is_empty() {
        println!("No accounts yet. Add one with: vault add-account NAME …");
        return Ok(());
    }
    write_lines(|out| {
        writeln!(
            out,
            "{:<24} {:<20} {:<10} STATE",
            "NAME", "KIND", "PROVIDER"
        )?;
        for account in &accounts {
            writeln!(
                out,
                "{:<24} {:<20} {:<10} {}",
                account.name,
                account.config.grant.kind().as_str(),
                account.config.endpoints.provider,
                account.state.as_str()
            )?;
        }
        Ok(())
    })
}

/// Writes many lines through one buffer: stdout flushes every line by itself, a write call
/// per account (a third of `vault status` at 100,000 accounts).
fn write_lines(
    print: impl FnOnce(&mut std::io::BufWriter<std::io::StdoutLock<'static>>) -> std::io::Result<()>,
) -> Result<(), Error> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    print(&mut out)
        .and_then(|()| out.flush())
        .map_err(|err| Error::Input(format!("cannot write the output: {err}")))
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
    /// For a key tokenvault can rotate (`vault rotate`): when the one in use was created
    /// (at the provider when known, else when the account was added)…
    key_created_at: Option<i64>,
    /// …how often the daemon rotates it (seconds), and when it next will.
    rotate_every: Option<i64>,
    next_rotation_at: Option<i64>,
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

/// When the daemon next proves an account (its own schedule, else the global one; never while
/// it needs a new login), and its own schedule when it has a valid one.
fn next_validation(
    name: &str,
    state: AccountState,
    own: Option<&str>,
    global: Global<'_>,
    now: i64,
) -> (Option<i64>, Option<cron::Schedule>) {
    let own = own.and_then(|text| crate::config::parse_schedule(text).ok());
    let firing = own
        .as_ref()
        .map_or(global.firing, |own| Firing::of(own, now));
    let next = state.may_validate().then(|| firing.for_account(name));
    (next, own)
}

fn status_of<'a>(account: &'a Account, global: Global<'_>, now: i64) -> Status<'a> {
    let (next_validation_at, own) = next_validation(
        &account.name,
        account.state,
        account.validation_schedule.as_deref(),
        global,
        now,
    );
    let key_created_at = crate::rotation::rotatable(&account.config)
        .then(|| account.key_created_at.unwrap_or(account.created_at));
    let rotate_every = account.rotate_every.filter(|_| key_created_at.is_some());
    Status {
        key_created_at,
        rotate_every,
        next_rotation_at: key_created_at
            .zip(rotate_every)
            .map(|(created, every)| created.saturating_add(every)),
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
    let store = context.open_any()?;
    // A broken config.toml must not hide the accounts' states; the daemon reports it on start.
    let config = Config::load(&context.dir).unwrap_or_default();
    let now = now_unix();
    let schedule = config.validation.schedule.to_string();
    let global = Global {
        schedule: &schedule,
        firing: Firing::of(&config.validation.schedule, now),
    };
    match (&args.name, args.json) {
        (Some(name), json) => {
            let account = store.account(name)?;
            let status = status_of(&account, global, now);
            if json {
                print_json(&status)
            } else {
                print_details(&account, &status, account.keeps_previous_client_secret);
                Ok(())
            }
        }
        (None, true) => {
            let accounts = store.accounts()?;
            let statuses: Vec<Status<'_>> = accounts
                .iter()
                .map(|account| status_of(account, global, now))
                .collect();
            print_json(&statuses)
        }
        // The table needs no settings: the summaries, without parsing 100,000 settings.
        (None, false) => {
            let summaries = store.summaries()?;
            if summaries.is_empty() {
                println!("No accounts yet. Add one with: vault add-account NAME …");
                return Ok(());
            }
            print_table(&summaries, global, now)
        }
    }
}

fn print_json(value: &impl Serialize) -> Result<(), Error> {
    let json =
        serde_json::to_string_pretty(value).map_err(|err| Error::Internal(err.to_string()))?;
    println!("{json}");
    Ok(())
}

fn print_table(summaries: &[AccountSummary], global: Global<'_>, now: i64) -> Result<(), Error> {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    write_lines(|out| {
        writeln!(
            out,
            "{:<24} {:<16} {:<10} {:<13} {:<16} {:<16} LAST ERROR",
            "NAME", "STATE", "TOKEN", "LAST REFRESH", "LAST VALIDATION", "NEXT VALIDATION"
        )?;
        for summary in summaries {
            let (next_validation_at, _) = next_validation(
                &summary.name,
                summary.state,
                summary.validation_schedule.as_deref(),
                global,
                now,
            );
            let state = if colour {
                Cow::Owned(paint(
                    summary.state,
                    &format!("{:<16}", summary.state.as_str()),
                ))
            } else {
                Cow::Borrowed(summary.state.as_str())
            };
            writeln!(
                out,
                "{:<24} {state:<16} {:<10} {:<13} {:<16} {:<16} {}",
                summary.name,
                relative(summary.access_expires_at, now),
                relative(summary.last_refresh_at, now),
                relative(summary.last_validated_at, now),
                relative(next_validation_at, now),
                shortened(summary.last_error.as_deref().unwrap_or("-")),
            )?;
        }
        Ok(())
    })
}

/// An error on one line of at most 60 characters; copied only when it must change.
fn shortened(error: &str) -> Cow<'_, str> {
    let long = error.chars().nth(60).is_some();
    if !long && !error.contains('\n') {
        return Cow::Borrowed(error);
    }
    let kept: String = error.chars().take(if long { 59 } else { 60 }).collect();
    let mut short = kept.replace('\n', " ");
    if long {
        short.push('…');
    }
    Cow::Owned(short)
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

/// "in 59m", "3m ago", "-" — compact, for the table; written without allocating (100,000 rows
/// have four each).
struct Relative {
    unix: Option<i64>,
    now: i64,
}

fn relative(unix: Option<i64>, now: i64) -> Relative {
    Relative { unix, now }
}

impl std::fmt::Display for Relative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(unix) = self.unix else {
            return f.pad("-");
        };
        let delta = unix.saturating_sub(self.now);
        let span = delta.unsigned_abs();
        let (count, unit) = match span {
            0..120 => (span, 's'),
            120..7200 => (span / 60, 'm'),
            7200..172_800 => (span / 3600, 'h'),
            _ => (span / 86_400, 'd'),
        };
        // At most "in 106751991167300d": well within the buffer.
        let mut buffer = [0u8; 32];
        let mut text = std::io::Cursor::new(&mut buffer[..]);
        let written = if delta >= 0 {
            write!(text, "in {count}{unit}")
        } else {
            write!(text, "{count}{unit} ago")
        };
        let length = text.position() as usize;
        match (written, std::str::from_utf8(&buffer[..length])) {
            (Ok(()), Ok(shown)) => f.pad(shown),
            _ => Err(std::fmt::Error),
        }
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
    if let Some(created) = status.key_created_at {
        println!("  key created      {}", when(created));
        match (status.rotate_every, status.next_rotation_at) {
            (Some(every), Some(next)) => println!(
                "  key rotation     every {} (vault serve), next {}",
                super::age(every),
                when(next)
            ),
            _ => println!(
                "  key rotation     by hand: vault rotate {} (or: vault schedule {} --rotate-every 90d)",
                account.name, account.name
            ),
        }
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
    let mut store = context.open_any()?;
    // No refresh of it may be under way, on this host or (a fleet's lease) any other.
    let _guard = crate::store::RefreshStore::guard_refresh(&store, name)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cells_are_compact_and_padded() {
        let cell = |unix: Option<i64>| format!("[{:<10}]", relative(unix, 1_000_000));
        assert_eq!(cell(None), "[-         ]");
        assert_eq!(cell(Some(1_000_030)), "[in 30s    ]");
        assert_eq!(cell(Some(1_000_000 - 600)), "[10m ago   ]");
        assert_eq!(cell(Some(1_000_000 + 3 * 86_400)), "[in 3d     ]");
        assert_eq!(cell(Some(i64::MIN)), "[106751991167300d ago]");
        assert_eq!(shortened("fine"), "fine");
        assert_eq!(shortened("two\nlines"), "two lines");
        let long = "x".repeat(80);
        assert_eq!(shortened(&long).chars().count(), 60);
        assert!(shortened(&long).ends_with('…'));
    }
}
