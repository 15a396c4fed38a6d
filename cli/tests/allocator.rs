//! The `jemalloc` feature: the tool allocates from jemalloc, started with the settings
//! `memory.rs` gives it, which the environment can override.
#![cfg(all(feature = "jemalloc", not(target_env = "msvc")))]

use std::process::Command;

/// jemalloc's statistics, printed at exit, of `nango-sync --version` run with
/// `_RJEM_MALLOC_CONF=conf`.
fn stats(conf: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nango-sync"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", conf)
        .output()
        .expect("run nango-sync");
    assert!(out.status.success(), "nango-sync --version failed: {out:?}");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 statistics");
    assert!(
        !stderr.contains("Invalid conf"),
        "jemalloc refused a setting:\n{stderr}"
    );
    stderr
}

#[test]
fn the_tool_runs_on_jemalloc_with_its_settings() {
    let s = stats("stats_print:true");
    assert!(
        s.contains("jemalloc statistics"),
        "no jemalloc statistics:\n{s}"
    );
    for setting in [
        "opt.narenas: 2\n",
        "opt.dirty_decay_ms: 200 ",
        "opt.muzzy_decay_ms: 0 ",
        "opt.tcache_max: 8192\n",
    ] {
        assert!(s.contains(setting), "{setting:?} missing:\n{s}");
    }
}

#[test]
fn the_environment_overrides_the_tools_settings() {
    let s = stats("stats_print:true,narenas:3");
    assert!(
        s.contains("opt.narenas: 3\n"),
        "narenas not overridden:\n{s}"
    );
    // The settings the environment does not name stay the tool's.
    assert!(s.contains("opt.dirty_decay_ms: 200 "), "{s}");
}
