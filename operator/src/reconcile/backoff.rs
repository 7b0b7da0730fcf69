//! Per-object exponential backoff of failed reconciles.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Delay before the first retry of a failed reconcile.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Longest delay between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// Consecutive failures per object (`namespace/name`).
///
/// # Guarantees
/// The n-th consecutive failure of an object is retried after `FIRST_RETRY * 2^(n-1)`, capped at
/// [`MAX_RETRY`]; a success ([`Self::reset`]) starts the sequence again. Objects do not affect
/// each other.
#[derive(Debug, Default)]
pub struct ErrorBackoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl ErrorBackoff {
    /// Records a failure of `key` and returns the delay before its retry.
    pub fn next_delay(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        let factor = 2u32.saturating_pow(count.saturating_sub(1).min(16));
        FIRST_RETRY.saturating_mul(factor).min(MAX_RETRY)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_on_success() {
        let backoff = ErrorBackoff::default();
        let delays: Vec<u64> = (0..9)
            .map(|_| backoff.next_delay("ns/a").as_secs())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff.next_delay("ns/b"), FIRST_RETRY);
        backoff.reset("ns/a");
        assert_eq!(backoff.next_delay("ns/a"), FIRST_RETRY);
    }
}
