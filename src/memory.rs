//! Giving freed heap memory back to the system (glibc's malloc).
//!
//! glibc keeps what the program frees in its arenas and gives pages back
//! to the kernel only from the top of a heap. After a burst (100,000
//! creates acknowledged, each job's record and task freed once it waits
//! for its next poll) most of the freed memory lies between chunks still
//! in use, and stays resident: in P3 (`docs/benchmarks.md`, "P3 memory")
//! malloc held 134 MB free against 209 MB in use at 100,000 waiting jobs.
//! `malloc_trim(0)` gives back every whole free page in every arena
//! (`madvise(MADV_DONTNEED)`; the memory stays malloc's to reuse), so the
//! daemon calls it every [`TRIM_EVERY`] from a thread of its own
//! ([`start_trimming`]). It takes each arena's lock in turn while it walks
//! that arena's free chunks: a few milliseconds at most, every 10 s.
//!
//! With fewer arenas ([`limit_arenas`], [`ARENAS`], set by `main` before
//! the runtime's threads start) less of that freed memory is spread over
//! arenas that other threads' allocations would not reuse.
//!
//! Only with glibc (`target_env = "gnu"`): another C library or allocator
//! has its own policy, and there this does nothing. The calls into
//! the C library are the only `unsafe` code of the workspace (its lint is
//! `deny`, allowed in this module alone).
#![allow(unsafe_code)]

use std::time::Duration;

/// How many malloc arenas the process may have: glibc's default is 8 per
/// core, each keeping the memory its threads freed; sled's I/O threads
/// and tokio's blocking threads each start one. 2: P3 at 100,000 jobs
/// 194 MiB against 208 MiB with the default in one pair of runs (runs
/// vary by ±10 MiB on the shared machine), P1 no slower.
pub const ARENAS: i32 = 2;

/// How often the daemon gives freed memory back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Whether this build can give freed memory back (glibc).
pub const SUPPORTED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Gives every whole free page of malloc's arenas back to the kernel.
/// True if memory was given back; always false without glibc.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes no pointer and is thread-safe (it
        // locks each arena while it walks it); it only releases pages no
        // allocation uses.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Caps the number of malloc arenas at `n`, unless the operator chose
/// with `MALLOC_ARENA_MAX` (glibc reads it at start). Call it before any
/// thread is started: a thread keeps the arena it got first. True if the
/// cap was set.
pub fn limit_arenas(n: i32) -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` takes no pointer and only sets a parameter
        // that malloc reads when a thread needs an arena.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = n;
        false
    }
}

/// Starts the thread that calls [`trim`] every `every` for the life of
/// the process. False when unsupported ([`SUPPORTED`]) or when the thread
/// could not be started (the daemon runs on without it; logged).
pub fn start_trimming(every: Duration) -> bool {
    if !SUPPORTED {
        return false;
    }
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let t = std::time::Instant::now();
                let gave_back = trim();
                tracing::trace!(gave_back, took = ?t.elapsed(), "malloc_trim");
            }
        });
    match spawned {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the thread that gives freed memory back");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_runs_where_glibc_is_and_is_a_no_op_elsewhere() {
        // A freed block big enough to hold whole pages, below the mmap
        // threshold so that it stays in an arena.
        let block = vec![1u8; 64 * 1024];
        drop(std::hint::black_box(block));
        let gave_back = trim();
        if !SUPPORTED {
            assert!(!gave_back);
        }
        // A second call, and allocations after it, still work.
        let _ = trim();
        let v: Vec<u64> = (0..10_000).collect();
        assert_eq!(v.iter().sum::<u64>(), 49_995_000);
    }

    #[test]
    fn the_arena_cap_is_set_where_glibc_is_unless_the_operator_chose() {
        let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some();
        assert_eq!(limit_arenas(ARENAS), SUPPORTED && !chosen);
    }

    #[test]
    fn the_thread_starts_where_it_is_supported() {
        assert_eq!(start_trimming(Duration::from_secs(3600)), SUPPORTED);
    }
}
