//! `vault fleet …`: a vault on a PostgreSQL database several hosts share — creating it,
//! enrolling hosts (each with its own master key), removing them, and what the fleet looks like.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Subcommand;

use super::Context;
use super::add::read_stdin_secret;
use super::init::with_new_master_key;
use crate::error::Error;
use crate::secret::SecretString;
use crate::store::{AnyStore, FleetDb, JoinCode, PgStore, Store};

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
    /// Ask to join the fleet: shows a one-time join code, and waits until an enrolled host
    /// admits this one with it (vault fleet admit HOST)
    Join {
        /// Derive this host's master key from a passphrase (Argon2id)
        #[arg(long)]
        passphrase: bool,
        /// How long to wait for the admission, in seconds
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Admit a host waiting in `vault fleet join`: type the join code it shows (asked on a
    /// terminal, else read from standard input; never an argument, as argv is public)
    Admit { host: String },
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
        FleetCommand::Admit { host } => admit(context, &host),
        FleetCommand::Remove { host } => {
            fleet_store(context)?.remove_host(&host)?;
            println!(
                "Removed host {host:?} from the fleet: its copy of the data key is deleted. It may have kept the data key itself: run vault rekey now, so that nothing sealed from here on opens with it (and revoke its database login)."
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
        PgStore::join(&fleet, &context.dir, key_source, passphrase, wait, |code| {
            println!("Join code (one-time, secret): {}", code.shown().expose());
            println!(
                "On an enrolled host, run: vault fleet admit {host}\nand type this code there. Waiting up to {} s…",
                wait.as_secs()
            );
        })
    })?;
    println!(
        "Host {host:?} joined the fleet; the data key is wrapped by this host's own master key."
    );
    Ok(())
}

fn admit(context: &Context, host: &str) -> Result<(), Error> {
    let store = fleet_store(context)?;
    let typed = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("Join code vault fleet join shows on {host}: "))
            .map(SecretString::from)
            .map_err(|err| Error::Input(format!("cannot read the join code: {err}")))?
    } else {
        read_stdin_secret("join code")?
    };
    let code = JoinCode::parse(&typed).ok_or_else(|| {
        Error::Input(format!(
            "a join code is 32 hexadecimal digits, as vault fleet join shows it on {host} (dashes and spaces do not matter)"
        ))
    })?;
    store.admit(host, &code)?;
    println!(
        "Admitted host {host:?}: the data key was sealed to the key it published and the join code. It finishes joining on its own."
    );
    Ok(())
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
    for (host, waited) in &status.waiting {
        println!(
            "waiting to join {host} (asked {waited:.0} s ago): vault fleet admit {host}, with the code it shows"
        );
    }
    if status.leases.is_empty() {
        println!("leases          none held");
    }
    for (account, holder, left) in &status.leases {
        println!("lease           {account}: held by {holder}, {left:.0} s left");
    }
    Ok(())
}
