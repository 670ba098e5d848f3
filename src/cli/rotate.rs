//! `vault rotate`: a new key for an account through its provider's API (a Google
//! service-account key, a Microsoft client secret), proven, stored, and the old one deleted.

use clap::Args;

use super::{Context, block_on};
use crate::error::Error;
use crate::oauth::token::http_client;
use crate::rotation::{self, Report};

#[derive(Args)]
pub(super) struct RotateArgs {
    name: String,
}

pub(super) fn run(context: &Context, args: RotateArgs) -> Result<(), Error> {
    let store = context.open_any()?.shared();
    let report = block_on(rotation::rotate(
        &store,
        &http_client(),
        &args.name,
        rotation::When::Now,
    ))??;
    print!("{}", describe(&args.name, &report));
    Ok(())
}

fn describe(name: &str, report: &Report) -> String {
    let mut text = String::new();
    if !report.strays.is_empty() {
        text += &format!(
            "Deleted at the provider the key(s) {} that an interrupted rotation of {name} had created and never used.\n",
            report.strays.join(", ")
        );
    }
    match (&report.new_key, &report.retired) {
        (Some(new), Some(old)) => {
            text += &format!(
                "Rotated the key of {name}: {new} is in use (the provider issued a token with it); the old key {old} was deleted at the provider.\n"
            );
        }
        (Some(new), None) => {
            text += &format!(
                "Rotated the key of {name}: {new} is in use (the provider issued a token with it).\n"
            );
        }
        (None, Some(old)) => {
            text += &format!(
                "Finished the rotation of {name} that was interrupted: the old key {old} was deleted at the provider.\n"
            );
        }
        (None, None) => {}
    }
    if report.old_left {
        text += "The secret it replaces was set by hand and several secrets at the provider start alike, so it was left there: delete it in the app registration once nothing else uses it.\n";
    }
    text
}
