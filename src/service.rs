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
        .map(|dir| {
            format!(
                "Environment={}\n",
                quoted(&format!("VAULT_DIR={}", dir.display()))
            )
        })
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
        UMask=0077\n\
        # The daemon's memory holds the data key and every live token: no core dumps.\n\
        LimitCORE=0\n\
        ProtectSystem=full\n\
        PrivateTmp=yes\n\
        LockPersonality=yes\n\
        RestrictSUIDSGID=yes\n\
        # A vault whose master key comes from a passphrase (vault init --passphrase) reads it\n\
        # from this credential, kept in a 0600 file:\n\
        #LoadCredential=tokenvault-passphrase:%h/.config/tokenvault/passphrase\n\n\
        [Install]\n\
        Also={SOCKET_UNIT}\n",
        quoted(&exe.display().to_string())
    );
    [(SOCKET_UNIT, socket), (SERVICE_UNIT, service)]
}

/// A value as one systemd word: double-quoted, with `\\`, `"` and systemd's `%` specifiers
/// escaped, so a path with spaces or a `%` stays one literal argument.
fn quoted(value: &str) -> String {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_spaces_and_specifiers_stay_one_literal_word() {
        let [_, (_, service)] = unit_files(
            Path::new("/opt/my tools/vault"),
            Some(Path::new("/home/me/100% \"vault\"")),
        );
        assert!(
            service.contains("ExecStart=\"/opt/my tools/vault\" serve\n"),
            "{service}"
        );
        assert!(
            service.contains("Environment=\"VAULT_DIR=/home/me/100%% \\\"vault\\\"\"\n"),
            "{service}"
        );
        assert!(service.contains("LimitCORE=0\n"), "{service}");
    }
}
