//! File-system checks and helpers shared by the key, store, config and daemon layers: the
//! directories the vault trusts must be the user's own, and nothing in them is followed through
//! a symlink.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use thiserror::Error;

/// Creates `dir` (and its parents) readable only by the owner.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Why a directory cannot be trusted with the vault's files or its socket.
#[derive(Debug, Error)]
pub enum DirProblem {
    #[error("it does not exist")]
    Missing,
    #[error("{0} is a symbolic link")]
    Symlink(String),
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("{path} belongs to uid {owner}, not to you (uid {me})")]
    NotOwned { path: String, owner: u32, me: u32 },
    #[error("{path} can be written by group or others (mode {mode:o})")]
    Writable { path: String, mode: u32 },
    #[error("cannot inspect {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// `dir` itself (not a symlink's target) is a directory owned by `owner` that no one else may
/// write to: only then can nothing in it be replaced by another user.
pub fn check_private_dir(dir: &Path, owner: u32) -> Result<(), DirProblem> {
    let shown = || dir.display().to_string();
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(DirProblem::Missing),
        Err(source) => {
            return Err(DirProblem::Io {
                path: shown(),
                source,
            });
        }
    };
    check_dir_metadata(&meta, owner, &shown())
}

/// The checks of [`check_private_dir`] on metadata already read (`lstat` or `fstat`).
pub fn check_dir_metadata(
    meta: &std::fs::Metadata,
    owner: u32,
    shown: &str,
) -> Result<(), DirProblem> {
    if meta.file_type().is_symlink() {
        return Err(DirProblem::Symlink(shown.to_owned()));
    }
    if !meta.is_dir() {
        return Err(DirProblem::NotADirectory(shown.to_owned()));
    }
    if meta.uid() != owner {
        return Err(DirProblem::NotOwned {
            path: shown.to_owned(),
            owner: meta.uid(),
            me: owner,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DirProblem::Writable {
            path: shown.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Opens `path` for appending (creating it 0600), refusing a symlink at its place.
pub fn open_append_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Reads `path` whole, refusing a symlink at its place.
pub fn read_nofollow(path: &Path) -> std::io::Result<(std::fs::Metadata, String)> {
    read_whole(path, rustix::fs::OFlags::NOFOLLOW)
}

fn read_whole(
    path: &Path,
    flags: rustix::fs::OFlags,
) -> std::io::Result<(std::fs::Metadata, String)> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text)?;
    Ok((meta, text))
}

/// A secret file's bytes: refused when it is a symlink, another user's, or readable by group or
/// others (the message says which, and the fix).
pub fn read_private_file(path: &Path) -> Result<crate::secret::SecretBytes, String> {
    private_contents(path, read_nofollow(path))
}

/// The same for a file in the user's own dotfiles that a dotfile manager may have made a
/// symlink: it is followed, and the file it leads to must be the user's and private.
pub fn read_private_file_following(path: &Path) -> Result<crate::secret::SecretBytes, String> {
    private_contents(path, read_whole(path, rustix::fs::OFlags::empty()))
}

fn private_contents(
    path: &Path,
    read: std::io::Result<(std::fs::Metadata, String)>,
) -> Result<crate::secret::SecretBytes, String> {
    let shown = path.display();
    let (meta, text) = read.map_err(|err| format!("cannot read {shown}: {err}"))?;
    let text = crate::secret::SecretString::from(text);
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(format!(
            "{shown} belongs to another user; use a file of your own"
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{shown} can be read by group or others (mode {:o}); run: chmod 600 {shown}",
            meta.mode() & 0o777
        ));
    }
    Ok(crate::secret::SecretBytes::new(
        text.expose().trim().as_bytes().to_vec(),
    ))
}
