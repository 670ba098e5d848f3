use clap::Args;

use super::Context;
use crate::error::Error;
use crate::server::{self, ServeOptions};

#[derive(Args)]
pub(super) struct ServeArgs {
    /// Let this group connect: socket 0660 and its directory 0750 (grants still decide per account)
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Also answer as a Compute Engine metadata server (for Google's client libraries) on this
    /// loopback address, e.g. 127.0.0.1:8181
    #[arg(long, value_name = "ADDR", requires = "metadata_account")]
    metadata_addr: Option<std::net::SocketAddr>,
    /// The account the metadata endpoint serves
    #[arg(long, value_name = "NAME", requires = "metadata_addr")]
    metadata_account: Option<String>,
    /// Also serve Prometheus metrics (GET /metrics) on this loopback address, e.g. 127.0.0.1:9901.
    /// Any local user can read them there: account names, states and counts, no secret
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

pub(super) fn run(context: &Context, args: ServeArgs) -> Result<(), Error> {
    let store = context.open()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Internal(format!("cannot start the async runtime: {err}")))?;
    let options = ServeOptions {
        socket: context.socket.clone(),
        socket_group: args.socket_group,
        metadata: args.metadata_addr.zip(args.metadata_account),
        metrics: args.metrics_addr,
    };
    let ready = |socket: &std::path::Path, accounts: usize| {
        eprintln!(
            "vault: serving {accounts} account(s) on {}\n  try: curl --unix-socket {} http://localhost/v1/accounts",
            socket.display(),
            socket.display()
        );
    };
    runtime
        .block_on(server::serve(
            store,
            options,
            ready,
            server::shutdown_signal(),
        ))
        .map_err(|err| match err {
            server::ServerError::Vault(err) => *err,
            other => Error::Input(other.to_string()),
        })?;
    eprintln!("vault: stopped");
    Ok(())
}
