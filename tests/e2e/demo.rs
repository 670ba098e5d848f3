//! `vault demo` as a newcomer runs it: one process, no set-up, no network.

use crate::support::TestVault;
use crate::support::fake_oauth::CLIENT_SECRET;

#[test]
fn the_demo_shows_the_whole_lifecycle_and_leaves_nothing_behind() {
    let vault = TestVault::uninitialized(None);
    let run = vault.run(&["demo"]);
    run.ok();
    let out = format!("{}{}", run.stdout, run.stderr);
    for step in [
        "1. Created a throwaway vault",
        "2. Started a built-in OAuth 2.0 provider",
        "3. vault add-account demo-mail",
        "consent: the authorization URL was opened and approved automatically",
        "4. vault serve",
        "curl --unix-socket",
        "5. An app asks for a token",
        "6. Watching refresh ahead",
        "← new token (refreshed ahead, refresh token rotated)",
        "7. The user revokes",
        "8. Caught by validation",
        "state reauth_required",
        "gets 409",
        "vault login demo-mail",
        "Do this for Gmail next",
    ] {
        assert!(out.contains(step), "missing {step:?} in:\n{out}");
    }
    assert_eq!(
        run.stdout
            .matches("ALERT  demo-mail: reauth_required")
            .count(),
        1,
        "one alert:\n{out}"
    );
    assert!(
        !out.contains(CLIENT_SECRET) && !out.contains("rt-PLANTED"),
        "a long-lived secret was printed"
    );
    // The throwaway directory named in step 1 is gone.
    let dir = out
        .split_whitespace()
        .find(|word| word.contains("tokenvault-demo-"))
        .map(|path| std::path::PathBuf::from(path.trim_end_matches("/vault")))
        .unwrap();
    assert!(dir.to_string_lossy().contains("tokenvault-demo-"));
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[test]
fn ctrl_c_cleans_up() {
    use std::io::{BufRead, BufReader};
    let vault = TestVault::uninitialized(None);
    let mut command = vault.command(&["demo"]);
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    let mut dir = None;
    // The reader stays open until the demo has exited, so its output never meets a closed pipe.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(path) = line
            .split_whitespace()
            .find(|word| word.contains("tokenvault-demo-"))
        {
            dir.get_or_insert_with(|| std::path::PathBuf::from(path.trim_end_matches("/vault")));
        }
        if line.contains("6. Watching refresh ahead") {
            break;
        }
    }
    crate::support::daemon::signal(&child, rustix::process::Signal::INT);
    lines.for_each(drop);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let dir = dir.unwrap();
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
