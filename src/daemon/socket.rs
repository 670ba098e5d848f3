//! The daemon's Unix socket: where it lives by default, and how it is created without trusting
//! anything another user could have planted in its place.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use super::ServerError;

/// `tokenvault/vault.sock` in the user's runtime directory: `$XDG_RUNTIME_DIR`, else the one
/// logind made (`/run/user/UID`, so cron jobs and `su` sessions find a socket-activated
/// daemon), else the user's state directory (`~/.local/state`). Never a shared directory such as
/// /tmp: another user could create the directory first and answer in the daemon's place.
pub fn default_socket_path() -> PathBuf {
    runtime_dir()
        .or_else(|| directories::BaseDirs::new().map(|dirs| state_dir(&dirs)))
        .unwrap_or_else(|| PathBuf::from(".tokenvault"))
        .join("tokenvault/vault.sock")
}

fn runtime_dir() -> Option<PathBuf> {
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        return Some(PathBuf::from(runtime));
    }
    let me = rustix::process::geteuid().as_raw();
    let logind = PathBuf::from(format!("/run/user/{me}"));
    crate::files::check_private_dir(&logind, me)
        .is_ok()
        .then_some(logind)
}

fn state_dir(dirs: &directories::BaseDirs) -> PathBuf {
    dirs.state_dir()
        .map(Path::to_owned)
        .unwrap_or_else(|| dirs.home_dir().join(".local/state"))
}

/// The listening socket systemd passed (LISTEN_FDS / LISTEN_PID), if any.
pub fn activated_listener(socket: &Path) -> Result<Option<UnixListener>, ServerError> {
    let mut passed = listenfd::ListenFd::from_env();
    let Some(listener) = passed.take_unix_listener(0).map_err(socket_error(socket))? else {
        return Ok(None);
    };
    listener
        .set_nonblocking(true)
        .map_err(socket_error(socket))?;
    UnixListener::from_std(listener)
        .map(Some)
        .map_err(socket_error(socket))
}

fn socket_error(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Socket {
        path: path.to_owned(),
        source,
    }
}

/// Prepares the socket's directory, then binds the socket (0600, or 0660 for a group),
/// refusing when a live daemon answers on it and replacing a stale socket file.
pub async fn bind(socket: &Path, group: Option<u32>) -> Result<UnixListener, ServerError> {
    let dir = socket
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    prepare_socket_dir(dir, group)?;
    if socket.symlink_metadata().is_ok() {
        if UnixStream::connect(socket).await.is_ok() {
            return Err(ServerError::AlreadyRunning(socket.to_owned()));
        }
        std::fs::remove_file(socket).map_err(socket_error(socket))?;
    }
    // Born 0700 under the process umask (077), in a directory only this user can write to.
    let listener = UnixListener::bind(socket).map_err(socket_error(socket))?;
    let mode = match group {
        Some(gid) => {
            rustix::fs::chown(socket, None, Some(rustix::process::Gid::from_raw(gid)))
                .map_err(|err| socket_error(socket)(err.into()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .map_err(socket_error(socket))?;
    Ok(listener)
}

/// The socket's directory must be the user's own and closed to others' writes. It is created
/// with one non-recursive mkdir (its parent made first when missing), and only a directory this
/// call created gets its mode or group set: an existing one, or a symlink planted at its place,
/// is checked through a descriptor opened without following links, and never changed.
fn prepare_socket_dir(dir: &Path, group: Option<u32>) -> Result<(), ServerError> {
    use rustix::fs::{Mode, OFlags};
    if let Some(parent) = dir
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty() && !parent.exists())
    {
        crate::files::create_private_dir(parent).map_err(socket_error(parent))?;
    }
    let created = match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(err) => return Err(socket_error(dir)(err.into())),
    };
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| {
        let problem = if err == rustix::io::Errno::LOOP || err == rustix::io::Errno::NOTDIR {
            crate::files::DirProblem::Symlink(dir.display().to_string())
        } else {
            crate::files::DirProblem::Io {
                path: dir.display().to_string(),
                source: err.into(),
            }
        };
        ServerError::UnsafeDirectory(problem)
    })?;
    let meta = std::fs::File::from(fd);
    let stat = meta.metadata().map_err(socket_error(dir))?;
    let owner = rustix::process::geteuid().as_raw();
    crate::files::check_dir_metadata(&stat, owner, &dir.display().to_string())
        .map_err(ServerError::UnsafeDirectory)?;
    match (group, created) {
        (Some(gid), true) => {
            rustix::fs::fchown(&meta, None, Some(rustix::process::Gid::from_raw(gid)))
                .and_then(|()| rustix::fs::fchmod(&meta, Mode::from_raw_mode(0o750)))
                .map_err(|err| socket_error(dir)(err.into()))?;
        }
        (Some(gid), false) if stat.gid() != gid || stat.mode() & 0o010 == 0 => {
            return Err(ServerError::GroupCannotReach(dir.to_owned()));
        }
        _ => {}
    }
    Ok(())
}
