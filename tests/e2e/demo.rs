//! `vault demo` as a newcomer runs it: one process, no set-up, no network.

use crate::fake_oauth::CLIENT_SECRET;
use crate::support::TestVault;

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
