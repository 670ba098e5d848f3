//! The `vault` command line: argument parsing and output only; the work is in the library.

mod accounts;
mod add;
mod grant;
mod init;
mod serve;
mod token;
mod validate;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::error::Error;
use crate::keys::{self, KeySource};
use crate::secret::SecretString;
use crate::store::Store;

#[derive(Parser)]
#[command(
    name = "vault",
    version,
    about = "tokenvault: keeps OAuth client secrets, refresh tokens and service-account keys encrypted, and hands out short-lived access tokens",
    after_help = "Exit codes: 0 ok, 1 error, 2 bad arguments, 3 re-authorization needed (vault login), 4 client or configuration rejected by the provider, 5 provider unavailable (try later), 6 master key missing or wrong, 130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    locations: Locations,
    #[command(subcommand)]
    command: Command,
}

/// Where the vault, its master key and the daemon are: options every command takes.
#[derive(Args)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Locations {
    /// The vault directory [default: $XDG_DATA_HOME/tokenvault]
    #[arg(long = "vault", global = true, env = "VAULT_DIR", value_name = "DIR")]
    vault_dir: Option<PathBuf>,
    /// Master key file (base64 of 32 bytes, mode 0600) instead of the OS keyring. VAULT_MASTER_KEY
    /// in the environment overrides both.
    #[arg(long, global = true, env = "VAULT_KEY_FILE", value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// The daemon's socket [default: $XDG_RUNTIME_DIR/tokenvault/vault.sock]
    #[arg(long, global = true, env = "VAULT_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
}

/// A parser that knows only `vault token`. Mail clients and scripts run that verb on every
/// send, and building clap's tree of every verb costs about a fifth of the whole call; this
/// tree is built from the same `Locations` and `TokenArgs`, so it accepts exactly what the full
/// parser accepts for that verb. Anything else (help, errors, other verbs) goes to the full
/// parser, so those answers are unchanged.
#[derive(Parser)]
#[command(name = "vault")]
struct TokenOnlyCli {
    #[command(flatten)]
    locations: Locations,
    #[command(subcommand)]
    command: TokenOnly,
}

#[derive(Subcommand)]
enum TokenOnly {
    Token(token::TokenArgs),
}

