//! The master key in a real OS keyring: a private D-Bus session bus with gnome-keyring's Secret
//! Service, unlocked, as on a desktop. `vault init` puts the key there, every command finds it,
//! and `vault rekey` moves it between the keyring and key files, or to a new keyring entry.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ecosystem::have;
use crate::support::fake_oauth::OfflineRule;
use crate::support::{Run, TestVault};

/// A session bus and an unlocked Secret Service for one test; both end when it is dropped.
struct SecretService {
    bus: Child,
    address: String,
}

impl SecretService {
    fn start(vault: &TestVault) -> SecretService {
        let root = vault.root.path();
        let socket = root.join("session-bus");
        let address = format!("unix:path={}", socket.display());
        let bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", &format!("--address={address}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon runs (.ci/run installs it)");
        crate::support::eventually(Duration::from_secs(10), || socket.exists());
        let runtime = root.join("keyring-runtime");
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&runtime)
            .unwrap();
        // Unlocks (creating it first) the login keyring with this password read from stdin; the
        // daemon stays on the bus and leaves when the bus goes.
        let mut keyring = Command::new("gnome-keyring-daemon");
        keyring
            .args(["--unlock", "--components=secrets"])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("HOME", root.join("home"))
            .env("XDG_DATA_HOME", root.join("home/.local/share"))
            .env("XDG_RUNTIME_DIR", &runtime);
        let unlocked = crate::support::run_with_input(keyring, "keyring-test-password");
        assert!(unlocked.status.success(), "gnome-keyring-daemon --unlock");
        SecretService { bus, address }
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

#[test]
fn the_keyring_holds_the_master_key_and_rekey_rotates_it() {
    assert!(
        have("dbus-daemon") && have("gnome-keyring-daemon"),
        "dbus-daemon and gnome-keyring are missing (.ci/run installs them)"
    );
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::uninitialized(Some(&fake));
    let service = SecretService::start(&vault);
    // No VAULT_MASTER_KEY, no key file: the keyring or nothing.
    let with_keyring = |args: &[&str]| -> Run {
        let mut command = vault.command(args);
        command
            .env_remove("VAULT_MASTER_KEY")
            .env("DBUS_SESSION_BUS_ADDRESS", &service.address);
        vault.run_command(command, None)
    };
    let fresh_token = |run: &dyn Fn(&[&str]) -> Run| {
        let token = run(&["token", "mail", "--no-daemon", "--min-valid", "7200"]);
        token.ok();
        assert!(
            fake.is_access_token(token.stdout.trim()),
            "{}",
            token.stdout
        );
    };
    let init = with_keyring(&["init"]);
    init.ok();
    assert!(init.stdout.contains("the OS keyring"), "{}", init.stdout);
    let add = crate::support::browser_add_args(&vault, &fake, "mail", &["--timeout", "30"]);
    with_keyring(&add.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    fresh_token(&with_keyring);
    assert!(
        !vault
            .root
            .path()
            .join("home/.config/tokenvault/master.key")
            .exists()
    );

    // Keyring → a new keyring entry, in one step.
    with_keyring(&["rekey", "--keyring"]).ok();
    fresh_token(&with_keyring);

    // Keyring → key file: afterwards no keyring is needed at all.
    let key_file = vault.root.path().join("moved.key");
    with_keyring(&["rekey", "--new-key-file", key_file.to_str().unwrap()]).ok();
    let without_keyring = |args: &[&str]| -> Run {
        let mut command = vault.command(args);
        command.env_remove("VAULT_MASTER_KEY");
        vault.run_command(command, None)
    };
    fresh_token(&without_keyring);

    // Key file → keyring again; the key file no longer opens the vault.
    with_keyring(&["rekey", "--keyring"]).ok();
    fresh_token(&with_keyring);
    let mut stale = vault.command(&[
        "--key-file",
        key_file.to_str().unwrap(),
        "token",
        "mail",
        "--no-daemon",
    ]);
    stale.env_remove("VAULT_MASTER_KEY");
    vault.run_command(stale, None).fails_with(6, "");
    vault.assert_no_plaintext_on_disk();
}

/// A fleet rekey into the keyring killed before its commit (while it waits for a lease another
/// host holds) leaves a keyring entry that opens nothing: `vault doctor` names it. A rekey that
/// commits then takes that entry as its key, and doctor has nothing left to name.
#[test]
fn doctor_names_the_keyring_entry_an_interrupted_fleet_rekey_left() {
    let pg = crate::support::postgres::Postgres::start();
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    let service = SecretService::start(&vault);
    let fleet = |args: &[&str]| -> Command {
        let mut command = vault.command(args);
        command
            .env("VAULT_DATABASE_URL", pg.url())
            .env("VAULT_FLEET_HOST", "host-a")
            .env("DBUS_SESSION_BUS_ADDRESS", &service.address);
        command
    };
    vault.run_command(fleet(&["fleet", "init"]), None).ok();
    let add = crate::support::browser_add_args(&vault, &fake, "mail", &["--timeout", "30"]);
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    vault.run_command(fleet(&add), None).ok();

    // The key is made right after the rekey records where it goes.
    pg.kill_while_waiting_for_leases(fleet(&["rekey", "--keyring"]), || {
        pg.client()
            .query_one("SELECT rekey_pending FROM hosts WHERE host = 'host-a'", &[])
            .unwrap()
            .get::<_, Option<String>>(0)
            .is_some()
    });
    let doctor = vault.run_command(fleet(&["doctor"]), None);
    assert!(
        doctor
            .stdout
            .contains("an interrupted vault rekey left the keyring entry"),
        "{}",
        doctor.stdout
    );

    vault.run_command(fleet(&["rekey", "--keyring"]), None).ok();
    let mut from_keyring = fleet(&["doctor"]);
    from_keyring.env_remove("VAULT_MASTER_KEY");
    let doctor = vault.run_command(from_keyring, None);
    assert!(
        doctor.stdout.contains("opens as host host-a")
            && doctor
                .stdout
                .contains("no old master keys left in the keyring")
            && !doctor.stdout.contains("interrupted vault rekey"),
        "{}",
        doctor.stdout
    );
    let mut token = fleet(&["token", "mail", "--no-daemon"]);
    token.env_remove("VAULT_MASTER_KEY");
    let token = vault.run_command(token, None);
    assert!(fake.is_access_token(token.ok().stdout.trim()));
}
