//! Wall-clock time. Due times are computed from the wall clock, not a monotonic timer, so that a
//! machine resuming from suspend sees at once which tokens expired while it slept.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}