impl Cli {
    /// The command line of this process; `vault token` is parsed the quick way when it can be.
    pub fn from_args() -> Cli {
        let arguments: Vec<std::ffi::OsString> = std::env::args_os().collect();
        match TokenOnlyCli::try_parse_from(&arguments) {
            Ok(TokenOnlyCli {
                locations,
                command: TokenOnly::Token(args),
            }) => Cli {
                locations,
                command: Command::Token(args),
            },
            Err(_) => Cli::parse_from(arguments),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a new vault (master key in the OS keyring, else a key file)
    Init,
    /// See the whole token lifecycle in a minute: a throwaway vault and a built-in provider
    Demo {
        /// Keep the demo's directory (vault, key file, audit log) afterwards
        #[arg(long)]
        keep: bool,
    },
    /// Add an account; it is stored only after the provider proves its credentials
    AddAccount(Box<add::AddArgs>),
    /// Authorize an account again (after its refresh token was revoked or expired)
    Login(add::LoginArgs),
    /// List the accounts
    List,
    /// Show accounts' states, token expiry, last refresh and validation, next validation, last error
    Status(accounts::StatusArgs),
    /// Print a valid access token for an account (refreshing it if needed)
    Token(token::TokenArgs),
    /// Run a command with a fresh access token in its environment (ACCESS_TOKEN by default)
    Exec(token::ExecArgs),
    /// git credential helper: git config credential.helper "!vault git-credential --account NAME"
    GitCredential(token::GitCredentialArgs),
    /// Remove an account and its secrets, revoking its grant at the provider first
    Remove {
        name: String,
        /// Do not revoke the grant at the provider (another tool still uses it)
        #[arg(long)]
        keep_grant: bool,
    },
    /// Run the daemon: hand out access tokens over a Unix socket (foreground)
    Serve(serve::ServeArgs),
    /// Let another user or group fetch an account's access tokens from the daemon
    Grant(grant::GrantArgs),
    /// Withdraw a grant
    RevokeGrant(grant::GrantArgs),
    /// Prove accounts' credentials now with a live refresh, and print the results
    Validate(validate::ValidateArgs),
    /// Set an account's own validation schedule (cron) and refresh-ahead margin
    Schedule(validate::ScheduleArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff)
    Man,
    /// Rotate the keys: a new master key (a new key file, or the OS keyring) and a new data key
    /// re-sealing every secret, in one transaction
    Rekey {
        /// Put the new master key in this file (created 0600; must not exist yet)
        #[arg(long = "new-key-file", value_name = "PATH", conflicts_with = "keyring")]
        new_key_file: Option<PathBuf>,
        /// Put the new master key in the OS keyring (a new entry; the old one is removed)
        #[arg(long, required_unless_present = "new_key_file")]
        keyring: bool,
    },
    /// Write every account and its secrets to FILE, sealed with a passphrase
    Export {
        file: PathBuf,
        /// Read the passphrase from this file instead of a prompt
        #[arg(long, value_name = "PATH")]
        passphrase_file: Option<PathBuf>,
    },
    /// Add the accounts of an export FILE to this vault (all, or none if a name is taken)
    Import {
        file: PathBuf,
        /// Read the passphrase from this file instead of a prompt
        #[arg(long, value_name = "PATH")]
        passphrase_file: Option<PathBuf>,
    },
    /// Check the vault directory, files, master key, daemon and accounts; print each problem with
    /// the command that fixes it (changes nothing)
    Doctor,
    /// Write systemd user units for `vault serve` with socket activation
    InstallService {
        /// Where to write them [default: ~/.config/systemd/user]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl Cli {
    /// Whether this command runs the daemon (`serve`, `demo`), which writes to sockets whose
    /// peers may leave at any time: it must keep ignoring SIGPIPE.
    pub fn runs_daemon(&self) -> bool {
        matches!(self.command, Command::Serve(_) | Command::Demo { .. })
    }
}

pub fn run(cli: Cli) -> Result<(), Error> {
    let context = Context {
        dir: cli.locations.vault_dir.unwrap_or_else(default_vault_dir),
        // Recorded in the vault at init and rekey: relative, it would break every command run
        // from another directory.
        key_file: cli
            .locations
            .key_file
            .map(|path| std::path::absolute(&path).unwrap_or(path)),
        socket: cli
            .locations
            .socket
            .unwrap_or_else(crate::daemon::default_socket_path),
    };
    match cli.command {
        Command::Init => init::run(&context),
        Command::Demo { keep } => crate::demo::run(keep),
        Command::AddAccount(args) => add::run_add(&context, *args),
        Command::Login(args) => add::run_login(&context, args),
        Command::List => accounts::list(&context),
        Command::Status(args) => accounts::status(&context, args),
        Command::Token(args) => token::run(&context, args),
        Command::Exec(args) => token::exec(&context, args),
        Command::GitCredential(args) => token::git_credential(&context, args),
        Command::Remove { name, keep_grant } => accounts::remove(&context, &name, keep_grant),
        Command::Serve(args) => serve::run(&context, args),
        Command::Grant(args) => grant::run(&context, args, true),
        Command::RevokeGrant(args) => grant::run(&context, args, false),
        Command::Validate(args) => validate::validate(&context, args),
        Command::Schedule(args) => validate::schedule(&context, args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "vault", &mut std::io::stdout());
            Ok(())
        }
        Command::InstallService { dir } => install_service(&context, dir),
        Command::Doctor => doctor(&context),
        Command::Export {
            file,
            passphrase_file,
        } => export(&context, &file, passphrase_file.as_deref()),
        Command::Import {
            file,
            passphrase_file,
        } => import(&context, &file, passphrase_file.as_deref()),
        Command::Rekey {
            new_key_file,
            // --keyring is the other choice: no new key file means the keyring.
            keyring: _,
        } => rekey(&context, new_key_file),
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|err| Error::Input(format!("cannot write the manual page: {err}"))),
    }
}

/// What every command needs to find and open the vault.
struct Context {
    dir: PathBuf,
    key_file: Option<PathBuf>,
    socket: PathBuf,
}

impl Context {
    /// The master key source the user named, if any; `VAULT_MASTER_KEY` wins.
    fn key_override(&self) -> Option<KeySource> {
        if keys::env_key_present() {
            Some(KeySource::Env)
        } else {
            self.key_file.clone().map(KeySource::File)
        }
    }

