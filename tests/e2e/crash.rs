//! Crash safety: SIGKILL at any moment never loses a committed refresh token, never spends one
//! twice, and a grant lost in the one window no client can close — after the provider rotated,
//! before the new token is committed — is detected as reauth_required on the next refresh.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokenvault::account::SecretKind;

use crate::add_with_browser;
use crate::daemon_support::{Daemon, signal};
use crate::fake_oauth::OfflineRule;
use crate::support::TestVault;

/// The refresh token the vault holds, read through the library with the vault's master key.
fn stored_refresh_token(vault: &TestVault) -> String {
    let store = vault.open_store();
    let account = store.account("rotating").unwrap();
    store
        .secret(&account, SecretKind::RefreshToken)
        .unwrap()
        .unwrap()
        .expose()
        .clone()
}

/// Kills the daemon `kills` times at random moments while it rotates the refresh token again and
/// again (every answer expires at once, so every ask refreshes), restarting it each time.
/// Returns how many kills landed in the window between the provider's rotation and the commit.
fn kill_during_rotation(kills: usize) -> usize {
    let fake = crate::fake_oauth::start(OfflineRule::OfflineAccessScope);
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
                        && try_get(&socket, "/v1/token/rotating?min_valid=0").is_some()
                    {
                    }
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
        let stored = stored_refresh_token(&vault);
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
fn try_get(socket: &std::path::Path, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    crate::daemon_support::parse(&raw).map(|answer| answer.status)
}

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
