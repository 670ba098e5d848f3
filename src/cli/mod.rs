//! The `vault` command line: argument parsing and output only; the work is in the library.

mod accounts;
mod add;
mod archive;
mod client_secret;
mod doctor;
mod fleet;
mod grant;
mod init;
mod rekey;
mod rotate;
mod serve;
mod service;
mod token;
mod validate;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::error::Error;
use crate::keys::{self, KeySource, Unlock};
use crate::store::{AnyStore, FleetDb, PgStore, Store};

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
struct Locations {
    /// The vault directory [default: $XDG_DATA_HOME/tokenvault]
    #[arg(long = "vault", global = true, env = "VAULT_DIR", value_name = "DIR")]
    vault_dir: Option<PathBuf>,
    /// Master key file (base64 of 32 bytes, mode 0600) instead of the OS keyring. VAULT_MASTER_KEY
    /// in the environment overrides both.
    #[arg(long, global = true, env = "VAULT_KEY_FILE", value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// For a vault whose master key is derived from a passphrase: read the passphrase from this
    /// file (mode 0600) instead of the terminal. Under systemd, the credential
    /// tokenvault-passphrase ($CREDENTIALS_DIRECTORY) is read when present
    #[arg(
        long,
        global = true,
        env = "VAULT_KEY_PASSPHRASE_FILE",
        value_name = "PATH"
    )]
    key_passphrase_file: Option<PathBuf>,
    /// The daemon's socket [default: $XDG_RUNTIME_DIR/tokenvault/vault.sock]
    #[arg(long, global = true, env = "VAULT_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl Cli {
    /// The command line of this process.
    pub fn from_args() -> Cli {
        Cli::parse()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a new vault (master key in the OS keyring, else a key file, or from a passphrase)
    Init {
        /// Derive the master key from a passphrase (Argon2id), typed twice or read from
        /// --key-passphrase-file; every command then asks for it (`vault serve` once, at start)
        #[arg(long)]
        passphrase: bool,
    },
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
    /// Rotate an account's client secret without downtime: the new one first, the previous one
    /// as a fallback on invalid_client until --retire-old
    SetClientSecret(client_secret::SetClientSecretArgs),
    /// Rotate an account's own key through the provider's API (Google service-account key,
    /// Microsoft client secret): create, prove, store, delete the old one
    Rotate(rotate::RotateArgs),
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
    /// Set an account's own validation schedule (cron), refresh-ahead margin and key rotation
    Schedule(validate::ScheduleArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff)
    Man,
    /// Rotate the keys: a new master key (a new key file, or the OS keyring) and a new data key
    /// re-sealing every secret, in one transaction
    #[command(group = clap::ArgGroup::new("new_key").required(true).args(["new_key_file", "keyring", "passphrase"]))]
    Rekey {
        /// Put the new master key in this file (created 0600; must not exist yet)
        #[arg(long = "new-key-file", value_name = "PATH")]
        new_key_file: Option<PathBuf>,
        /// Put the new master key in the OS keyring (a new entry; the old one is removed)
        #[arg(long)]
        keyring: bool,
        /// Derive the new master key from a new passphrase (typed twice, or read from
        /// --new-passphrase-file)
        #[arg(long)]
        passphrase: bool,
        /// Read the new passphrase from this file (mode 0600)
        #[arg(long, value_name = "PATH", requires = "passphrase")]
        new_passphrase_file: Option<PathBuf>,
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
    /// Fleet mode: the vault on a PostgreSQL database several hosts share
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
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
        passphrase_file: cli
            .locations
            .key_passphrase_file
            .or_else(systemd_passphrase_credential),
        socket: cli
            .locations
            .socket
            .unwrap_or_else(crate::daemon::default_socket_path),
    };
    match cli.command {
        Command::Init { passphrase } => init::run(&context, passphrase),
        Command::Demo { keep } => crate::demo::run(keep),
        Command::AddAccount(args) => add::run_add(&context, *args),
        Command::Login(args) => add::run_login(&context, args),
        Command::List => accounts::list(&context),
        Command::Status(args) => accounts::status(&context, args),
        Command::Token(args) => token::run(&context, args),
        Command::Exec(args) => token::exec(&context, args),
        Command::GitCredential(args) => token::git_credential(&context, args),
        Command::SetClientSecret(args) => client_secret::run(&context, args),
        Command::Rotate(args) => rotate::run(&context, args),
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
        Command::Fleet(command) => fleet::run(&context, command),
        Command::InstallService { dir } => service::install_service(&context, dir),
        Command::Doctor => doctor::doctor(&context),
        Command::Export {
            file,
            passphrase_file,
        } => archive::export(&context, &file, passphrase_file.as_deref()),
        Command::Import {
            file,
            passphrase_file,
        } => archive::import(&context, &file, passphrase_file.as_deref()),
        Command::Rekey {
            new_key_file,
            // --keyring is the remaining choice of the required group: neither of the others.
            keyring: _,
            passphrase,
            new_passphrase_file,
        } => rekey::rekey(
            &context,
            rekey::Target::chosen(new_key_file, passphrase),
            new_passphrase_file.as_deref(),
        ),
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|err| Error::Input(format!("cannot write the manual page: {err}"))),
    }
}

