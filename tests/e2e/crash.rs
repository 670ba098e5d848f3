//! Crash safety: SIGKILL at any moment never loses a committed refresh token, never spends one
//! twice, and a grant lost in the one window no client can close — after the provider rotated,
//! before the new token is committed — is detected as reauth_required on the next refresh.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokenvault::account::SecretKind;

use crate::support::Scenario;
use crate::support::TestVault;
use crate::support::add_with_browser;
use crate::support::daemon::{Daemon, signal};
use crate::support::fake_oauth::OfflineRule;

/// Kills the daemon `kills` times at random moments while it rotates the refresh token again and
/// again (every answer expires at once, so every ask refreshes), restarting it each time.
/// Returns how many kills landed in the window between the provider's rotation and the commit.
fn kill_during_rotation(kills: usize) -> usize {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| {
        b.rotate = true;
        b.access_lifetime = 0;
    });
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "rotating").ok();
    let mut in_window = 0;
    for kill in 0..kills {
        let daemon = Daemon::start(&vault, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let askers: Vec<_> = (0..4)
            .map(|_| {
                let (socket, stop) = (daemon.socket.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed)
                        && crate::support::daemon::try_get(
                            &socket,
                            "/v1/token/rotating?min_valid=0",
                        )
                        .is_some()
                    {}
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(u64::from(random_u32() % 300)));
        signal(&daemon.child, rustix::process::Signal::KILL);
        drop(daemon);
        stop.store(true, Ordering::Relaxed);
        askers.into_iter().for_each(|asker| asker.join().unwrap());

        // The vault holds the provider's current token, or — killed inside the window — the one
        // just before it. Anything older would be a lost commit or a token spent twice.
        let stored = vault.stored_secret("rotating", SecretKind::RefreshToken);
        let (current, previous, alive) = fake.newest_grant().unwrap();
        assert!(
            alive,
            "kill {kill}: the grant died while the vault held a valid token"
        );
        if stored == current {
            continue;
        }
        assert_eq!(
            Some(&stored),
            previous.as_ref(),
            "kill {kill}: the vault lost a committed rotation"
        );
        in_window += 1;
        // The next refresh finds out, says so, and a login heals it.
        let daemon = Daemon::start(&vault, &[]);
        let answer = daemon.get("/v1/token/rotating?min_valid=0");
        assert_eq!(answer.status, 409, "kill {kill}: {}", answer.body);
        assert_eq!(answer.json()["error"], "reauth_required");
        drop(daemon);
        vault.run(&["login", "rotating", "--timeout", "30"]).ok();
    }
    let daemon = Daemon::start(&vault, &[]);
    assert_eq!(daemon.get("/v1/token/rotating?min_valid=0").status, 200);
    let rotations = fake.counters(|c| c.refresh_grants);
    eprintln!(
        "{kills} kills during {rotations} rotations; {in_window} landed between a rotation and its commit"
    );
    assert!(rotations as usize > kills, "it kept rotating: {rotations}");
    in_window
}

/// A status, or `None` when the daemon went away mid-request.
fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    u32::from_le_bytes(bytes)
}

#[test]
fn sigkill_during_rotation_never_loses_a_committed_token() {
    kill_during_rotation(25);
}

/// The long version: `cargo test --test e2e -- --ignored sigkill_soak` (README).
#[test]
#[ignore = "soak test, a few minutes"]
fn sigkill_soak() {
    kill_during_rotation(250);
}

/// Whether the master key in `key_file` opens the vault and every secret in it.
fn opens_every_secret(vault: &TestVault, key_file: &std::path::Path) -> bool {
    let key = tokenvault::keys::KeySource::File(key_file.to_owned());
    let Ok(store) = tokenvault::store::Store::open(
        &vault.dir,
        &tokenvault::keys::Unlock {
            source: Some(key),
            passphrase_file: None,
        },
    ) else {
        return false;
    };
    store.accounts().unwrap().iter().all(|account| {
        store
            .secret(account, SecretKind::RefreshToken)
            .is_ok_and(|secret| secret.is_some())
    })
}

