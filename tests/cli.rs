//! The command-line contract: `dev-server`, `sync`, `export`, `status`, exit codes and
//! one-line errors, with the real binary.
#![cfg(all(feature = "cli", feature = "sqlite"))]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");

/// A `nango-sync dev-server` process, killed on drop.
struct DevServer {
    child: Child,
    host: String,
    key: String,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dev_server(records: usize) -> DevServer {
    let mut child = Command::new(BIN)
        .args([
            "dev-server",
            "--listen",
            "127.0.0.1:0",
            "--records",
            &records.to_string(),
            "--seed",
            "3",
        ])
        .args(["--model", "Contact", "--model", "Deal"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start dev-server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut host, mut key, mut streams) = (String::new(), String::new(), 0);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(h) = line.strip_prefix("NANGO_HOST=") {
            host = h.to_string();
        } else if let Some(k) = line.strip_prefix("NANGO_SECRET_KEY=") {
            key = k.to_string();
        } else if line.starts_with("stream ") {
            assert!(line.contains(&format!("records={records}")), "{line}");
            streams += 1;
        } else if line.starts_with("control API") {
            break;
        }
    }
    assert!(
        host.starts_with("http://127.0.0.1:"),
        "dev-server printed no host"
    );
    assert_eq!(streams, 2);
    assert!(!key.is_empty());
    DevServer { child, host, key }
}

fn run(args: &[&str], server: &DevServer) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("NANGO_HOST", &server.host)
        .env("NANGO_SECRET_KEY", &server.key)
        .env_remove("NANGO_SYNC_LOG")
        .output()
        .expect("run nango-sync")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn sync_export_and_status_against_dev_server() {
    let server = dev_server(1200);
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("sqlite://{}", dir.path().join("cli.db").display());
    let sync = [
        "sync",
        "--sink",
        &sink,
        "--integration",
        "demo-crm",
        "--connection",
        "acme",
        "--model",
        "Contact",
        "--model",
        "Deal",
        "--page-size",
        "500",
    ];
    let out = run(&sync, &server);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("demo-crm/acme/Contact: 1200 records in 3 pages"),
        "{stdout}"
    );
    assert!(stdout.contains("1200 added"), "{stdout}");

    // A second run fetches nothing new.
    let out = run(&sync, &server);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("Contact: 0 records in 1 pages"),
        "{}",
        text(&out.stdout)
    );

    let export = [
        "export",
        "--sink",
        &sink,
        "--integration",
        "demo-crm",
        "--connection",
        "acme",
        "--model",
        "Contact",
    ];
    let out = run(&export, &server);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1200);
    let ids: Vec<&str> = lines.iter().map(|v| v["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "export is sorted by id");
    assert!(
        lines
            .iter()
            .all(|v| v["_nango_metadata"]["cursor"].is_string())
    );

    let out = run(&["status", "--sink", &sink, "--json"], &server);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status.as_array().unwrap().len(), 2);
    assert_eq!(status[0]["live_records"], 1200);
    let out = run(&["status", "--sink", &sink], &server);
    assert!(
        text(&out.stdout).contains("1200 live, 0 deleted"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let server = dev_server(10);
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("sqlite://{}", dir.path().join("e.db").display());
    let sync = |sink: &str, connection: &str, model: &str| -> Vec<String> {
        [
            "sync",
            "--sink",
            sink,
            "--integration",
            "demo-crm",
            "--connection",
            connection,
            "--model",
            model,
        ]
        .map(String::from)
        .to_vec()
    };
    let no_env: Vec<(&str, &str)> = Vec::new();
    let cases = [
        (
            sync("mysql://x", "acme", "Contact"),
            no_env.clone(),
            "unknown scheme",
        ),
        (sync(&sink, "acme", "contact"), no_env.clone(), "model name"),
        (
            sync(&sink, "nobody", "Contact"),
            no_env.clone(),
            "unknown_connection",
        ),
        (
            sync(&sink, "acme", "Contact"),
            vec![("NANGO_SECRET_KEY", "0b0e5a5e-8a55-4c2e-9f6a-3d2b1c0a9e8f")],
            "401",
        ),
        (
            sync(&sink, "acme", "Contact"),
            vec![("NANGO_HOST", "ftp://nowhere")],
            "host URL",
        ),
        (
            sync("sqlite:///no/such/dir/x.db", "acme", "Contact"),
            no_env.clone(),
            "does not exist",
        ),
    ];
    for (args, env, expected) in cases {
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .env("NANGO_HOST", &server.host)
            .env("NANGO_SECRET_KEY", &server.key)
            .env_remove("NANGO_SYNC_LOG");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(
            error_lines.len(),
            1,
            "{args:?}: one error line expected in {stderr:?}"
        );
        assert!(error_lines[0].contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("0b0e5a5e") && !stderr.contains(&server.key),
            "secret key in stderr: {stderr}"
        );
    }
}

#[test]
fn a_password_in_a_failing_sink_url_is_never_printed() {
    // `sslmode=bogus` makes the URL fail at once, in every build: with the `postgres`
    // feature as an invalid URL, without it as a backend not compiled in. Either way
    // the error names the store by its URL, which must come out redacted.
    let password = "hunter2-do-not-print";
    let urls = [
        format!("postgres://app:{password}@127.0.0.1:1/db?sslmode=bogus"),
        format!("postgres://app@127.0.0.1:1/db?sslmode=bogus&password={password}"),
        format!("postgresql://app@127.0.0.1:1/db?pass%77ord={password}&sslmode=bogus"),
    ];
    for url in &urls {
        for args in [
            vec!["status", "--sink", url],
            vec!["status", "--sink", url, "--json"],
            vec![
                "export",
                "--sink",
                url,
                "--integration",
                "demo-crm",
                "--connection",
                "acme",
                "--model",
                "Contact",
            ],
        ] {
            let out = Command::new(BIN)
                .args(&args)
                .env_remove("NANGO_SYNC_LOG")
                .output()
                .expect("run nango-sync");
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert!(!out.status.success(), "{args:?} should fail");
            assert!(
                !stdout.contains(password) && !stderr.contains(password),
                "{args:?}: the password was printed:\nstdout: {stdout}\nstderr: {stderr}"
            );
            let error_lines: Vec<&str> =
                stderr.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(error_lines.len(), 1, "{args:?}: {stderr:?}");
            assert!(
                error_lines[0].contains("127.0.0.1:1/db") && error_lines[0].contains("***"),
                "{args:?}: the error names the store, redacted: {stderr}"
            );
        }
    }
}
