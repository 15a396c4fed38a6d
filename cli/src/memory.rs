//! The process's memory allocator settings, applied once at start.
//!
//! glibc's `malloc` gives each thread that allocates concurrently an arena of its own
//! (up to 8 per core) and returns little of their free space to the system: with the
//! runtime's workers, the blocking threads of the stores and sled's own threads, the
//! resident memory of a long sync grew well past what was live (a 1,000,000-record sync
//! into sled peaked at 250 MB with the default, 177 MB with one arena). Two arenas keep
//! most of that gain without making every thread contend for one lock.

/// Limit glibc's malloc arenas (no-op on other platforms and allocators).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets an allocator parameter; it is called before any thread
    // is started, and M_ARENA_MAX is a parameter glibc documents for this use.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
