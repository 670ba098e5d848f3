use std::io::Write;

use clap::Args;

use super::{Context, block_on, when};
use crate::client;
use crate::clock::now_unix;
use crate::error::Error;
use crate::oauth::token::http_client;
use crate::refresh;

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

pub(super) fn run(context: &Context, args: TokenArgs) -> Result<(), Error> {
    if !args.no_daemon {
        match client::request_token(&context.socket, &args.name, args.min_valid)? {
            Some((reply, raw)) => {
                let output = if args.json {
                    raw.expose().trim().to_owned()
                } else {
                    reply.access_token.expose().clone()
                };
                return print(&output);
            }
            None => eprintln!(
                "vault: no daemon at {}; reading the vault directly",
                context.socket.display()
            ),
        }
    }
    direct(context, &args)
}

fn direct(context: &Context, args: &TokenArgs) -> Result<(), Error> {
    let mut store = context.open()?;
    let http = http_client();
    let need = refresh::Need::Valid {
        min_valid: i64::from(args.min_valid),
    };
    let issued = block_on(refresh::access_token(&mut store, &http, &args.name, need))??;
    if let Some(problem) = &issued.upstream_problem {
        eprintln!(
            "vault: warning: {} was not refreshed ({problem}); serving the cached token, valid until {}",
            args.name,
            when(issued.token.expires_at)
        );
    }
    let token = issued.token;
    let output = if args.json {
        serde_json::json!({
            "access_token": token.access_token.expose(),
            "token_type": "Bearer",
            "expires_in": (token.expires_at - now_unix()).max(0),
            "expires_at": token.expires_at,
        })
        .to_string()
    } else {
        token.access_token.expose().clone()
    };
    print(&output)
}

fn print(output: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{output}")
        .and_then(|()| stdout.flush())
        .map_err(|err| Error::Input(format!("cannot write the token: {err}")))
}
