//! The daemon's settings: `config.toml` in the vault directory. Every key is optional; unknown
//! keys and bad values are refused with the line and the reason.
//!
//! ```toml
//! [refresh]
//! before_seconds = 300          # refresh this long before expiry (default: max(60 s, 10 %) ≤ half)
//! max_backoff_seconds = 900     # cap of the exponential backoff after transient failures
//!
//! [validation]
//! schedule = "0 0 */6 * * *"    # cron (sec min hour day month weekday): prove every credential
//!
//! [alert]
//! command = "notify-me"         # run by /bin/sh with VAULT_ACCOUNT, VAULT_EVENT, VAULT_REASON
//! webhook = "https://ntfy.sh/my-topic"
//! webhook_secret_file = "/home/me/.config/tokenvault/webhook.secret"  # sign webhooks (0600 file)
//! desktop = true                # notify-send when a session bus exists
//! degraded_after_seconds = 900  # alert when transient failures last this long
//! expiring_before_seconds = 86400  # alert this long before a refresh token's own deadline
//! client_secret_expiring_before_seconds = 1209600  # … and before a client secret's recorded expiry
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use thiserror::Error;

pub const CONFIG_FILE: &str = "config.toml";
const DEFAULT_SCHEDULE: &str = "0 0 */6 * * *";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing {path} (owner uid {owner}, mode {mode:o}): its alert command runs as you, so it must be your own file that no one else can write. Run: chmod 600 {path}"
    )]
    Unsafe {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub refresh: RefreshConfig,
    #[serde(default)]
    pub validation: ValidationConfig,
    #[serde(default)]
    pub alert: AlertConfig,
    /// Host (as git names it: `github.com`, `host:port`) → the account whose token git gets.
    #[serde(default)]
    pub git: std::collections::BTreeMap<String, String>,
    /// Fleet mode: the vault lives on a PostgreSQL database several hosts share.
    #[serde(default)]
    pub fleet: FleetConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// `postgres://USER@HOST:PORT/DB` (or `host=… user=…`), without a password.
    pub database: Option<String>,
    /// A 0600 file holding the database password.
    pub password_file: Option<PathBuf>,
    /// This host's name in the fleet; the system's host name by default.
    pub host: Option<String>,
    /// The certificate authority (PEM) the database's certificate must chain to; else
    /// `sslrootcert=` in the address, else the public web roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    pub before_seconds: Option<u64>,
    pub max_backoff_seconds: u64,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            before_seconds: None,
            max_backoff_seconds: 900,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    #[serde(deserialize_with = "cron_schedule")]
    pub schedule: cron::Schedule,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            schedule: cron::Schedule::from_str(DEFAULT_SCHEDULE)
                .expect("the default schedule parses"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    pub command: Option<String>,
    #[serde(deserialize_with = "webhook_url")]
    pub webhook: Option<url::Url>,
    /// Standard Webhooks signing secret (`whsec_…`), in a file only the user can read.
    pub webhook_secret_file: Option<PathBuf>,
    pub desktop: bool,
    pub degraded_after_seconds: u64,
    /// Alert this long before a refresh token's announced deadline (`refresh_token_expires_in`).
    pub expiring_before_seconds: u64,
    /// Alert this long before a client secret's recorded expiry (`set-client-secret --expires`):
    /// making a new one may need an administrator, so the default is two weeks.
    pub client_secret_expiring_before_seconds: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            command: None,
            webhook: None,
            webhook_secret_file: None,
            desktop: true,
            degraded_after_seconds: 900,
            expiring_before_seconds: 86_400,
            client_secret_expiring_before_seconds: 14 * 86_400,
        }
    }
}

/// A cron expression with seconds (sec min hour day month weekday [year]).
pub fn parse_schedule(text: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(text).map_err(|err| {
        format!("{text:?} is not a cron expression ({err}); write six fields: sec min hour day month weekday, e.g. \"0 0 */6 * * *\"")
    })
}

fn cron_schedule<'de, D: serde::Deserializer<'de>>(d: D) -> Result<cron::Schedule, D::Error> {
    let text = String::deserialize(d)?;
    parse_schedule(&text).map_err(serde::de::Error::custom)
}

fn webhook_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<url::Url>, D::Error> {
    let text = String::deserialize(d)?;
    let url = url::Url::parse(&text)
        .map_err(|err| serde::de::Error::custom(format!("{text:?} is not a URL ({err})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(serde::de::Error::custom(format!(
            "{text:?} must be an http or https URL"
        )));
    }
    Ok(Some(url))
}

impl Config {
    /// Reads `config.toml` from the vault directory; no file means the defaults. Its alert
    /// command runs as the user, so the file must be the user's own, writable by no one else, and
    /// not a symlink.
    pub fn load(vault_dir: &Path) -> Result<Config, ConfigError> {
        use std::os::unix::fs::MetadataExt;
        let path = vault_dir.join(CONFIG_FILE);
        let (meta, text) = match crate::files::read_nofollow(&path) {
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me || meta.mode() & 0o022 != 0 {
            return Err(ConfigError::Unsafe {
                path,
                owner: meta.uid(),
                mode: meta.mode() & 0o7777,
            });
        }
        Self::parse(&text).map_err(|message| ConfigError::Invalid { path, message })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|err| err.to_string().trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_values() {
        let config = Config::parse("").unwrap();
        assert!(config.alert.desktop);
        assert_eq!(config.refresh.max_backoff_seconds, 900);
        let config = Config::parse(
            "[alert]\ncommand = \"true\"\nwebhook = \"https://ntfy.sh/x\"\n[validation]\nschedule = \"*/5 * * * * *\"\n",
        )
        .unwrap();
        assert_eq!(config.alert.command.as_deref(), Some("true"));
    }

    #[test]
    fn bad_values_name_the_line_and_reason() {
        let err = Config::parse("[validation]\nschedule = \"every day\"\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("six fields"),
            "{err}"
        );
        let err = Config::parse("[alert]\nwebhok = \"https://x\"\n").unwrap_err();
        assert!(
            err.contains("unknown field") && err.contains("line 2"),
            "{err}"
        );
        let err = Config::parse("[alert]\nwebhook = \"ftp://x\"\n").unwrap_err();
        assert!(err.contains("http or https"), "{err}");
        let err = Config::parse("[refresh]\nmax_backoff_seconds = -1\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Any config.toml is read or refused with a message, never a panic.
        #[test]
        fn any_config_file_parses_or_is_refused(
            text in "(\\[(refresh|validation|alert)\\]\n|[a-z_]{1,24} = (\"[^\"]{0,30}\"|-?[0-9]{1,25}|true)\n|.{0,30}\n){0,8}",
        ) {
            if let Err(message) = Config::parse(&text) {
                proptest::prop_assert!(!message.is_empty());
            }
        }
    }
}