/// What every command needs to find and open the vault.
struct Context {
    dir: PathBuf,
    key_file: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
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

    fn unlock(&self) -> Unlock {
        Unlock {
            source: self.key_override(),
            passphrase_file: self.passphrase_file.clone(),
        }
    }

    /// The vault: the fleet's on PostgreSQL when one is configured, else the local one.
    fn open_any(&self) -> Result<AnyStore, Error> {
        Ok(match self.fleet()? {
            Some(fleet) => AnyStore::Fleet(PgStore::open(&fleet, &self.dir, &self.unlock())?),
            None => AnyStore::Local(Store::open(&self.dir, &self.unlock())?),
        })
    }

    fn config_may_name_a_fleet(&self) -> bool {
        std::fs::read_to_string(self.dir.join(crate::config::CONFIG_FILE))
            .map_or(true, |text| text.contains("fleet"))
    }

    /// The fleet's database when this host's vault is a fleet's: `VAULT_DATABASE_URL`, else
    /// config.toml's `[fleet] database` (whose password may only come from `password_file`:
    /// config.toml may be readable by others).
    fn fleet(&self) -> Result<Option<FleetDb>, Error> {
        let config = match crate::config::Config::load(&self.dir) {
            Ok(config) => config,
            // A broken config.toml that names no fleet keeps the commands of this host's own
            // vault working, as before fleet mode; one that may name a fleet is an error, never
            // a silent fall-back to the local vault.
            Err(err) if self.config_may_name_a_fleet() => {
                return Err(Error::Input(err.to_string()));
            }
            Err(_) => crate::config::Config::default(),
        };
        let from_env = std::env::var("VAULT_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty());
        let url = match (from_env, config.fleet.database) {
            (Some(url), _) => url,
            (None, Some(url)) if carries_password(&url) => {
                return Err(Error::Input(
                    "config.toml's [fleet] database carries a password: remove it and put the password in a 0600 file named by [fleet] password_file".into(),
                ));
            }
            (None, Some(url)) => url,
            (None, None) => return Ok(None),
        };
        // An address with a password (VAULT_DATABASE_URL only) needs no password file.
        let password = match &config.fleet.password_file {
            Some(path) if !carries_password(&url) => Some(
                crate::files::read_private_file(path)
                    .map_err(|err| Error::Input(format!("[fleet] password_file: {err}")))?
                    .into_string()
                    .ok_or_else(|| Error::Input("[fleet] password_file is not text".into()))?
                    .trimmed(),
            ),
            _ => None,
        };
        let host = std::env::var("VAULT_FLEET_HOST")
            .ok()
            .filter(|host| !host.is_empty())
            .or(config.fleet.host)
            .unwrap_or_else(|| {
                rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned()
            });
        Ok(Some(FleetDb::new(
            &url,
            password.as_ref(),
            &host,
            config.fleet.ca_file.as_deref(),
        )?))
    }
}

/// Whether a PostgreSQL address names a password (URL or key=value form).
fn carries_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|url| url.password().is_some())
        || url
            .split_whitespace()
            .any(|pair| pair.starts_with("password="))
}

