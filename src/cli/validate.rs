use clap::Args;

use super::{Context, block_on, when};
use crate::error::Error;
use crate::oauth::token::http_client;
use crate::refresh;

#[derive(Args)]
pub(super) struct ValidateArgs {
    /// One account (default: all)
    name: Option<String>,
}

#[derive(Args)]
pub(super) struct ScheduleArgs {
    name: String,
    /// Validation schedule, cron with seconds: sec min hour day month weekday, e.g. "0 0 */6 * * *";
    /// "default" returns to the global schedule from config.toml
    #[arg(required_unless_present = "refresh_before")]
    cron: Option<String>,
    /// Refresh this many seconds before expiry (capped at half the token's lifetime); "default"
    /// returns to the global setting
    #[arg(long, value_name = "SECONDS|default")]
    refresh_before: Option<String>,
}

/// Proves accounts' credentials now with a live refresh, and prints each result.
pub(super) fn validate(context: &Context, args: ValidateArgs) -> Result<(), Error> {
    let mut store = context.open()?;
    let names = match args.name {
        Some(name) => vec![store.account(&name)?.name],
        None => store
            .accounts()?
            .into_iter()
            .map(|account| account.name)
            .collect(),
    };
    let http = http_client();
    let mut first_failure = None;
    for name in names {
        let proof = block_on(refresh::prove(&mut store, &http, &name))?;
        let with_previous = match &proof {
            Ok(settled) if settled.fell_back => {
                " (with the previous client secret: the provider refused the newest)"
            }
            _ => "",
        };
        match proof.and_then(|settled| settled.issued) {
            Ok(issued) => match issued.upstream_problem {
                None => println!(
                    "{name}: ok — the provider issued a token valid until {}{with_previous}",
                    when(issued.token.expires_at)
                ),
                Some(problem) => println!("{name}: not proven — {problem}"),
            },
            Err(error) => {
                println!("{name}: FAILED — {error}");
                first_failure.get_or_insert(error);
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

pub(super) fn schedule(context: &Context, args: ScheduleArgs) -> Result<(), Error> {
    let cron = match args.cron.as_deref() {
        None => None,
        Some("default") => Some(None),
        Some(text) => Some(Some(
            crate::config::parse_schedule(text)
                .map_err(Error::Input)
                .map(|_| text)?,
        )),
    };
    let refresh_before = match args.refresh_before.as_deref() {
        None => None,
        Some("default") => Some(None),
        Some(text) => Some(Some(text.parse::<u64>().map_err(|_| {
            Error::Input(format!(
                "--refresh-before takes a number of seconds or \"default\", not {text:?}"
            ))
        })?)),
    };
    let mut store = context.open()?;
    if let Some(cron) = cron {
        store.set_validation_schedule(&args.name, cron)?;
        match cron {
            Some(text) => println!("{} is validated on the schedule \"{text}\".", args.name),
            None => println!(
                "{} is validated on the global schedule (config.toml).",
                args.name
            ),
        }
    }
    if let Some(seconds) = refresh_before {
        store.set_refresh_before(&args.name, seconds)?;
        match seconds {
            Some(seconds) => println!(
                "{} is refreshed {seconds} s before expiry (at most half its lifetime).",
                args.name
            ),
            None => println!(
                "{} is refreshed ahead by the global rule (config.toml).",
                args.name
            ),
        }
    }
    Ok(())
}
