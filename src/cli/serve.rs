use clap::Args;

use super::Context;
use crate::daemon::{self, ServeOptions};
use crate::error::Error;
use crate::log::Level;

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
    /// Log lines as text for people, or one JSON object per line for log collectors
    #[arg(long, value_enum, default_value = "text")]
    log_format: crate::log::Format,
    /// Also serve Prometheus metrics (GET /metrics) on this loopback address, e.g. 127.0.0.1:9901.
    /// Any local user can read them there: account names, states and counts, no secret
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

pub(super) fn run(context: &Context, args: ServeArgs) -> Result<(), Error> {
    crate::log::set_format(args.log_format);
    let store = context.open_any()?;
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
        let socket = socket.display().to_string();
        crate::log::emit(
            Level::Info,
            "serving",
            &[("accounts", &accounts.to_string()), ("socket", &socket)],
        );
        if args.log_format == crate::log::Format::Text {
            eprintln!("  try: curl --unix-socket {socket} http://localhost/v1/accounts");
        }
    };
    runtime
        .block_on(daemon::serve(
            store,
            options,
            ready,
            daemon::shutdown_signal(),
        ))
        .map_err(|err| match err {
            daemon::ServerError::Vault(err) => *err,
            other => Error::Input(other.to_string()),
        })?;
    crate::log::emit(Level::Info, "stopped", &[]);
    Ok(())
}
