//! The checks of `vault doctor` that look outside the machine: whether this clock agrees with
//! each provider's, and whether the configured alert sinks can be reached. They only look: a HEAD
//! or GET whose answer's body is never read, and no alert is sent.

use crate::oauth::token::transport_reason;
use std::path::Path;

use super::{Finding, fine, problem};
use crate::account::Account;
use crate::clock::now_unix;
use crate::config::Config;

/// Access-token lifetimes are counted on this machine's clock, but a provider checks the times
/// inside a service account's signed assertion on its own, and refuses one from the future: a
/// minute off is already worth fixing.
const MAX_SKEW_SECONDS: i64 = 60;

/// One finding per provider (by origin): is this clock within `MAX_SKEW_SECONDS` of its `Date`?
pub(super) async fn provider_clocks(http: &reqwest::Client, accounts: &[Account]) -> Vec<Finding> {
    let mut origins: Vec<(String, &str)> = Vec::new();
    for account in accounts {
        let url = account.config.endpoints.token_url.as_str();
        let Ok(parsed) = url::Url::parse(url) else {
            continue;
        };
        let origin = parsed.origin().ascii_serialization();
        if !origins.iter().any(|(seen, _)| *seen == origin) {
            origins.push((origin, url));
        }
    }
    let mut findings = Vec::new();
    for (origin, url) in origins {
        findings.push(match skew(http, url).await {
            Ok(skew) if skew.abs() <= MAX_SKEW_SECONDS => fine(format!(
                "this clock agrees with {origin} (off by {skew} s at most)"
            )),
            Ok(skew) => problem(
                format!(
                    "this clock is {} s {} the clock of {origin}: service-account assertions and expiry times go wrong",
                    skew.abs(),
                    if skew > 0 { "behind" } else { "ahead of" }
                ),
                "synchronize it: timedatectl set-ntp true (or chronyc makestep)",
            ),
            Err(why) => problem(
                format!("{origin} cannot be reached ({why}): its accounts cannot refresh"),
                "check the network, a proxy or a firewall",
            ),
        });
    }
    findings
}

/// How many seconds the provider's clock (its `Date` header) is ahead of this one, measured
/// against the middle of the request.
async fn skew(http: &reqwest::Client, url: &str) -> Result<i64, String> {
    let before = now_unix();
    let answer = http
        .get(url)
        .send()
        .await
        .map_err(|err| transport_reason(&err))?;
    let after = now_unix();
    let date = answer
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|value| value.to_str().ok())
        .ok_or("its answer has no Date header")?;
    let theirs = chrono::DateTime::parse_from_rfc2822(date)
        .map_err(|_| "its Date header is not a date")?
        .timestamp();
    Ok(theirs - (before + after) / 2)
}

/// Each configured alert sink: the webhook answers, its signing secret is usable, the command's
/// program exists, and desktop alerts have notify-send when a session bus exists.
pub(super) async fn alert_sinks(http: &reqwest::Client, dir: &Path) -> Vec<Finding> {
    // A broken config.toml is its own finding.
    let Ok(config) = Config::load(dir) else {
        return Vec::new();
    };
    let alert = config.alert;
    let mut findings = Vec::new();
    if let Some(url) = &alert.webhook {
        let origin = url.origin().ascii_serialization();
        findings.push(match http.head(url.as_str()).send().await {
            // Any answer (405 to a HEAD included) shows a server there.
            Ok(_) => fine(format!("the alert webhook at {origin} answers")),
            Err(err) => problem(
                format!(
                    "the alert webhook at {origin} cannot be reached ({}): alerts sent there are lost",
                    transport_reason(&err)
                ),
                "fix [alert] webhook in config.toml, or the network",
            ),
        });
    }
    if let Some(path) = &alert.webhook_secret_file {
        findings.push(match crate::files::read_private_file(path) {
            Ok(_) => fine(format!("the webhook signing secret {} is private", path.display())),
            Err(why) => problem(
                format!("the webhook signing secret: {why}"),
                "fix the file, or [alert] webhook_secret_file in config.toml (vault serve refuses to start without it)",
            ),
        });
    }
    if let Some(program) = alert.command.as_deref().and_then(first_program) {
        findings.push(if runnable(program) {
            fine(format!(
                "the alert command's program {program} is installed"
            ))
        } else {
            problem(
                format!(
                    "the alert command's program {program} is not found: alerts through it fail"
                ),
                "install it, or fix [alert] command in config.toml",
            )
        });
    }
    if alert.desktop && crate::daemon::alert::session_bus_present() && !runnable("notify-send") {
        findings.push(problem(
            "desktop alerts are on and a session bus exists, but notify-send is not installed",
            "install it (libnotify-bin, libnotify), or set desktop = false in [alert]",
        ));
    }
    findings
}

/// The program a shell command line starts with, when it plainly names one (not a variable
/// assignment, a subshell or a quoted word).
fn first_program(command: &str) -> Option<&str> {
    let word = command.split_whitespace().next()?;
    let plain = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./+".contains(c));
    plain.then_some(word)
}

/// Whether `/bin/sh` finds `program` (in PATH, as a path, or as a builtin).
fn runnable(program: &str) -> bool {
    std::process::Command::new("/bin/sh")
        .args(["-c", "command -v -- \"$1\" >/dev/null", "sh", program])
        .stdin(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_of_a_plain_command_line_is_found() {
        assert_eq!(
            first_program("notify-send \"$VAULT_ACCOUNT\""),
            Some("notify-send")
        );
        assert_eq!(first_program("  /usr/bin/mail -s x"), Some("/usr/bin/mail"));
        assert_eq!(first_program("FOO=1 mail"), None);
        assert_eq!(first_program("'quoted' x"), None);
        assert_eq!(first_program(""), None);
        assert!(runnable("printf") && runnable("sh") && !runnable("no-such-program-tv"));
    }
}
