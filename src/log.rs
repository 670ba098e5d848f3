//! The daemon's log lines on stderr: text for people, one JSON object per line for machines
//! (`vault serve --log-format json`), and under systemd the journal's priority prefix, so
//! `journalctl -p warning` finds the alerts. Never a secret: callers pass names, events and
//! reasons only.

use std::io::Write;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Warning,
    Info,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Info => "info",
        }
    }

    /// sd-daemon(3) priority prefixes.
    fn journal_prefix(self) -> &'static str {
        match self {
            Level::Warning => "<4>",
            Level::Info => "<6>",
        }
    }
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Chooses the format once, at start; text when never chosen.
pub fn set_format(format: Format) {
    let _ = FORMAT.set(format);
}

/// One log line: `message`, then `fields` (name, value).
pub fn emit(level: Level, message: &str, fields: &[(&str, &str)]) {
    let line = match FORMAT.get().copied().unwrap_or(Format::Text) {
        Format::Text => text_line(message, fields),
        Format::Json => json_line(level, message, fields),
    };
    // systemd connects stderr to the journal and says so in JOURNAL_STREAM.
    let prefix = if std::env::var_os("JOURNAL_STREAM").is_some() {
        level.journal_prefix()
    } else {
        ""
    };
    let _ = writeln!(std::io::stderr().lock(), "{prefix}{line}");
}

fn text_line(message: &str, fields: &[(&str, &str)]) -> String {
    let mut line = format!("vault: {message}");
    for (name, value) in fields {
        line.push_str(&format!(" {name}={value}"));
    }
    line
}

fn json_line(level: Level, message: &str, fields: &[(&str, &str)]) -> String {
    let mut object = serde_json::Map::new();
    object.insert(
        "time".into(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    object.insert("level".into(), level.name().into());
    object.insert("message".into(), message.into());
    for (name, value) in fields {
        object.insert((*name).into(), (*value).into());
    }
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_for_people_and_for_machines() {
        let fields = [("account", "mail"), ("reason", "a \"quoted\"\nreason")];
        assert_eq!(
            text_line("alert", &fields[..1]),
            "vault: alert account=mail"
        );
        let json: serde_json::Value =
            serde_json::from_str(&json_line(Level::Warning, "alert", &fields)).unwrap();
        assert_eq!(json["level"], "warning");
        assert_eq!(json["account"], "mail");
        assert_eq!(json["reason"], "a \"quoted\"\nreason");
    }
}
