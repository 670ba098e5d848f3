//! The usual world of a test in one call: the provider, a vault pointed at it, its accounts,
//! and, when asked, `vault serve` on the vault.

use super::daemon::Daemon;
use super::fake_oauth::{self, FakeOAuth, OfflineRule};
use super::{TestVault, add_with_browser};
use tokenvault::devprovider::Behaviour;

/// The provider and a vault; accounts are added with `account`.
pub struct Scenario {
    pub fake: FakeOAuth,
    pub vault: TestVault,
}

/// A scenario with its daemon running.
pub struct Served {
    pub fake: FakeOAuth,
    pub vault: TestVault,
    pub daemon: Daemon,
}

impl Scenario {
    /// The provider (offline access by scope, as OIDC servers do) and a new vault using it.
    pub fn new() -> Scenario {
        let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
        let vault = TestVault::new(Some(&fake));
        Scenario { fake, vault }
    }

    /// Changes how the provider behaves (rotation, lifetimes…) before accounts are added.
    pub fn configure(self, change: impl FnOnce(&mut Behaviour)) -> Scenario {
        self.fake.configure(change);
        self
    }

    /// Adds account `name` through the browser flow.
    pub fn account(self, name: &str) -> Scenario {
        add_with_browser(&self.vault, &self.fake, name).ok();
        self
    }

    /// Adds account `name` whose stored access token has already expired: its first ask
    /// refreshes.
    pub fn expired_account(self, name: &str) -> Scenario {
        self.fake.configure(|b| b.access_lifetime = 0);
        let scenario = self.account(name);
        scenario.fake.configure(|b| b.access_lifetime = 3600);
        scenario
    }

    /// Starts `vault serve` with `extra` arguments and waits for its socket.
    pub fn serve(self, extra: &[&str]) -> Served {
        let daemon = Daemon::start(&self.vault, extra);
        Served {
            fake: self.fake,
            vault: self.vault,
            daemon,
        }
    }
}