/// `vault rekey --new-key-file NEW` with the master key in `current`; killed after `delay`, if any.
fn rekey(
    vault: &TestVault,
    current: &std::path::Path,
    new: &std::path::Path,
    delay: Option<Duration>,
) {
    let mut command = vault.command(&[
        "--key-file",
        current.to_str().unwrap(),
        "rekey",
        "--new-key-file",
        new.to_str().unwrap(),
    ]);
    command
        .env_remove("VAULT_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    if let Some(delay) = delay {
        std::thread::sleep(delay);
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(
        delay.is_some() || status.success(),
        "rekey failed: {status}"
    );
}

/// SIGKILL at random moments of `vault rekey` over 2,000 accounts: afterwards exactly one of the old
/// and the new master key opens the vault, and it opens every secret — never a mix, never neither.
#[test]
fn sigkill_during_rekey_leaves_exactly_one_working_key() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    let mut store = vault.open_store();
    let config = store.account("mail").unwrap().config;
    for i in 0..2000 {
        let refresh = tokenvault::secret::SecretString::from(format!("rt-bulk-{i}"));
        let access = tokenvault::secret::SecretString::from(format!("at-bulk-{i}"));
        let tokens = tokenvault::store::TokenUpdate {
            access_token: &access,
            access_expires_at: Some(tokenvault::clock::now_unix() + 3600),
            new_refresh_token: None,
            refresh_expires_at: None,
            validated: true,
        };
        store
            .insert_account(
                &format!("bulk-{i}"),
                &config,
                &[(SecretKind::RefreshToken, &refresh)],
                &tokens,
            )
            .unwrap();
    }
    drop(store);

    // One rekey to the end measures how long one takes; the kills land anywhere in that span.
    let mut current = vault.root.path().join("rekey-0.key");
    let started = std::time::Instant::now();
    rekey(&vault, &vault.key_file(), &current, None);
    let span = started.elapsed().as_millis() as u32 + 1;
    let (mut kept_old, mut took_new) = (0, 0);
    for kill in 1..=15 {
        let new = vault.root.path().join(format!("rekey-{kill}.key"));
        let delay = Duration::from_millis(u64::from(random_u32() % span));
        rekey(&vault, &current, &new, Some(delay));
        let old_opens = opens_every_secret(&vault, &current);
        let new_opens = new.exists() && opens_every_secret(&vault, &new);
        assert!(
            old_opens != new_opens,
            "kill {kill} after {delay:?}: old key opens all: {old_opens}, new key opens all: {new_opens}"
        );
        if new_opens {
            current = new;
            took_new += 1;
        } else {
            kept_old += 1;
            // A kill between creating the key file and writing it leaves it short of a key.
            let whole_key = std::fs::read_to_string(&new).is_ok_and(|text| text.trim().len() == 44);
            if whole_key {
                // The key file the killed rekey made opens nothing: doctor names it.
                let mut doctor =
                    vault.command(&["--key-file", current.to_str().unwrap(), "doctor"]);
                doctor.env_remove("VAULT_MASTER_KEY");
                let found = vault.run_command(doctor, None);
                let leftover = format!("rm {}", new.display());
                assert!(found.stdout.contains(&leftover), "{}", found.stdout);
            }
        }
    }
    eprintln!(
        "rekey takes {span} ms; of 15 kills, {kept_old} left the old key working, {took_new} the new"
    );
    // Whichever key won, the vault refreshes with it.
    let mut token = vault.command(&[
        "--key-file",
        current.to_str().unwrap(),
        "token",
        "mail",
        "--no-daemon",
        "--min-valid",
        "7200",
    ]);
    token.env_remove("VAULT_MASTER_KEY");
    let token = vault.run_command(token, None);
    token.ok();
    assert!(fake.is_access_token(token.stdout.trim()));
}
