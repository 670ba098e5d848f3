//! `vault doctor`: what is wrong with this installation, each finding with the command that fixes
//! it. It only looks; it changes nothing.

mod fleet;
mod outside;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::account::AccountState;
use crate::config::{CONFIG_FILE, Config};
use crate::keys::KeySource;
use crate::store::{AnyStore, DB_FILE, FleetDb, Store};

/// One check's result.
pub struct Finding {
    pub ok: bool,
    pub what: String,
    /// What to do about it (empty when `ok`).
    pub fix: String,
}

fn fine(what: impl Into<String>) -> Finding {
    Finding {
        ok: true,
        what: what.into(),
        fix: String::new(),
    }
}

fn problem(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        ok: false,
        what: what.into(),
        fix: fix.into(),
    }
}

/// Where things are, as the command line said.
pub struct Places<'a> {
    pub vault_dir: &'a Path,
    pub socket: &'a Path,
    pub unlock: crate::keys::Unlock,
    /// The fleet this host belongs to, if config.toml or the environment names one (or why
    /// that cannot be read).
    pub fleet: Result<Option<FleetDb>, String>,
}

/// Every check, in the order a user would fix things.
pub async fn examine(places: &Places<'_>) -> Vec<Finding> {
    let me = rustix::process::geteuid().as_raw();
    let mut findings = vec![vault_dir(places.vault_dir, me)];
    findings.extend(vault_files(places.vault_dir, me));
    findings.extend(old_lock_files(places.vault_dir));
    findings.push(config(places.vault_dir));
    let store = match &places.fleet {
        Err(err) => {
            findings.push(problem(
                format!("the fleet settings: {err}"),
                format!("edit {}", places.vault_dir.join(CONFIG_FILE).display()),
            ));
            None
        }
        Ok(Some(db)) => {
            let (found, store) = fleet::examine(db, places);
            findings.extend(found);
            store.map(AnyStore::Fleet)
        }
        Ok(None) => local_vault(places, &mut findings).map(AnyStore::Local),
    };
    let http = crate::oauth::token::http_client();
    if let Some(store) = &store {
        findings.push(daemon(places.socket, store));
        if let Some(master) = MasterKey::of(store) {
            findings.extend(orphaned_keyring_entries(&master));
            findings.extend(orphaned_key_file(&master));
        }
        findings.extend(accounts(store));
        if let Ok(accounts) = store.accounts() {
            findings.extend(outside::provider_clocks(&http, &accounts).await);
        }
    }
    findings.extend(outside::alert_sinks(&http, places.vault_dir).await);
    findings
}

/// This host's own vault, opened with its master key.
fn local_vault(places: &Places<'_>, findings: &mut Vec<Finding>) -> Option<Store> {
    match Store::open(places.vault_dir, &places.unlock) {
        Ok(store) => {
            findings.push(fine(format!(
                "the master key ({}) opens the vault",
                store.key_source().describe()
            )));
            Some(store)
        }
        Err(err) => {
            findings.push(problem(
                format!("the vault does not open: {err}"),
                "see above",
            ));
            None
        }
    }
}

fn vault_dir(dir: &Path, me: u32) -> Finding {
    match crate::files::check_private_dir(dir, me) {
        Ok(()) => fine(format!("the vault directory {} is private", dir.display())),
        Err(crate::files::DirProblem::Missing) => {
            problem(format!("no vault at {}", dir.display()), "vault init")
        }
        Err(why) => problem(
            format!("the vault directory: {why}"),
            format!("chown $(id -u) {0} && chmod 700 {0}", dir.display()),
        ),
    }
}

/// The lock file per account that versions before `refresh.lock` left in `locks/`: unused now.
fn old_lock_files(dir: &Path) -> Option<Finding> {
    let old = dir.join("locks");
    std::fs::symlink_metadata(&old).ok()?;
    Some(problem(
        format!(
            "{} holds the per-account lock files of an earlier tokenvault, no longer used",
            old.display()
        ),
        format!(
            "once every vault process runs this version (restart vault serve): rm -r {}",
            old.display()
        ),
    ))
}

/// The database and its companions, the audit log and the config: private files, no symlinks.
fn vault_files(dir: &Path, me: u32) -> Vec<Finding> {
    let audit = dir.join("audit.log");
    let names = [
        DB_FILE.to_owned(),
        format!("{DB_FILE}-wal"),
        format!("{DB_FILE}-shm"),
        CONFIG_FILE.to_owned(),
        crate::store::LOCK_FILE.to_owned(),
    ];
    names
        .iter()
        .map(|name| dir.join(name))
        .chain(std::iter::once(audit.clone()))
        .chain((1..=crate::daemon::audit::KEEP).map(|n| crate::daemon::audit::rotated(&audit, n)))
        .filter_map(|path| {
            let meta = std::fs::symlink_metadata(&path).ok()?;
            let shown = path.display();
            Some(if meta.file_type().is_symlink() {
                problem(
                    format!("{shown} is a symbolic link"),
                    format!("replace it with the real file (tokenvault refuses to follow it): ls -l {shown}"),
                )
            } else if meta.uid() != me {
                problem(
                    format!("{shown} belongs to uid {}", meta.uid()),
                    format!("chown $(id -u) {shown}"),
                )
            } else if meta.mode() & 0o077 != 0 {
                problem(
                    format!("{shown} is mode {:o}", meta.mode() & 0o777),
                    format!("chmod 600 {shown}"),
                )
            } else {
                fine(format!("{shown} is private"))
            })
        })
        .collect()
}

