use std::io::{Read, Write};
use std::os::unix::process::CommandExt;

use clap::Args;

use super::{Context, block_on, when};
use crate::client;
use crate::clock::now_unix;
use crate::error::Error;
use crate::oauth::token::http_client;
use crate::refresh::{self, Need};
use crate::secret::SecretString;

#[derive(Args)]
pub(super) struct TokenArgs {
    name: String,
    /// The token must stay valid at least this many seconds, else it is refreshed first
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    min_valid: u32,
    /// Print {"access_token","token_type","expires_in","expires_at",…} instead of the bare token
    #[arg(long)]
    json: bool,
    /// Do not ask the daemon; read the vault and refresh in this process
    #[arg(long)]
    no_daemon: bool,
}

#[cfg(test)]
impl TokenArgs {
    /// The call the front would make for these arguments (`None` for `--no-daemon`, which only
    /// the full program serves).
    pub(super) fn as_front_call(
        &self,
        socket: Option<std::path::PathBuf>,
    ) -> Option<crate::front::TokenCall> {
        (!self.no_daemon).then(|| crate::front::TokenCall {
            socket,
            name: self.name.clone(),
            min_valid: self.min_valid,
            json: self.json,
        })
    }
}

#[derive(Args)]
pub(super) struct ExecArgs {
    name: String,
    /// The environment variable that carries the token
    #[arg(long = "env", default_value = "ACCESS_TOKEN", value_name = "VAR")]
    variable: String,
    /// The token must stay valid at least this many seconds
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    min_valid: u32,
    /// Do not ask the daemon; read the vault and refresh in this process
    #[arg(long)]
    no_daemon: bool,
    /// The command and its arguments (after --)
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// A token from the daemon when one is running, else read from the vault in this process.
struct Obtained {
    access_token: SecretString,
    expires_at: i64,
    /// The daemon's whole answer, for --json.
    daemon_answer: Option<SecretString>,
}

fn obtain(
    context: &Context,
    name: &str,
    min_valid: u32,
    no_daemon: bool,
) -> Result<Obtained, Error> {
    if !no_daemon {
        match client::request_token(&context.socket, name, min_valid)? {
            Some((reply, raw)) => {
                return Ok(Obtained {
                    access_token: reply.access_token,
                    expires_at: reply.expires_at,
                    daemon_answer: Some(raw),
                });
            }
            None => eprintln!(
                "vault: no daemon at {}; reading the vault directly",
                context.socket.display()
            ),
        }
    }
    let mut store = context.open_any()?;
    let need = Need::Valid {
        min_valid: i64::from(min_valid),
    };
    let issued = block_on(refresh::access_token(
        &mut store,
        &http_client(),
        name,
        need,
    ))??;
    if let Some(problem) = &issued.upstream_problem {
        eprintln!(
            "vault: warning: {name} was not refreshed ({problem}); serving the cached token, valid until {}",
            when(issued.token.expires_at)
        );
    }
    Ok(Obtained {
        access_token: issued.token.access_token,
        expires_at: issued.token.expires_at,
        daemon_answer: None,
    })
}

pub(super) fn run(context: &Context, args: TokenArgs) -> Result<(), Error> {
    let obtained = obtain(context, &args.name, args.min_valid, args.no_daemon)?;
    let output = match (&obtained.daemon_answer, args.json) {
        (_, false) => obtained.access_token.expose().clone(),
        (Some(answer), true) => answer.expose().trim().to_owned(),
        (None, true) => serde_json::json!({
            "access_token": obtained.access_token.expose(),
            "token_type": "Bearer",
            "expires_in": (obtained.expires_at - now_unix()).max(0),
            "expires_at": obtained.expires_at,
        })
        .to_string(),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{output}")
        .and_then(|()| stdout.flush())
        .map_err(|err| Error::Input(format!("cannot write the token: {err}")))
}

/// Replaces this process with COMMAND, the token in its environment; its exit code is the
/// command's own.
pub(super) fn exec(context: &Context, args: ExecArgs) -> Result<(), Error> {
    let obtained = obtain(context, &args.name, args.min_valid, args.no_daemon)?;
    let (program, arguments) = args
        .command
        .split_first()
        .ok_or_else(|| Error::Input("give the command after --".into()))?;
    crate::process::restore_inherited();
    let err = std::process::Command::new(program)
        .args(arguments)
        .env(&args.variable, obtained.access_token.expose())
        .exec();
    Err(Error::Input(format!("cannot run {program}: {err}")))
}

#[derive(Args)]
pub(super) struct GitCredentialArgs {
    /// The account whose access token git should use [default: the one config.toml's [git]
    /// table names for the request's host; none for other hosts]
    #[arg(long)]
    account: Option<String>,
    /// The user name git sends with the token
    #[arg(long, default_value = "oauth2")]
    username: String,
    /// Answer only for this host (as git names it, e.g. github.com); without it, any https host
    #[arg(long)]
    host: Option<String>,
    /// get, store or erase (git passes it)
    operation: String,
}

/// git's credential-helper protocol: `get` answers with the account's access token as the
/// password; `store` and `erase` are no-ops, because the vault, not git, keeps credentials.
/// The token goes only over https, and only to the configured host when one is: a helper set
/// globally would otherwise hand it to any remote a repository names (`http://evil.example`).
/// For anything else the helper answers nothing, and git goes on to its next helper or prompt.
pub(super) fn git_credential(context: &Context, args: GitCredentialArgs) -> Result<(), Error> {
    if args.operation != "get" {
        return Ok(());
    }
    let mut request = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut request)
        .map_err(|err| Error::Input(format!("cannot read git's request: {err}")))?;
    if !git_request_allowed(&request, args.host.as_deref()) {
        return Ok(());
    }
    let account = match args.account {
        Some(account) => account,
        None => {
            let config = crate::config::Config::load(&context.dir)
                .map_err(|err| Error::Input(err.to_string()))?;
            match config
                .git
                .get(git_field(&request, "host").unwrap_or_default())
            {
                Some(account) => account.clone(),
                // Not ours: git asks its next helper, or the user.
                None => return Ok(()),
            }
        }
    };
    let obtained = obtain(context, &account, 60, false)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "username={}\npassword={}",
        args.username,
        obtained.access_token.expose()
    )
    .and_then(|()| stdout.flush())
    .map_err(|err| Error::Input(format!("cannot answer git: {err}")))
}

