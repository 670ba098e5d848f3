use std::io::Write;
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
#[cfg_attr(test, derive(Debug, PartialEq))]
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
    let mut store = context.open()?;
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
    let err = std::process::Command::new(program)
        .args(arguments)
        .env(&args.variable, obtained.access_token.expose())
        .exec();
    Err(Error::Input(format!("cannot run {program}: {err}")))
}

#[derive(Args)]
pub(super) struct GitCredentialArgs {
    /// The account whose access token git should use
    #[arg(long)]
    account: String,
    /// The user name git sends with the token
    #[arg(long, default_value = "oauth2")]
    username: String,
    /// get, store or erase (git passes it)
    operation: String,
}

/// git's credential-helper protocol: `get` answers with the account's access token as the
/// password; `store` and `erase` are no-ops, because the vault, not git, keeps credentials.
pub(super) fn git_credential(context: &Context, args: GitCredentialArgs) -> Result<(), Error> {
    if args.operation != "get" {
        return Ok(());
    }
    // git sends protocol/host/path lines; the account is chosen by configuration, not by them.
    let mut request = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut request);
    let obtained = obtain(context, &args.account, 60, false)?;
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