/// The passphrase systemd hands the service (`LoadCredential=tokenvault-passphrase:PATH`), if any.
fn systemd_passphrase_credential() -> Option<PathBuf> {
    let path =
        PathBuf::from(std::env::var_os("CREDENTIALS_DIRECTORY")?).join(keys::PASSPHRASE_CREDENTIAL);
    path.exists().then_some(path)
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

/// An age as people set it: whole days as "90d", anything else as humantime writes it.
fn age(seconds: i64) -> String {
    const DAY: i64 = 24 * 3600;
    if seconds > 0 && seconds % DAY == 0 {
        format!("{}d", seconds / DAY)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(seconds.max(0) as u64))
            .to_string()
    }
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
    use crate::front::{self, TokenCall};

    fn quick(arguments: &[&str]) -> Option<TokenCall> {
        let arguments: Vec<std::ffi::OsString> = arguments.iter().map(Into::into).collect();
        front::parse(&arguments)
    }

    /// What the full parser makes of a `vault token` line the front would answer itself.
    fn full(arguments: &[&str]) -> Option<TokenCall> {
        match Cli::try_parse_from(arguments).ok()? {
            Cli {
                locations,
                command: Command::Token(args),
            } => args.as_front_call(locations.socket),
            _ => None,
        }
    }

    #[test]
    fn the_front_agrees_with_the_full_parser() {
        for arguments in [
            &["vault", "token", "mail"][..],
            &["vault", "token", "mail", "--json", "--min-valid", "300"],
            &["vault", "--socket", "/run/s.sock", "token", "mail"],
            &["vault", "token", "--vault", "/v", "mail"],
            &["vault", "--key-file=/k", "token", "--min-valid=0", "mail"],
            &["vault", "token", "mail", "--socket=/s", "--key-file", "/k"],
            &["vault", "--key-passphrase-file", "/p", "token", "mail"],
        ] {
            let quick = quick(arguments);
            assert!(quick.is_some(), "{arguments:?}");
            assert_eq!(quick, full(arguments), "{arguments:?}");
        }
    }

    #[test]
    fn help_errors_and_other_verbs_go_to_the_full_program() {
        for arguments in [
            &["vault", "token", "--help"][..],
            &["vault", "token", "-h"],
            &["vault", "--version"],
            &["vault"],
            &["vault", "token"],
            &["vault", "token", "a", "b"],
            &["vault", "token", "mail", "--min-valid", "-5"],
            &["vault", "token", "mail", "--min-valid", "99999999999"],
            &["vault", "token", "mail", "--no-daemon"],
            &["vault", "token", "mail", "--json=yes"],
            &["vault", "token", "mail", "--json", "--json"],
            &["vault", "--socket", "/a", "--socket", "/b", "token", "mail"],
            &["vault", "--socket=", "token", "mail"],
            &["vault", "token", "--", "mail"],
            &["vault", "list"],
            &["vault", "mail", "token"],
            &["vault", "exec", "token", "--", "true"],
        ] {
            assert!(quick(arguments).is_none(), "{arguments:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Whatever the command line, the front answers only what the full parser reads as the
        /// same `vault token` call.
        #[test]
        fn any_command_line_the_front_takes_means_the_same_to_clap(
            words in proptest::collection::vec(
                proptest::sample::select(vec![
                    "token", "mail", "--json", "--min-valid", "30", "--min-valid=5", "-5",
                    "--socket", "/s", "--socket=/t", "--vault", "/v", "--key-file=/k", "--no-daemon",
                    "--", "-h", "x=y", "",
                ]),
                0..7,
            ),
        ) {
            let mut arguments = vec!["vault"];
            arguments.extend(words);
            if let Some(call) = quick(&arguments) {
                proptest::prop_assert_eq!(Some(call), full(&arguments));
            }
        }
    }
}
