//! The behaviour every store backend must show, one test per behaviour.
//!
//! A backend implements [`Backend`] (how to open it in an empty folder) and adds one line per
//! trait it implements, for example in its own tests:
//!
//! ```ignore
//! clientele_store::event_store_suite!(event_log, clientele_store::EventLog);
//! ```
//!
//! which generates `event_log::duplicate_ids_are_ignored`, `event_log::prune_drops_whole_days`
//! and so on, so a failure names the behaviour and the backend (quickwit's metastore suite).
//! The behaviours are plain async functions here, each given a fresh, empty store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

pub mod control;
pub mod events;
pub mod findings;

pub use events::event;

/// A store the suite can open in a folder of its own, and open again to check what survives.
pub trait Backend: Sized + Send + Sync + 'static {
    fn open_in(dir: &Path) -> Self;

    /// Whether the backend's server can be had here. A backend that needs one (PostgreSQL)
    /// answers false, after saying so loudly, when it is not installed and `CI` is not set;
    /// its tests then pass without running.
    fn available() -> bool {
        true
    }
}

/// Whether `CI` is set (to anything but empty, `false` or `0`): there, a backend whose server
/// is not installed fails its tests instead of skipping them.
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A loopback port free at the time of asking, for a server a test starts on a port it names.
///
/// Chosen at random below the kernel's ephemeral range, where no `bind(:0)` and no outgoing
/// connection of a parallel test can take it in the moment before the server binds it: from
/// the ephemeral range, PostgreSQL once failed in CI with "Address already in use".
pub fn free_port() -> u16 {
    const LOWEST: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral > LOWEST + 1_000 {
        let span = u64::from(ephemeral - LOWEST);
        for _ in 0..100 {
            let random =
                u64::from_str_radix(&clientele_core::event::random_id128()[..16], 16).unwrap_or(0);
            let port = LOWEST + (random % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs an async setup step on a runtime of its own, on another thread, so it works from
/// inside a test's runtime (where blocking on a future is refused).
pub fn on_own_runtime<T, F, Fut>(f: F) -> T
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .join()
        .unwrap()
    })
}

/// The database a server-backed suite uses for a test folder: the same folder, the same
/// database, so a reopen finds what was written.
pub fn database_of(dir: &Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy();
    format!(
        "t_{}",
        name.chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_lowercase()
    )
}

/// A backend opened in a fresh temporary folder, removed when this is dropped.
pub struct Fresh<S: Backend> {
    store: Option<S>,
    dir: PathBuf,
}

impl<S: Backend> Fresh<S> {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "clientele-store-suite-{}",
            clientele_core::event::random_id128()
        ));
        let store = Some(S::open_in(&dir));
        Fresh { store, dir }
    }

    pub fn store(&self) -> &S {
        self.store.as_ref().expect("the store is open")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the store and opens it again on the same folder, as a restart would.
    pub fn reopen(&mut self) -> &S {
        drop(self.store.take());
        self.store = Some(S::open_in(&self.dir));
        self.store()
    }
}

impl<S: Backend> Default for Fresh<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Backend> Drop for Fresh<S> {
    fn drop(&mut self) {
        drop(self.store.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Generates one `#[tokio::test]` per named behaviour of `$suite`, in a module `$backend`.
#[doc(hidden)]
#[macro_export]
macro_rules! __store_suite_tests {
    ($backend:ident, $ty:ty, $suite:ident: $($name:ident),+ $(,)?) => {
        #[cfg(test)]
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    if !<$ty as $crate::testsuite::Backend>::available() {
                        return;
                    }
                    let mut fresh = $crate::testsuite::Fresh::<$ty>::new();
                    $crate::testsuite::$suite::$name(&mut fresh).await;
                }
            )+
        }
    };
}

/// Every `ControlStore` behaviour, as tests in a module named `$backend`.
#[macro_export]
macro_rules! control_store_suite {
    ($backend:ident, $ty:ty) => {
        $crate::__store_suite_tests!($backend, $ty, control:
            spec_versions_are_recorded_once_per_hash,
            releases_are_recorded_once_and_listed_in_time_order,
            consumers_are_created_once_and_bump_the_control_version,
            updating_a_consumer_replaces_its_fields,
            a_key_needs_a_consumer_and_a_unique_hash,
            key_entries_carry_the_consumers_plan,
            consumer_key_entries_are_that_consumers_keys_only,
            revoking_a_key_keeps_the_first_time,
            deleting_a_consumer_revokes_its_keys,
            per_consumer_limits_reach_the_key_entries,
            quota_usage_replaces_what_was_stored,
            the_key_secret_and_consumers_survive_a_reopen,
        );
    };
}

/// Every `EventStore` behaviour, as tests in a module named `$backend`.
#[macro_export]
macro_rules! event_store_suite {
    ($backend:ident, $ty:ty) => {
        $crate::__store_suite_tests!($backend, $ty, events:
            append_returns_only_new_events,
            day_counts_count_stored_events_per_utc_day,
            duplicate_ids_are_ignored,
            duplicates_within_one_batch_are_stored_once,
            duplicates_of_back_dated_events_are_ignored,
            duplicates_are_ignored_after_a_reopen,
            every_field_round_trips,
            scan_pages_through_events_from_a_time,
            recent_events_are_newest_first_and_limited,
            recent_events_filter_by_status_and_time,
            recent_events_belong_to_one_consumer,
            prune_drops_whole_days_before_the_cut,
            events_survive_a_reopen,
            archived_rollups_replace_and_move_the_watermark,
            archived_rollups_are_pruned_by_tier,
        );
    };
}

/// Every `FindingStore` behaviour, as tests in a module named `$backend`.
#[macro_export]
macro_rules! finding_store_suite {
    ($backend:ident, $ty:ty) => {
        $crate::__store_suite_tests!($backend, $ty, findings:
            a_persisting_condition_is_one_finding,
            the_same_condition_a_day_later_is_a_new_finding,
            findings_filter_by_consumer_kind_api_time_and_limit,
            a_span_that_ends_before_it_starts_is_refused,
            deliveries_are_listed_newest_first,
            pruning_drops_findings_and_deliveries_before_the_cut,
        );
    };
}