    fn open(&self) -> Result<Store, Error> {
        Ok(Store::open(&self.dir, self.key_override())?)
    }
}

/// A passphrase from a file, else typed (twice when `confirm`); at least 12 characters.
fn passphrase(file: Option<&std::path::Path>, confirm: bool) -> Result<SecretString, Error> {
    use std::io::IsTerminal;
    let typed = match file {
        Some(path) => SecretString::from(std::fs::read_to_string(path).map_err(|err| {
            Error::Input(format!(
                "cannot read the passphrase file {}: {err}",
                path.display()
            ))
        })?)
        .trimmed(),
        None if std::io::stdin().is_terminal() => {
            let first = SecretString::from(
                rpassword::prompt_password("Passphrase: ")
                    .map_err(|err| Error::Input(format!("cannot read the passphrase: {err}")))?,
            );
            if confirm {
                let again =
                    SecretString::from(rpassword::prompt_password("Again: ").map_err(|err| {
                        Error::Input(format!("cannot read the passphrase: {err}"))
                    })?);
                if again.expose() != first.expose() {
                    return Err(Error::Input(
                        "the passphrases differ; nothing was written".into(),
                    ));
                }
            }
            first
        }
        None => {
            return Err(Error::Input(
                "give --passphrase-file PATH, or run on a terminal to type the passphrase".into(),
            ));
        }
    };
    if typed.expose().chars().count() < 12 {
        return Err(Error::Input(
            "the passphrase is shorter than 12 characters; choose a longer one".into(),
        ));
    }
    Ok(typed)
}

fn export(
    context: &Context,
    file: &std::path::Path,
    passphrase_file: Option<&std::path::Path>,
) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let store = context.open()?;
    let passphrase = passphrase(passphrase_file, true)?;
    let (bytes, count) = crate::archive::export(&store, &passphrase)?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|err| {
            Error::Input(format!(
                "cannot create {} (it must not exist yet): {err}",
                file.display()
            ))
        })?;
    out.write_all(&bytes)
        .and_then(|()| out.sync_all())
        .map_err(|err| Error::Input(format!("cannot write {}: {err}", file.display())))?;
    println!(
        "Exported {count} account(s) to {}, sealed with your passphrase.",
        file.display()
    );
    Ok(())
}

fn import(
    context: &Context,
    file: &std::path::Path,
    passphrase_file: Option<&std::path::Path>,
) -> Result<(), Error> {
    let bytes = std::fs::read(file)
        .map_err(|err| Error::Input(format!("cannot read {}: {err}", file.display())))?;
    let mut store = context.open()?;
    let passphrase = passphrase(passphrase_file, false)?;
    let names = crate::archive::import(&mut store, &bytes, &passphrase)?;
    println!("Imported {} account(s): {}", names.len(), names.join(", "));
    Ok(())
}

fn rekey(context: &Context, new_key_file: Option<PathBuf>) -> Result<(), Error> {
    let mut store = context.open()?;
    let old = store.key_source().clone();
    let new = match new_key_file {
        // A new file, never the old one rewritten: until the commit the old key must keep working.
        Some(path) if path.exists() => {
            return Err(Error::Input(format!(
                "{} exists; give a path for a new key file",
                path.display()
            )));
        }
        Some(path) => KeySource::File(std::path::absolute(&path).unwrap_or(path)),
        None => KeySource::Keyring,
    };
    let old_version = store.key_version();
    store.rekey(new.clone())?;
    if !store.checkpoint() {
        eprintln!(
            "vault: warning: a reader kept vault.db from being checkpointed; until SQLite checkpoints it (automatically, or when the last process using the vault, the daemon included, closes it), a copy of vault.db without its -wal file still opens with the old key. Take backups after that"
        );
    }
    println!(
        "Rekeyed: every secret is re-sealed with a new data key, wrapped by the master key in {}.",
        new.describe()
    );
    match old {
        KeySource::File(path) => println!(
            "The old key file {} no longer opens the vault; delete it.",
            path.display()
        ),
        KeySource::Keyring => keys::forget_keyring_entry(&store.vault_id()?, old_version),
        KeySource::Env => println!(
            "Unset VAULT_MASTER_KEY: the vault now uses {}.",
            new.describe()
        ),
    }
    Ok(())
}

