//! libpq's own password sources, for a database address that names no password and a host with
//! no `[fleet] password_file`: `PGPASSWORD`, then the password file (`PGPASSFILE`, else
//! `~/.pgpass`), matched line by line as libpq matches it — so a host already set up for psql
//! needs nothing more. Unlike libpq, a password file that is another user's or readable by
//! others is refused with the fix, not skipped with a warning (a symlink to a private file of the
//! user's own, as dotfile managers make, is followed).

use std::path::PathBuf;

use super::StoreError;
use crate::secret::{Secret, SecretString};

/// The password libpq would use to reach `config`'s database, if any, and where it came from.
pub(super) fn password(
    config: &postgres::Config,
) -> Result<Option<(SecretString, String)>, StoreError> {
    if let Some(password) = std::env::var("PGPASSWORD")
        .ok()
        .filter(|set| !set.is_empty())
    {
        return Ok(Some((Secret::new(password), "PGPASSWORD".to_owned())));
    }
    let Some(path) = file_path() else {
        return Ok(None);
    };
    if !path.exists() {
        return Ok(None);
    }
    let text =
        crate::files::read_private_file_following(&path).map_err(StoreError::PasswordFile)?;
    let text = std::str::from_utf8(text.expose())
        .map_err(|_| StoreError::PasswordFile(format!("{} is not text", path.display())))?;
    let Some(user) = config.get_user() else {
        return Ok(None);
    };
    // libpq's default database is the user's name, its default port 5432, and a Unix socket
    // is "localhost" to the password file.
    let database = config.get_dbname().unwrap_or(user);
    let ports = config.get_ports();
    for (index, host) in config.get_hosts().iter().enumerate() {
        let host = match host {
            postgres::config::Host::Tcp(name) => name.as_str(),
            postgres::config::Host::Unix(_) => "localhost",
        };
        let port = ports
            .get(index)
            .or(ports.first())
            .copied()
            .unwrap_or(5432)
            .to_string();
        let wanted = [host, port.as_str(), database, user];
        if let Some(found) = text
            .lines()
            .find_map(|line| matching_password(line, &wanted))
        {
            return Ok(Some((found, path.display().to_string())));
        }
    }
    Ok(None)
}

fn file_path() -> Option<PathBuf> {
    match std::env::var_os("PGPASSFILE").filter(|set| !set.is_empty()) {
        Some(path) => Some(PathBuf::from(path)),
        None => directories::BaseDirs::new().map(|dirs| dirs.home_dir().join(".pgpass")),
    }
}

/// The password of a `hostname:port:database:username:password` line whose first four fields
/// match `wanted` (a field of `*` matches anything; `\:` and `\\` stand for `:` and `\`).
fn matching_password(line: &str, wanted: &[&str; 4]) -> Option<SecretString> {
    if line.starts_with('#') {
        return None;
    }
    let mut rest = line;
    for value in wanted {
        let (field, after) = next_field(rest)?;
        if field != "*" && unescape(field) != *value {
            return None;
        }
        rest = after;
    }
    Some(Secret::new(unescape(rest.trim_end_matches('\r'))))
}

/// The text up to the first `:` no backslash escapes, and what follows that `:`.
fn next_field(text: &str) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ':' => return Some((&text[..at], &text[at + 1..])),
            _ => {}
        }
    }
    None
}

fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            // A backslash at the very end stays, as in libpq.
            '\\' => out.push(chars.next().unwrap_or('\\')),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(line: &str, wanted: [&str; 4]) -> Option<String> {
        matching_password(line, &wanted).map(|password| password.expose().clone())
    }

    #[test]
    fn lines_match_as_libpq_matches_them() {
        let wanted = ["db.example.com", "5432", "tokenvault", "vault"];
        assert_eq!(
            found("db.example.com:5432:tokenvault:vault:s3cret", wanted),
            Some("s3cret".into())
        );
        assert_eq!(found("*:*:*:*:any", wanted), Some("any".into()));
        assert_eq!(found("*:5433:*:*:other port", wanted), None);
        assert_eq!(
            found("#db.example.com:5432:tokenvault:vault:x", wanted),
            None
        );
        assert_eq!(found("db.example.com:5432:tokenvault", wanted), None);
        // Escaped colons and backslashes, in a field and in the password (the rest of the line).
        assert_eq!(
            found(r"*:*:*:vault:a\:b\\c:d", wanted),
            Some(r"a:b\c:d".into())
        );
        assert_eq!(
            found(r"*:*:*:va\:ult:x", ["h", "1", "d", "va:ult"]),
            Some("x".into())
        );
        assert_eq!(found("*:*:*:vault:crlf\r", wanted), Some("crlf".into()));
        assert_eq!(found("*:*:*:vault:end\\", wanted), Some("end\\".into()));
    }
}
