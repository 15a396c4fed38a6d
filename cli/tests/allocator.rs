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

/// Each of `settings` is printed in `stats`.
fn assert_printed(stats: &str, settings: &[&str]) {
    for setting in settings {
        assert!(stats.contains(setting), "{setting:?} missing:\n{stats}");
    }
}

#[test]
fn the_tool_runs_on_jemalloc_with_its_settings() {
    let s = stats("stats_print:true");
    assert_printed(
        &s,
        &[
            "jemalloc statistics",
            "opt.narenas: 2\n",
            "opt.dirty_decay_ms: 200 ",
            "opt.muzzy_decay_ms: 0 ",
            "opt.tcache_max: 8192\n",
        ],
    );
}

#[test]
fn the_environment_overrides_the_tools_settings() {
    let s = stats("stats_print:true,narenas:3");
    // The one setting the environment names is its own; the others stay the tool's.
    assert_printed(&s, &["opt.narenas: 3\n", "opt.dirty_decay_ms: 200 "]);
}