fn doctor(context: &Context) -> Result<(), Error> {
    let places = crate::doctor::Places {
        vault_dir: &context.dir,
        socket: &context.socket,
        key_override: context.key_override(),
    };
    let findings = crate::doctor::examine(&places);
    for finding in &findings {
        if finding.ok {
            println!("ok    {}", finding.what);
        } else {
            println!(
                "FIX   {}
      → {}",
                finding.what, finding.fix
            );
        }
    }
    match findings.iter().filter(|finding| !finding.ok).count() {
        0 => Ok(()),
        problems => Err(Error::Input(format!(
            "{problems} problem(s) found; each is listed above with its fix"
        ))),
    }
}

fn install_service(context: &Context, dir: Option<PathBuf>) -> Result<(), Error> {
    let dir = dir.unwrap_or_else(|| {
        directories::BaseDirs::new()
            .map(|base| base.config_dir().join("systemd/user"))
            .unwrap_or_else(|| PathBuf::from(".config/systemd/user"))
    });
    let exe = std::env::current_exe()
        .map_err(|err| Error::Internal(format!("cannot find this program's path: {err}")))?;
    let vault_dir = (context.dir != default_vault_dir()).then_some(context.dir.as_path());
    std::fs::create_dir_all(&dir)
        .map_err(|err| Error::Input(format!("cannot create {}: {err}", dir.display())))?;
    for (name, text) in crate::service::unit_files(&exe, vault_dir) {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|err| Error::Input(format!("cannot write {}: {err}", path.display())))?;
        println!("wrote {}", path.display());
    }
    println!(
        "Next: systemctl --user daemon-reload && systemctl --user enable --now {}",
        crate::service::SOCKET_UNIT
    );
    Ok(())
}

fn default_vault_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "tokenvault")
        .map(|dirs| dirs.data_dir().to_owned())
        .unwrap_or_else(|| PathBuf::from(".tokenvault"))
}

/// A single-threaded runtime for the commands that talk to a provider.
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Internal(format!("cannot start the async runtime: {err}")))?;
    Ok(runtime.block_on(future))
}

/// "2026-11-24T13:00:00Z (in 59m 12s)" / "(3m ago)".
fn when(unix: i64) -> String {
    // A stored time comes from a provider's numbers or an edited database: never panic on it
    // (humantime's formatting fails, and `format!` then panics, past the year 9999).
    const YEAR_10000: i64 = 253_402_300_800;
    if !(0..YEAR_10000).contains(&unix) {
        return format!("{unix} (not a date)");
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix as u64);
    let delta = unix.saturating_sub(crate::clock::now_unix());
    let span = humantime::format_duration(std::time::Duration::from_secs(delta.unsigned_abs()));
    let relative = if delta >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    };
    format!("{} ({relative})", humantime::format_rfc3339_seconds(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(arguments: &[&str]) -> Option<(Locations, token::TokenArgs)> {
        let TokenOnlyCli { locations, command } = TokenOnlyCli::try_parse_from(arguments).ok()?;
        let TokenOnly::Token(args) = command;
        Some((locations, args))
    }

    fn full(arguments: &[&str]) -> Option<(Locations, token::TokenArgs)> {
        match Cli::try_parse_from(arguments).ok()? {
            Cli {
                locations,
                command: Command::Token(args),
            } => Some((locations, args)),
            _ => None,
        }
    }

    #[test]
    fn the_quick_token_parser_agrees_with_the_full_one() {
        for arguments in [
            &["vault", "token", "mail"][..],
            &["vault", "token", "mail", "--json", "--min-valid", "300"],
            &["vault", "--socket", "/run/s.sock", "token", "mail"],
            &["vault", "token", "--vault", "/v", "mail", "--no-daemon"],
            &["vault", "--key-file=/k", "token", "--min-valid=0", "mail"],
        ] {
            let quick = quick(arguments);
            assert!(quick.is_some(), "{arguments:?}");
            assert_eq!(quick, full(arguments), "{arguments:?}");
        }
    }

    #[test]
    fn help_errors_and_other_verbs_go_to_the_full_parser() {
        for arguments in [
            &["vault", "token", "--help"][..],
            &["vault", "--version"],
            &["vault", "token"],
            &["vault", "token", "a", "b"],
            &["vault", "token", "mail", "--min-valid", "-5"],
            &["vault", "list"],
            &["vault", "exec", "token", "--", "true"],
        ] {
            assert!(quick(arguments).is_none(), "{arguments:?}");
        }
    }
}
