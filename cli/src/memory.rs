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
//!
//! # jemalloc (cargo feature `jemalloc`, off by default)
//!
//! With the feature, the tool's Rust code (the engine, sled, the parser, the fake)
//! allocates from jemalloc instead; C code (SQLite's) still uses glibc's `malloc`, with
//! the settings above. jemalloc runs with [`JEMALLOC_CONF`]: 2 arenas, freed pages given
//! back after 200 ms, thread caches up to 8 KiB (`_RJEM_MALLOC_CONF` in the environment
//! overrides any of it). A standalone 1,000,000-record sync (`scripts/sizing.sh`, 4 runs
//! each, one sitting):
//!
//! | store | first sync | update of every record | peak RSS |
//! |---|---:|---:|---:|
//! | sled, glibc | 15.2-16.7 s | 10.5-14.8 s | 79-94 MB |
//! | sled, jemalloc | 9.2-12.6 s | 7.6-10.6 s | 87-99 MB |
//! | SQLite, glibc | 3.7-4.5 s | 4.2-5.7 s | 31-33 MB |
//! | SQLite, jemalloc | 3.2-5.0 s | 3.9-5.5 s | 35-37 MB |
//! | PostgreSQL 15, glibc (2 runs) | 19.6-27.1 s | 21.3-22.4 s | 32-34 MB |
//! | PostgreSQL 15, jemalloc (2 runs) | 20.5-21.0 s | 22.4-23.4 s | 32-34 MB |
//!
//! At 10,000,000 records (one run each), a SQLite sync stayed as flat with jemalloc: first
//! sync 51.3 s and update 43.7 s, peak 35-36 MB, against 48.0 s, 42.7 s and 33-35 MB on
//! glibc.
//!
//! In `bench` (sled, 5 alternated runs, with jemalloc's own defaults), CPU per record
//! fell by a third to two fifths (store ceiling 15.2 to 9.8 us on a first sync, 14.8 to
//! 8.6 on updates) and the fetch ceiling doubled (357k to 775k records/s); the ratios
//! against the raw ceiling did not move, since the raw ceiling allocates from jemalloc
//! too. Without the cap of 2 arenas and the short decay, jemalloc's default peaked at
//! 122-126 MB on sled and 42-48 MB on SQLite; with freed pages given back at once
//! (`dirty_decay_ms:0`), it was no faster than glibc (sled 12.5-15.7 s, SQLite
//! 5.2-7.4 s).
//!
//! On a third machine of the same kind, in a later sitting (sled, 1,000,000 records, 2
//! runs each): first sync 9.0-13.7 s against 20.8-22.6 s on glibc, update 10.0-11.7 s
//! against 15.8-22.2 s, peak 112-116 MB against 79-93 MB; with `dirty_decay_ms:0`, 83-90
//! MB but 18.9-22.1 s, as slow as glibc. So the memory jemalloc takes for its speed
//! varies with the machine, from 5 to 35 MB so far. It is off by default because the
//! sled store's peak then comes close to 100 MB at 1,000,000 records, or passes it (99
//! and 102 in the first sitting, 112-116 in the later one), and SQLite and PostgreSQL
//! gain nothing measurable; a sled deployment that can spare the memory turns it on
//! (`cargo install --path cli --features jemalloc`).

/// The allocator of the tool's Rust code, with the `jemalloc` feature.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings with the `jemalloc` feature (see the module's documentation),
/// read by jemalloc at its start through the symbol it looks for (its own prefix
/// `_rjem_`, then `malloc_conf`); the environment's `_RJEM_MALLOC_CONF` is read after it,
/// so it wins.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static JEMALLOC_CONF: &[u8; 63] =
    b"narenas:2,dirty_decay_ms:200,muzzy_decay_ms:0,lg_tcache_max:13\0";

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
