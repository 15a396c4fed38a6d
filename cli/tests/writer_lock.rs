//! One writing process per SQLite file or sled directory: a second `sync` while `serve`
//! writes the store is refused at once with an error naming `serve`'s pid; reading
//! commands still work on SQLite; the lock goes with its process (also after SIGKILL).
#![cfg(all(feature = "sqlite", feature = "sled"))]

use std::process::Stdio;
use std::time::Duration;

use nango_sync::StreamKey;
use nango_sync_testkit::{FakeConfig, FakeNango};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");

fn stream() -> StreamKey {
    StreamKey::new("github", "acme", "Contact")
}

/// `serve` on `url`, once it listens.
async fn serve(fake: &FakeNango, url: &str) -> Child {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--sink", url, "--host"])
        .arg(fake.url())
        .args([
            "--integration",
            "github",
            "--connection",
            "acme",
            "--model",
            "Contact",
        ])
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env_remove("NANGO_WEBHOOK_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve printed nothing within 60 s")
        .unwrap()
        .expect("serve exited before listening");
    assert!(line.starts_with("listening on "), "{line}");
    child
}

async fn run(fake: &FakeNango, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--host")
        .arg(fake.url())
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .output()
        .await
        .unwrap()
}

async fn sync(fake: &FakeNango, url: &str) -> std::process::Output {
    run(
        fake,
        &[
            "sync",
            "--sink",
            url,
            "--integration",
            "github",
            "--connection",
            "acme",
            "--model",
            "Contact",
        ],
    )
    .await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn second_writer_is_refused(url: &str, reads_allowed: bool) {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    fake.generate(&stream(), 50, 50);
    let mut server = serve(&fake, url).await;
    let pid = server.id().unwrap();

    let out = sync(&fake, url).await;
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a second writer was let in: {err}");
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("open for writing by another process"),
        "the error does not name the holder (pid {pid}): {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    if reads_allowed {
        let out = Command::new(BIN)
            .args(["status", "--sink", url, "--json"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "status: {}", text(&out.stderr));
    }

    // The lock goes with its process, however it ends.
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    let out = sync(&fake, url).await;
    assert!(
        out.status.success(),
        "after the holder died: {}",
        text(&out.stderr)
    );
    let export = Command::new(BIN)
        .args([
            "export",
            "--sink",
            url,
            "--integration",
            "github",
            "--connection",
            "acme",
            "--model",
            "Contact",
        ])
        .output()
        .await
        .unwrap();
    assert!(export.status.success(), "{}", text(&export.stderr));
    assert_eq!(text(&export.stdout).lines().count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_second_writer_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("one.db").display());
    second_writer_is_refused(&url, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_second_writer_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled://{}", dir.path().join("one").display());
    second_writer_is_refused(&url, false).await;
}
