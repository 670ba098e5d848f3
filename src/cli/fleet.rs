//! `vault fleet …`: a vault on a PostgreSQL database several hosts share — creating it,
//! enrolling hosts (each with its own master key), removing them, and what the fleet looks like.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Subcommand;

use super::Context;
use super::init::with_new_master_key;
use crate::error::Error;
use crate::store::{AnyStore, FleetDb, PgStore, Store};

#[derive(Subcommand)]
pub(super) enum FleetCommand {
    /// Turn the configured PostgreSQL database (VAULT_DATABASE_URL or [fleet] database) into a
    /// fleet vault, enrolling this host with its own master key
    Init {
        /// Derive this host's master key from a passphrase (Argon2id)
        #[arg(long)]
        passphrase: bool,
        /// Copy every account of this host's own vault into the fleet (all or none)
        #[arg(long)]
        import_local: bool,
    },
    /// Ask to join the fleet: shows a fingerprint to compare, and waits until an enrolled host
    /// admits this one (vault fleet admit HOST)
    Join {
        /// Derive this host's master key from a passphrase (Argon2id)
        #[arg(long)]
        passphrase: bool,
        /// How long to wait for the admission, in seconds
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Admit a host waiting in `vault fleet join`, once its fingerprint matches
    Admit {
        host: String,
        /// The fingerprint the joining host shows (asked for on a terminal when not given)
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Remove a host from the fleet (its copy of the data key is deleted)
    Remove { host: String },
    /// The fleet's hosts, the hosts waiting to join, and the refresh leases held now
    Status,
}

pub(super) fn run(context: &Context, command: FleetCommand) -> Result<(), Error> {
    match command {
        FleetCommand::Init {
            passphrase,
            import_local,
        } => init(context, passphrase, import_local),
        FleetCommand::Join {
            passphrase,
            timeout,
        } => join(context, passphrase, Duration::from_secs(timeout)),
        FleetCommand::Admit { host, fingerprint } => admit(context, &host, fingerprint),
        FleetCommand::Remove { host } => {
            fleet_store(context)?.remove_host(&host)?;
            println!(
                "Removed host {host:?} from the fleet: its copy of the data key is deleted. It may have kept the data key itself; rotating the fleet's data key (vault rekey) is not in fleet mode yet."
            );
            Ok(())
        }
        FleetCommand::Status => status(context),
    }
}

fn configured(context: &Context) -> Result<FleetDb, Error> {
    context.fleet()?.ok_or_else(|| {
        Error::Input(
            "no fleet database configured: set VAULT_DATABASE_URL=postgres://USER@HOST/DB, or [fleet] database in config.toml".into(),
        )
    })
}

fn fleet_store(context: &Context) -> Result<PgStore, Error> {
    Ok(PgStore::open(
        &configured(context)?,
        &context.dir,
        &context.unlock(),
    )?)
}

/// `vault fleet init`: the configured database becomes a fleet vault, with this host enrolled
/// and the data key wrapped by this host's master key.
fn init(context: &Context, passphrase: bool, import_local: bool) -> Result<(), Error> {
    let fleet = configured(context)?;
    // The local vault is opened first: a wrong key fails before the database is touched.
    let local = import_local
        .then(|| Store::open(&context.dir, &context.unlock()))
        .transpose()?;
    let mut source = None;
    let store = with_new_master_key(context, passphrase, |key_source, passphrase| {
        source = Some(key_source.describe());
        PgStore::init(&fleet, &context.dir, key_source, passphrase)
    })?;
    if let Some(local) = local {
        let names =
            crate::archive::copy_accounts(&AnyStore::Local(local), &mut AnyStore::Fleet(store))?;
        println!(
            "Copied {} account(s) from this host's vault into the fleet: {}. The local vault still holds them; once the fleet serves them, remove it ({}).",
            names.len(),
            names.join(", "),
            Store::db_path(&context.dir).display()
        );
    }
    println!(
        "Created the fleet vault on {} with this host, {:?}, enrolled (master key: {}).\nNext: vault add-account NAME …  (every enrolled host with this database configured sees it)",
        fleet.shown(),
        fleet.host,
        source.unwrap_or_default()
    );
    Ok(())
}

fn join(context: &Context, passphrase: bool, wait: Duration) -> Result<(), Error> {
    let fleet = configured(context)?;
    let host = fleet.host.clone();
    with_new_master_key(context, passphrase, |key_source, passphrase| {
        PgStore::join(
            &fleet,
            &context.dir,
            key_source,
            passphrase,
            wait,
            |fingerprint| {
                println!("Fingerprint of this host's request: {fingerprint}");
                println!(
                    "On an enrolled host, run: vault fleet admit {host}\nand check that it shows the same fingerprint. Waiting up to {} s…",
                    wait.as_secs()
                );
            },
        )
    })?;
    println!(
        "Host {host:?} joined the fleet; the data key is wrapped by this host's own master key."
    );
    Ok(())
}

fn admit(context: &Context, host: &str, given: Option<String>) -> Result<(), Error> {
    let store = fleet_store(context)?;
    let mut refusal = None;
    store
        .admit(host, |fingerprint| match &given {
            Some(given) => same_fingerprint(given, fingerprint),
            None => confirmed_at_terminal(host, fingerprint).unwrap_or_else(|err| {
                refusal = Some(err);
                false
            }),
        })
        .map_err(|err| refusal.take().unwrap_or(err.into()))?;
    println!(
        "Admitted host {host:?}: the data key was sealed to the key it published. It finishes joining on its own."
    );
    Ok(())
}

/// Fingerprints compared as people copy them: spaces and letter case do not matter.
fn same_fingerprint(a: &str, b: &str) -> bool {
    let plain = |text: &str| {
        text.chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    !plain(a).is_empty() && plain(a) == plain(b)
}

fn confirmed_at_terminal(host: &str, fingerprint: &str) -> Result<bool, Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Input(format!(
            "compare the fingerprint first: vault fleet admit {host} --fingerprint \"{fingerprint}\" (with what vault fleet join shows on {host})"
        )));
    }
    println!("Host {host:?} asks to join with the fingerprint\n  {fingerprint}");
    print!("Does {host} show exactly this fingerprint? [y/N] ");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|err| Error::Input(format!("cannot read the answer: {err}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn status(context: &Context) -> Result<(), Error> {
    let fleet = configured(context)?;
    let store = PgStore::open(&fleet, &context.dir, &context.unlock())?;
    let status = store.fleet_status(fleet.shown())?;
    println!("fleet database  {} (reachable)", status.database);
    println!("this host       {}", store.host());
    for (host, seen) in &status.hosts {
        match seen {
            Some(seconds) => println!("host            {host}: daemon seen {seconds:.0} s ago"),
            None => println!("host            {host}: no daemon seen"),
        }
    }
    for (host, fingerprint) in &status.waiting {
        println!("waiting to join {host} (fingerprint {fingerprint}): vault fleet admit {host}");
    }
    if status.leases.is_empty() {
        println!("leases          none held");
    }
    for (account, holder, left) in &status.leases {
        println!("lease           {account}: held by {holder}, {left:.0} s left");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_compare_without_spaces_or_case() {
        assert!(same_fingerprint("ab12 CD34", "ab12cd34"));
        assert!(!same_fingerprint("ab12 cd35", "ab12 cd34"));
        assert!(!same_fingerprint("", ""));
    }
}
