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
    #[arg(required_unless_present_any = ["refresh_before", "rotate_every"])]
    cron: Option<String>,
    /// Refresh this many seconds before expiry (capped at half the token's lifetime); "default"
    /// returns to the global setting
    #[arg(long, value_name = "SECONDS|default")]
    refresh_before: Option<String>,
    /// Let the daemon rotate the account's own key (Google service-account key, Microsoft
    /// client secret) when it is this old, e.g. 90d (at least 1d); "off" stops it
    #[arg(long, value_name = "AGE|off")]
    rotate_every: Option<String>,
}

/// Providers limit how many keys exist at once and how fast they are made (Google: 10 per
/// service account): a rotation a day is the most the daemon does.
const MIN_ROTATION_AGE: u64 = 24 * 3600;

/// Proves accounts' credentials now with a live refresh, and prints each result.
pub(super) fn validate(context: &Context, args: ValidateArgs) -> Result<(), Error> {
    let mut store = context.open_any()?;
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

/// `--rotate-every`: a duration such as `90d`, at least a day.
fn rotation_age(text: &str) -> Result<u64, Error> {
    let age = humantime::parse_duration(text).map_err(|_| {
        Error::Input(format!(
            "--rotate-every takes an age such as 90d or 30days, or \"off\", not {text:?}"
        ))
    })?;
    if age.as_secs() < MIN_ROTATION_AGE {
        return Err(Error::Input(format!(
            "--rotate-every {text} is too often: providers limit how many keys are made; give 1d or more"
        )));
    }
    Ok(age.as_secs().min(i64::MAX as u64 / 2))
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
    let rotate_every = match args.rotate_every.as_deref() {
        None => None,
        Some("off") => Some(None),
        Some(text) => Some(Some(rotation_age(text)?)),
    };
    let mut store = context.open_any()?;
    if let Some(every) = rotate_every {
        if every.is_some() {
            crate::rotation::check_supported(&store, &args.name)?;
        }
        store.set_rotate_every(&args.name, every.map(|seconds| seconds as i64))?;
        match every {
            Some(seconds) => println!(
                "The daemon (vault serve) rotates the key of {} when it is {} old.",
                args.name,
                super::age(seconds as i64)
            ),
            None => println!(
                "The key of {} is rotated only by: vault rotate {}",
                args.name, args.name
            ),
        }
    }
    store.set_schedule(&args.name, cron, refresh_before)?;
    if let Some(cron) = cron {
        match cron {
            Some(text) => println!("{} is validated on the schedule \"{text}\".", args.name),
            None => println!(
                "{} is validated on the global schedule (config.toml).",
                args.name
            ),
        }
    }
    if let Some(seconds) = refresh_before {
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
