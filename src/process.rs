//! Process-wide hardening, done once at the start of `main`, before any thread or child exists.

use rustix::fs::Mode;
use rustix::process::{DumpableBehavior, Resource, Rlimit};

/// What `harden` changed, to give the program `vault exec` runs what the user's shell gave us.
struct Inherited {
    umask: Mode,
    core: Rlimit,
}

static INHERITED: std::sync::OnceLock<Inherited> = std::sync::OnceLock::new();

/// No core dumps and no same-uid `ptrace` or `/proc/PID/mem`: a vault process holds the data key
/// (and the daemon every live token). Files it creates are private (umask 077), whatever the
/// caller's umask: SQLite creates `vault.db`, its `-wal` and `-shm` with 0644 & ~umask.
pub fn harden() {
    let _ = rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable);
    let core = rustix::process::getrlimit(Resource::Core);
    let _ = rustix::process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: core.maximum,
        },
    );
    let umask = rustix::process::umask(Mode::from_raw_mode(0o077));
    let _ = INHERITED.set(Inherited { umask, core });
}

/// Undoes `harden` for a program this process is about to become (`vault exec`): the user's
/// umask and core limit are theirs, not the vault's. (Dumpability resets by itself at exec.)
pub fn restore_inherited() {
    if let Some(inherited) = INHERITED.get() {
        rustix::process::umask(inherited.umask);
        let _ = rustix::process::setrlimit(Resource::Core, inherited.core);
    }
}

/// The daemon serves many connections at once: its soft file-descriptor limit goes up to the
/// hard one (often 1,024 → 524,288), so the per-listener caps, not the kernel, bound it.
pub fn raise_open_file_limit() {
    let limit = rustix::process::getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let _ = rustix::process::setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

/// The variables a child the daemon starts on its own (the alert command, notify-send) gets from
/// the daemon's environment: what a shell script and a desktop notification need, nothing else.
/// The daemon may run with credentials of other tools in its environment; none reaches them.
const CHILD_ENV_ALLOWED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "DISPLAY",
    "WAYLAND_DISPLAY",
];

/// `command` with only the allow-listed part of this process's environment.
pub fn with_allowed_env(command: &mut tokio::process::Command) -> &mut tokio::process::Command {
    command.env_clear().envs(
        CHILD_ENV_ALLOWED
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|value| (*name, value))),
    )
}
