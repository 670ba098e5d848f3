//! Where the daemon tells what happened to an account: a state change goes to the audit log,
//! the event stream and the alerter; a new access token to the event stream.

use super::alert::Alerts;
use super::audit::{Audit, Record};
use super::events::{Events, Happened};
use crate::account::Transition;
use crate::clock::now_unix;

pub struct Notifier {
    pub audit: Audit,
    pub alerts: Alerts,
    pub events: Events,
    /// On a fleet, alerts come from the database's outbox (once per fleet), not from the
    /// changes this daemon sees.
    pub alerts_from_outbox: bool,
}

impl Notifier {
    pub fn state_changed(&self, transition: Transition) {
        self.audit.record(Record::State {
            at: now_unix(),
            account: transition.account.clone(),
            from: transition.from,
            to: transition.to,
            reason: transition.reason.clone(),
        });
        self.events.publish(
            &transition.account,
            Happened::State {
                to: transition.to,
                reason: transition.reason.clone(),
            },
        );
        if !self.alerts_from_outbox {
            self.alerts.state_changed(transition);
        }
    }

    /// The account's own key was rotated: an audit line and an event, with key ids only.
    pub fn key_rotated(&self, account: &str, key_id: &str, replaced: Option<&str>) {
        self.audit.record(Record::KeyRotated {
            at: now_unix(),
            account: account.to_owned(),
            key_id: key_id.to_owned(),
            replaced: replaced.map(str::to_owned),
        });
        self.events.publish(
            account,
            Happened::KeyRotated {
                key_id: key_id.to_owned(),
            },
        );
    }

    pub fn token_replaced(&self, account: &str, expires_at: i64) {
        self.events.publish(account, Happened::Token { expires_at });
    }
}
