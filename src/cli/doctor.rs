//! `vault doctor`: every check of `crate::doctor`, each problem with its fix.

use super::{Context, block_on};
use crate::error::Error;

pub(super) fn doctor(context: &Context) -> Result<(), Error> {
    let places = crate::doctor::Places {
        vault_dir: &context.dir,
        socket: &context.socket,
        unlock: context.unlock(),
        fleet: context.fleet().map_err(|err| err.to_string()),
    };
    let findings = block_on(crate::doctor::examine(&places))?;
    for finding in &findings {
        if finding.ok {
            println!("ok    {}", finding.what);
        } else {
            println!(
                "FIX   {}
      → {}",
                finding.what, finding.fix
            );
        }
    }
    match findings.iter().filter(|finding| !finding.ok).count() {
        0 => Ok(()),
        problems => Err(Error::Input(format!(
            "{problems} problem(s) found; each is listed above with its fix"
        ))),
    }
}
