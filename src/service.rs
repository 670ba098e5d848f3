//! systemd user units for `vault serve`, with socket activation: the socket exists from login on,
//! and the daemon starts at the first request.

use std::path::Path;

pub const SOCKET_UNIT: &str = "tokenvault.socket";
pub const SERVICE_UNIT: &str = "tokenvault.service";

/// The two unit files, for the `vault` at `exe` and, when given, a vault directory other than the
/// default.
pub fn unit_files(exe: &Path, vault_dir: Option<&Path>) -> [(&'static str, String); 2] {
    let socket = "[Unit]\n\
        Description=tokenvault socket (short-lived OAuth access tokens for local apps)\n\n\
        [Socket]\n\
        ListenStream=%t/tokenvault/vault.sock\n\
        SocketMode=0600\n\
        DirectoryMode=0700\n\n\
        [Install]\n\
        WantedBy=sockets.target\n"
        .to_owned();
    let environment = vault_dir
        .map(|dir| format!("Environment=VAULT_DIR={}\n", dir.display()))
        .unwrap_or_default();
    let service = format!(
        "[Unit]\n\
        Description=tokenvault daemon: refreshes OAuth tokens and serves access tokens\n\
        Requires={SOCKET_UNIT}\n\
        After={SOCKET_UNIT}\n\n\
        [Service]\n\
        ExecStart={} serve\n\
        {environment}\
        Restart=on-failure\n\
        NoNewPrivileges=yes\n\
        UMask=0077\n\n\
        [Install]\n\
        Also={SOCKET_UNIT}\n",
        exe.display()
    );
    [(SOCKET_UNIT, socket), (SERVICE_UNIT, service)]
}