/// One `key=value` line of git's credential request.
fn git_field<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    request
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether git's request (`key=value` lines) is for https (or plain http on loopback, as for
/// endpoint URLs) and, when `host` is set, for that host.
fn git_request_allowed(request: &str, host: Option<&str>) -> bool {
    let asked = git_field(request, "host").unwrap_or_default();
    let scheme_ok = match git_field(request, "protocol") {
        Some("https") => true,
        Some("http") => url::Url::parse(&format!("http://{asked}/"))
            .is_ok_and(|url| matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))),
        _ => false,
    };
    scheme_ok && host.is_none_or(|host| asked.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::git_request_allowed;

    #[test]
    fn git_gets_a_token_only_over_https_or_loopback_and_for_the_configured_host() {
        let https = "protocol=https\nhost=github.com\npath=me/repo.git\n";
        assert!(git_request_allowed(https, None));
        assert!(git_request_allowed(https, Some("github.com")));
        assert!(!git_request_allowed(https, Some("gitlab.com")));
        assert!(!git_request_allowed(
            "protocol=http\nhost=evil.example\n",
            None
        ));
        assert!(git_request_allowed(
            "protocol=http\nhost=127.0.0.1:8080\n",
            None
        ));
        assert!(!git_request_allowed(
            "protocol=http\nhost=127.0.0.1.evil.example\n",
            None
        ));
        assert!(!git_request_allowed("host=github.com\n", None));
        assert!(!git_request_allowed("", None));
    }
}
