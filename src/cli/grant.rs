use clap::Args;

use super::Context;
use crate::account::Principal;
use crate::error::Error;
use crate::users;

#[derive(Args)]
pub(super) struct GrantArgs {
    /// The account
    name: String,
    /// A user (name or uid)
    #[arg(long, conflicts_with = "gid", required_unless_present = "gid")]
    uid: Option<String>,
    /// A group (name or gid), matched against the caller's primary group
    #[arg(long)]
    gid: Option<String>,
}

pub(super) fn run(context: &Context, args: GrantArgs, allowed: bool) -> Result<(), Error> {
    let principal = match (&args.uid, &args.gid) {
        (Some(user), _) => Principal::Uid(users::uid_of(user).map_err(Error::Input)?),
        (None, Some(group)) => Principal::Gid(users::gid_of(group).map_err(Error::Input)?),
        (None, None) => return Err(Error::Input("give --uid or --gid".into())),
    };
    let mut store = context.open()?;
    let changed = store.set_grant(&args.name, principal, allowed)?;
    let who = format!("{} {}", principal.kind(), principal.id());
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
