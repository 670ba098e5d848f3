use clap::Args;

use super::Context;
use crate::account::Principal;
use crate::error::Error;
use crate::store::{AnyStore, NamedGrant};
use crate::users;

#[derive(Args)]
pub(super) struct GrantArgs {
    /// The account
    name: String,
    /// A user (name or uid; on a fleet, stored by name)
    #[arg(long, conflicts_with = "gid", required_unless_present = "gid")]
    uid: Option<String>,
    /// A group (name or gid; on a fleet, stored by name), matched against the caller's primary
    /// group
    #[arg(long)]
    gid: Option<String>,
    /// On a fleet: the one enrolled host this applies on (default: every host, each resolving
    /// the name with its own users and groups)
    #[arg(long)]
    host: Option<String>,
}

pub(super) fn run(context: &Context, args: GrantArgs, allowed: bool) -> Result<(), Error> {
    let (who, changed) = match context.open_any()? {
        AnyStore::Local(mut store) => {
            if args.host.is_some() {
                return Err(Error::Input(
                    "--host is for a fleet vault; this vault is this host's own".into(),
                ));
            }
            let principal = match (&args.uid, &args.gid) {
                (Some(user), _) => Principal::Uid(users::uid_of(user).map_err(Error::Input)?),
                (None, Some(group)) => Principal::Gid(users::gid_of(group).map_err(Error::Input)?),
                (None, None) => return Err(Error::Input("give --uid or --gid".into())),
            };
            let changed = store.set_grant(&args.name, principal, allowed)?;
            (format!("{} {}", principal.kind(), principal.id()), changed)
        }
        AnyStore::Fleet(mut store) => {
            let (kind, name) = match (&args.uid, &args.gid) {
                (Some(user), _) => ("uid", users::user_name(user).map_err(Error::Input)?),
                (None, Some(group)) => ("gid", users::group_name(group).map_err(Error::Input)?),
                (None, None) => return Err(Error::Input("give --uid or --gid".into())),
            };
            let grant = NamedGrant {
                kind,
                name: &name,
                host: args.host.as_deref(),
            };
            let changed = store.set_grant(&args.name, &grant, allowed)?;
            let hosts = match &args.host {
                Some(host) => format!("on host {host}"),
                None => "on every host of the fleet".to_owned(),
            };
            let who = if kind == "uid" { "user" } else { "group" };
            (format!("{who} {name:?} {hosts}"), changed)
        }
    };
    let message = match (allowed, changed) {
        (true, true) => format!(
            "{who} may now fetch access tokens of {} from the daemon.",
            args.name
        ),
        (true, false) => format!("{who} was already granted {}.", args.name),
        (false, true) => format!("{who} may no longer fetch access tokens of {}.", args.name),
        (false, false) => format!("{who} had no grant on {}.", args.name),
    };
    println!("{message}");
    Ok(())
}
