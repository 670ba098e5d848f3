//! Passphrases, typed on the terminal or read from a private file: they seal export archives and,
//! on machines without a keyring, derive the vault's master key.

use std::io::IsTerminal;
use std::path::Path;

use thiserror::Error;

use crate::secret::SecretString;

/// Shorter passphrases are refused when one is chosen (not when one is given to open something).
const MIN_CHARS: usize = 12;

#[derive(Debug, Error)]
pub enum PassphraseError {
    #[error("passphrase file refused: {0}")]
    File(String),
    #[error("cannot read the passphrase from the terminal: {0}")]
    Prompt(std::io::Error),
    #[error("the passphrases differ; nothing was changed")]
    Differ,
    #[error("no terminal to type the {what} on: give it in a file (mode 0600) with {how}")]
    NoTerminal {
        what: &'static str,
        how: &'static str,
    },
    #[error("the passphrase is shorter than {MIN_CHARS} characters; choose a longer one")]
    TooShort,
    #[error("the passphrase file {0} is empty")]
    Empty(String),
}

/// What to ask for and how the user could give it instead.
pub struct Ask<'a> {
    /// A private file holding the passphrase (a trailing newline is dropped).
    pub file: Option<&'a Path>,
    /// What the passphrase is for, as the prompt and the errors name it.
    pub what: &'static str,
    /// The option or variable that names a file, for the error without a terminal.
    pub how: &'static str,
    /// A passphrase being chosen: typed twice, and at least `MIN_CHARS` long.
    pub new: bool,
}

/// The passphrase from `ask.file`, else typed on the terminal.
pub fn read(ask: &Ask<'_>) -> Result<SecretString, PassphraseError> {
    let passphrase = match ask.file {
        Some(path) => from_file(path)?,
        None => typed(ask)?,
    };
    if ask.new && passphrase.expose().chars().count() < MIN_CHARS {
        return Err(PassphraseError::TooShort);
    }
    Ok(passphrase)
}

fn from_file(path: &Path) -> Result<SecretString, PassphraseError> {
    let bytes = crate::files::read_private_file(path).map_err(PassphraseError::File)?;
    let passphrase = bytes
        .into_string()
        .ok_or_else(|| PassphraseError::File(format!("{} is not UTF-8 text", path.display())))?;
    if passphrase.is_empty() {
        return Err(PassphraseError::Empty(path.display().to_string()));
    }
    Ok(passphrase)
}

fn typed(ask: &Ask<'_>) -> Result<SecretString, PassphraseError> {
    if !std::io::stdin().is_terminal() {
        return Err(PassphraseError::NoTerminal {
            what: ask.what,
            how: ask.how,
        });
    }
    let prompt = |text: &str| {
        rpassword::prompt_password(text)
            .map(SecretString::from)
            .map_err(PassphraseError::Prompt)
    };
    let first = prompt(&format!("{}: ", capitalized(ask.what)))?;
    if ask.new && prompt("Again: ")?.expose() != first.expose() {
        return Err(PassphraseError::Differ);
    }
    Ok(first)
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn ask(file: &Path, new: bool) -> Result<SecretString, PassphraseError> {
        read(&Ask {
            file: Some(file),
            what: "passphrase",
            how: "--passphrase-file",
            new,
        })
    }

    #[test]
    fn a_file_is_read_trimmed_and_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "correct horse battery\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ask(&path, true).unwrap().expose(), "correct horse battery");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ask(&path, false).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_chosen_passphrase_must_be_long_and_a_given_one_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(ask(&path, true), Err(PassphraseError::TooShort)));
        assert_eq!(ask(&path, false).unwrap().expose(), "short");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(ask(&path, false), Err(PassphraseError::Empty(_))));
    }
}
