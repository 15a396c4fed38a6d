//! The process's memory allocator settings, applied once at start.
//!
//! glibc's `malloc` gives each thread that allocates concurrently an arena of its own
//! (up to 8 per core) and returns little of their free space to the system: with the
//! runtime's workers, the blocking threads of the stores and sled's own threads, the
//! resident memory of a long sync grew well past what was live (a 1,000,000-record sync
//! into sled peaked at 250 MB with the default, 177 MB with one arena, before the
//! threshold below). The process is capped at 8 arenas, whatever the number of cores.
//! Fewer made the threads of a sync share arenas: the thread parsing the next page and
//! the one committing the current page then waited on each other's locks. With 2 arenas,
//! a standalone 1,000,000-record sled sync ran at 74–81k records/s, against 82–96k with 8
//! (79–86 MB peak against 78–84; two sittings), and in `bench` the sled engine ran
//! 80k / 84k against 93k / 107k records/s (fresh / update, 3 alternated runs). SQLite
//! gained 1–8% (a 10M sync peaked at 32 MB), and PostgreSQL, bound by its server,
//! gained nothing (30–31 MB at 1M). 4 arenas did no better than 2.
//!
//! With a sled store, blocks of 512 KiB and more are also mapped on their own
//! ([`for_store`]): glibc otherwise raises that threshold as large blocks are freed and
//! then serves them from the heap, where sled's large buffers left it fragmented. A
//! standalone 1,000,000-record sync into sled peaked at 80 to 86 MB instead of 98 to
//! 120 MB (four and seven runs, one day), for about 10% more CPU (pages mapped and
//! zeroed anew; in `bench`, whose in-process fake and page buffers are mapped too, the
//! sled passes took 13 to 21% more CPU and the store ceiling ran 15% slower). SQLite
//! and PostgreSQL keep glibc's default, and a threshold the environment sets wins.

/// The most malloc arenas the process uses (see the module's documentation).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 8;

/// Limit glibc's malloc arenas (no-op on other platforms and allocators).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets an allocator parameter; it is called before any thread
    // is started, and M_ARENA_MAX is a parameter glibc documents for this use.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Allocator settings for the store at `url`, applied when the process opens it (see
/// the module's documentation); no-op but for sled on glibc, and when the environment
/// sets the threshold itself (`MALLOC_MMAP_THRESHOLD_`, or `mmap_threshold` in
/// `GLIBC_TUNABLES`): the user's setting wins.
pub fn for_store(url: &str) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if url.starts_with("sled://") && !threshold_set_by_environment() {
        // SAFETY: `mallopt` only sets an allocator parameter, under glibc's own lock;
        // M_MMAP_THRESHOLD is documented as settable at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = url;
}

/// Whether the environment sets glibc's mmap threshold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn threshold_set_by_environment() -> bool {
    std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"))
}
