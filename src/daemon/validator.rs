//! Scheduled validation: on a cron schedule (global, or the account's own), a live refresh proves
//! that each long-lived credential still works, so a revocation is found then — and alerted —
//! not when an app needs a token. It also keeps Google refresh tokens from expiring unused. On a
//! fleet, one host takes each firing; one whose claim runs out unproven (it died) is taken over.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_unix;
use crate::daemon::tokens::Tokens;
use crate::timing::Firing;

const TICK: Duration = Duration::from_secs(1);
/// How often (in ticks) a fleet daemon looks for validations a dead host left undone.
const ABANDONED_EVERY: u32 = 15;

pub async fn run(tokens: Arc<Tokens>, global: cron::Schedule) {
    let mut tick = tokio::time::interval(TICK);
    let mut ticks: u32 = 0;
    loop {
        tick.tick().await;
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(ABANDONED_EVERY) {
            tokens.rerun_abandoned_validations().await;
        }
        let now = now_unix();
        let global_firing = Firing::of(&global, now);
        tokens.table().for_each(|slot| {
            if !slot.state().may_validate() {
                return;
            }
            let next = || {
                slot.validation_schedule()
                    .map_or(global_firing, |own| Firing::of(own, now))
                    .for_account(slot.name())
            };
            match slot.times().next_validation {
                None => slot.set_next_validation(next()),
                Some(due) if now >= due => {
                    slot.set_next_validation(next());
                    tokens.validate_once(slot, due);
                }
                Some(_) => {}
            }
        });
    }
}