fn config(dir: &Path) -> Finding {
    match Config::load(dir) {
        Ok(_) => fine(format!("{CONFIG_FILE} is valid (or absent: the defaults)")),
        Err(err) => problem(
            err.to_string(),
            format!("edit {}", dir.join(CONFIG_FILE).display()),
        ),
    }
}

/// Whether a daemon answers on the socket, is trusted, and serves this vault.
fn daemon(socket: &Path, store: &AnyStore) -> Finding {
    let shown = socket.display();
    let Ok(ours) = store.vault_id() else {
        return problem("the vault has no id", "restore vault.db from a backup");
    };
    match crate::client::served_vault(socket) {
        Ok(None) => fine(format!(
            "no daemon on {shown} (vault token reads the vault directly; start one with: vault serve)"
        )),
        Ok(Some(served)) if served == ours => {
            fine(format!("the daemon on {shown} serves this vault"))
        }
        Ok(Some(_)) => problem(
            format!("the daemon on {shown} serves another vault"),
            "stop it, or point this vault's commands at their daemon with --socket / VAULT_SOCKET",
        ),
        Err(err) => problem(err.to_string(), "see above"),
    }
}

/// This host's master key as doctor sees it: where it is, the data-key version it opens, and
/// where a rekey begun and not committed was putting the next one.
struct MasterKey {
    vault_id: String,
    source: KeySource,
    version: i64,
    pending: Option<KeySource>,
}

impl MasterKey {
    fn of(store: &AnyStore) -> Option<MasterKey> {
        Some(match store {
            AnyStore::Local(store) => MasterKey {
                vault_id: store.vault_id().ok()?,
                source: store.key_source().clone(),
                version: store.key_version(),
                pending: store.pending_rekey(),
            },
            AnyStore::Fleet(store) => {
                let (source, version) = store.host_master().ok()?;
                MasterKey {
                    vault_id: store.vault_id().to_owned(),
                    source,
                    version,
                    pending: store.pending_rekey().ok()?,
                }
            }
        })
    }
}

/// Keyring entries that open nothing the vault uses: older master keys, left behind when a
/// rekey was interrupted between its commit and their deletion (a copy of an old vault file
/// opens with them), and the next one a rekey killed before its commit made.
fn orphaned_keyring_entries(master: &MasterKey) -> Vec<Finding> {
    let in_keyring = matches!(master.source, KeySource::Keyring);
    let next_in_keyring = matches!(master.pending, Some(KeySource::Keyring));
    if !in_keyring && !next_in_keyring {
        return Vec::new();
    }
    let older = match in_keyring {
        true => entries_left(&master.vault_id, 1..master.version),
        false => Vec::new(),
    };
    let next = match next_in_keyring {
        true => entries_left(&master.vault_id, std::iter::once(master.version + 1)),
        false => Vec::new(),
    };
    let mut findings = Vec::new();
    if !older.is_empty() {
        findings.push(problem(
            format!(
                "the keyring still holds old master keys ({}) that open old copies of the vault",
                older.join(", ")
            ),
            clear_keyring_entries(&older),
        ));
    }
    if !next.is_empty() {
        findings.push(problem(
            format!(
                "an interrupted vault rekey left the keyring entry {}, which opens nothing here",
                next.join(", ")
            ),
            clear_keyring_entries(&next),
        ));
    }
    if findings.is_empty() {
        findings.push(fine("no old master keys left in the keyring"));
    }
    findings
}

/// The keyring users of the master keys of `versions` that exist.
fn entries_left(vault_id: &str, versions: impl Iterator<Item = i64>) -> Vec<String> {
    versions
        .filter(|version| crate::keys::keyring_entry_exists(vault_id, *version))
        .map(|version| crate::keys::keyring_user(vault_id, version))
        .collect()
}

fn clear_keyring_entries(users: &[String]) -> String {
    users
        .iter()
        .map(|user| format!("secret-tool clear service tokenvault username {user}"))
        .collect::<Vec<_>>()
        .join(" && ")
}

/// The new key file of a `vault rekey` killed before its commit: it opens nothing, and would
/// only confuse (or, kept beside backups, look like the key).
fn orphaned_key_file(master: &MasterKey) -> Option<Finding> {
    let Some(KeySource::File(path)) = &master.pending else {
        return None;
    };
    let in_use = matches!(&master.source, KeySource::File(current) if current == path);
    // The path comes from the database: an edited one must not get any file of the user's named
    // for deletion, only a private file holding a master key.
    let holds_a_key = KeySource::File(path.clone()).load("", 0, None).is_ok();
    (holds_a_key && !in_use).then(|| {
        problem(
            format!(
                "an interrupted vault rekey left the key file {}, which opens nothing here",
                path.display()
            ),
            format!(
                "unless another vault uses it as its key: rm {}",
                path.display()
            ),
        )
    })
}

/// Accounts that need a person.
fn accounts(store: &AnyStore) -> Vec<Finding> {
    let Ok(accounts) = store.summaries() else {
        return vec![problem(
            "the accounts cannot be read",
            "restore vault.db from a backup",
        )];
    };
    let waiting: Vec<Finding> = accounts
        .iter()
        .filter_map(|account| {
            let name = &account.name;
            match account.state {
                AccountState::ReauthRequired => Some(problem(
                    format!("account {name} needs a new authorization"),
                    format!("vault login {name}"),
                )),
                AccountState::ClientError => Some(problem(
                    format!("account {name}'s client or configuration was rejected"),
                    format!("vault status {name}  (the last error says what to fix)"),
                )),
                AccountState::Active | AccountState::Degraded => None,
            }
        })
        .collect();
    if waiting.is_empty() {
        vec![fine(format!(
            "{} account(s), none waiting for you",
            accounts.len()
        ))]
    } else {
        waiting
    }
}
