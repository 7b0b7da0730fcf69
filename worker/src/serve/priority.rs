//! Thread priorities of `serve`: the model's threads keep the process's priority, the serving
//! threads (the async runtime: gRPC, HTTP, refusals; the blocking pool: decoding, tokenizing)
//! can run at a higher niceness (`--serving-niceness`, default 0), so that under overload the
//! work on requests that will be refused or are still to be prepared yields the CPU to the batch
//! being generated. The scheduler is work-conserving: an idle model leaves the serving threads the
//! whole CPU. (Measured on 2 cores it can also starve the preparation of the next batch; hence the
//! default of equal priority.)
//!
//! Linux keeps the niceness per thread and a new thread inherits its creator's; an unprivileged
//! process cannot lower it again. So the compute pool ([`start_compute_pool`]) and the model
//! thread are created by threads that keep the process's niceness (the main thread: `serve` runs
//! the server's own future on it), and only the runtime's threads are raised as they start
//! ([`lower_current_thread_priority`]).

/// Why a thread's niceness could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    /// The system refused (or, off Linux, does not keep a niceness per thread).
    #[error("cannot raise the niceness of thread {thread:?} by {by}: {reason}")]
    Refused {
        /// The thread's name.
        thread: String,
        /// The requested increment.
        by: i32,
        /// The system's reason.
        reason: String,
    },
    /// The compute pool was already started.
    #[error("the compute pool is already started: {0}")]
    ComputePool(String),
}

/// The name of the compute pool's threads (`lynx-compute-<i>`).
pub const COMPUTE_THREAD_PREFIX: &str = "lynx-compute-";

/// Starts the CPU kernels' compute pool now, from the calling thread, so that its threads have
/// this thread's niceness rather than that of whichever thread would first use them: rayon's
/// global pool (every CPU kernel: matrix products, attention, element-wise work; `threads` 0:
/// rayon's default, `RAYON_NUM_THREADS` or one per CPU).
pub fn start_compute_pool(threads: usize) -> Result<(), PriorityError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("{COMPUTE_THREAD_PREFIX}{i}"))
        .build_global()
        .map_err(|e| PriorityError::ComputePool(e.to_string()))?;
    Ok(())
}

/// Adds `by` to the calling thread's niceness (capped at 19, the lowest priority).
pub fn lower_current_thread_priority(by: i32) -> Result<(), PriorityError> {
    if by == 0 {
        return Ok(());
    }
    let refused = |reason: String| PriorityError::Refused {
        thread: std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned(),
        by,
        reason,
    };
    set_niceness(by).map_err(refused)
}

#[cfg(target_os = "linux")]
fn set_niceness(by: i32) -> Result<(), String> {
    use rustix::process::{getpriority_process, setpriority_process};
    // On Linux `PRIO_PROCESS` with a thread id addresses that thread only.
    let me = Some(rustix::thread::gettid());
    let now = getpriority_process(me).map_err(|e| e.to_string())?;
    setpriority_process(me, now.saturating_add(by).min(19)).map_err(|e| e.to_string())
}

#[cfg(not(target_os = "linux"))]
fn set_niceness(_by: i32) -> Result<(), String> {
    Err("thread priorities are only set on Linux".into())
}

/// The calling thread's niceness (Linux; `None` elsewhere or on error).
pub fn current_niceness() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn raising_changes_the_calling_thread_only_and_is_inherited() {
        let base = current_niceness().expect("niceness");
        let (raised, child) = std::thread::spawn(move || {
            lower_current_thread_priority(3).expect("raise");
            let raised = current_niceness();
            let child = std::thread::spawn(current_niceness).join().expect("child");
            (raised, child)
        })
        .join()
        .expect("thread");
        let expected = Some((base + 3).min(19));
        assert_eq!(raised, expected);
        assert_eq!(
            child, expected,
            "a new thread inherits its creator's niceness"
        );
        assert_eq!(current_niceness(), Some(base), "other threads keep theirs");
    }
}
