//! `vault doctor` on a fleet host: the fleet's database and this host's place in it, instead of
//! the local vault.

use crate::store::{FleetDb, PgStore};

use super::{Finding, Places, fine, problem};

/// How far this host's clock may be from the database's before validation firings and deadline
/// alerts drift (leases run on the database's clock and do not).
const CLOCK_SLACK_SECONDS: f64 = 30.0;

/// Opens the fleet as this host, and what is wrong with the fleet as this host sees it.
pub(super) fn examine(fleet: &FleetDb, places: &Places<'_>) -> (Vec<Finding>, Option<PgStore>) {
    let store = match PgStore::open(fleet, places.vault_dir, &places.unlock) {
        Ok(store) => store,
        Err(err) => {
            let finding = problem(
                format!("the fleet database {} does not open: {err}", fleet.shown()),
                "see above",
            );
            return (vec![finding], None);
        }
    };
    let password = fleet.password_from().map_or_else(
        || "no password".to_owned(),
        |from| format!("password from {from}"),
    );
    let mut findings = vec![fine(format!(
        "the fleet database {} opens as host {}, with this host's master key ({password})",
        fleet.shown(),
        store.host()
    ))];
    findings.push(match store.notifications_arrive() {
        Ok(true) => fine("notifications reach this host (LISTEN/NOTIFY)"),
        Ok(false) => problem(
            "notifications sent through the database do not arrive: hosts poll instead (a pooler in transaction mode drops LISTEN)",
            "point [fleet] database at PostgreSQL itself or a session-mode pool",
        ),
        Err(err) => problem(format!("cannot test notifications: {err}"), "see above"),
    });
    findings.push(match store.clock_offset() {
        Ok(offset) if offset.abs() <= CLOCK_SLACK_SECONDS => fine(format!(
            "this host's clock is within {offset:+.1} s of the database's"
        )),
        Ok(offset) => problem(
            format!("this host's clock is {offset:+.0} s off the database's: validation firings and deadline alerts drift"),
            "run NTP (systemd-timesyncd, chrony) on this host and the database's",
        ),
        Err(err) => problem(format!("cannot read the database's clock: {err}"), "see above"),
    });
    findings.push(match store.hosts_without_vouched_keys() {
        Ok(hosts) if hosts.is_empty() => fine("every enrolled host has a key the fleet vouches for"),
        Ok(hosts) => problem(
            format!(
                "host(s) {} have no key the fleet vouches for: vault rekey would stop at them",
                hosts.join(", ")
            ),
            "run any vault command on each (e.g. vault list), or remove it: vault fleet remove HOST",
        ),
        Err(err) => problem(format!("cannot read the hosts' keys: {err}"), "see above"),
    });
    (findings, Some(store))
}
