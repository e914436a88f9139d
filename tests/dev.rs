//! `pgid dev` as a new user tries it: the example policies checked, planned and tested against
//! the running dev session (`--dev`), a lease, a held statement approved by the development
//! reviewer from the command line, the audit log verified and tailed — then the terminal that
//! runs `pgid dev` is closed: pgid dev stops cleanly and removes its session file and state.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;

use common::run;

/// A `pgid` command whose temporary directory (where the dev session file lives) is `tmp`.
fn pgid(tmp: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgid"));
    c.env("TMPDIR", tmp)
        .env_remove("PGID_TOKEN")
        .env_remove("PGID_CONFIG")
        .env("PGID_LOG", "warn");
    c
}

async fn pgid_ok(tmp: &Path, args: &[&str]) -> String {
    let mut c = pgid(tmp);
    c.args(args);
    let out = run(c).await;
    assert_eq!(out.code, 0, "pgid {args:?}: {}{}", out.stdout, out.stderr);
    out.stdout
}

/// Reads `pgid dev`'s stderr until its banner ends; returns the banner and the still-open pipe.
async fn banner(stderr: ChildStderr) -> (String, BufReader<ChildStderr>) {
    let read = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stderr);
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                panic!("pgid dev exited:\n{text}");
            }
            text.push_str(&line);
            if line.starts_with("Edit a policy") {
                return (text, reader);
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("pgid dev did not start within 120 s")
        .unwrap()
}

fn wait_exit(mut child: Child, within: Duration) -> Option<std::process::ExitStatus> {
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_works_against_pgid_dev_and_a_closed_terminal_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    // The throwaway Postgres runs as the postgres user when tests run as root.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = tmp.path();
    let mut dev = pgid(t);
    dev.args([
        "dev",
        "--broker-port",
        "0",
        "--proxy-port",
        "0",
        "--policies",
    ])
    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
    .env("PGID_LOG", "error")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = dev.spawn().unwrap();
    let (text, stderr) = banner(child.stderr.take().unwrap()).await;
    assert!(text.contains("pgid approvals list --dev"), "{text}");
    let session_file = t.join(format!("pgid-dev-{}.json", unsafe { libc::geteuid() }));
    let session: Value =
        serde_json::from_str(&std::fs::read_to_string(&session_file).unwrap()).unwrap();
    let config = PathBuf::from(session["config"].as_str().unwrap());
    assert!(config.exists());

    // Policies: checked (names against the dev database too), planned, tested.
    let checked = pgid_ok(t, &["policy", "check", "--dev"]).await;
    assert!(
        checked.contains("names checked against the database"),
        "{checked}"
    );
    let plan = pgid_ok(t, &["policy", "plan", "--dev"]).await;
    assert!(plan.contains("pgid_p_support-bot"), "{plan}");
    let mut test = pgid(t);
    test.args([
        "policy",
        "test",
        "--dev",
        "--claims",
        r#"{"sub":"agent:support-bot","iss":"x"}"#,
        "DELETE FROM crm.tickets",
    ]);
    let tested = run(test).await;
    assert_eq!(tested.code, 1, "{}{}", tested.stdout, tested.stderr);
    assert!(tested.stdout.contains("require_where"), "{}", tested.stdout);

    // A lease, and a bulk update held for the development reviewer.
    let dsn = pgid_ok(t, &["login", "--dev", "--client", "support-bot"]).await;
    let (client, conn) = tokio_postgres::connect(dsn.trim(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let update = tokio::spawn(async move {
        client
            .execute("UPDATE crm.tickets SET status = 'closed' WHERE id > 0", &[])
            .await
    });
    let mut id = None;
    for _ in 0..100 {
        let listed = pgid_ok(t, &["approvals", "list", "--dev", "--json"]).await;
        let listed: Value = serde_json::from_str(&listed).unwrap();
        if let Some(found) = listed["approvals"][0]["id"].as_str() {
            assert_eq!(listed["approvals"][0]["subject"], "agent:support-bot");
            id = Some(found.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = id.expect("the update was not held for approval");
    let readable = pgid_ok(t, &["approvals", "list", "--dev"]).await;
    assert!(
        readable.contains(&id) && readable.contains("~8 rows"),
        "{readable}"
    );
    let decided = pgid_ok(
        t,
        &[
            "approvals",
            "approve",
            "--dev",
            &id,
            "--comment",
            "tried in dev",
        ],
    )
    .await;
    let decided: Value = serde_json::from_str(&decided).unwrap();
    assert_eq!(decided["state"], "approved");
    assert_eq!(decided["reviewer"], "human:dev-reviewer");
    let updated = tokio::time::timeout(Duration::from_secs(30), update)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(updated, 8);

    // The audit log: intact, and it shows the approved statement.
    let verified = pgid_ok(t, &["audit", "verify", "--dev"]).await;
    assert!(verified.contains("chain intact"), "{verified}");
    let tail = pgid_ok(t, &["audit", "tail", "--dev", "-n", "50"]).await;
    assert!(tail.contains("approval.decided"), "{tail}");
    assert!(tail.contains("SET status = 'closed'"), "{tail}");

    // The terminal goes away: its end of the pipe closes, then the hang-up signal.
    drop(stderr);
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    let status = tokio::task::spawn_blocking(move || wait_exit(child, Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("pgid dev did not stop after SIGHUP with its terminal gone");
    assert!(status.success(), "{status:?}");
    assert!(!session_file.exists(), "the session file was left behind");
    assert!(!config.exists(), "the dev state was left behind");

    // Without a running pgid dev, `--dev` says what is missing.
    let mut again = pgid(t);
    again.args(["approvals", "list", "--dev"]);
    let out = run(again).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("is `pgid dev` running?"),
        "{}",
        out.stderr
    );

    // A session file others could have written (not private to this user) is not used.
    std::fs::write(&session_file, session.to_string()).unwrap();
    std::fs::set_permissions(&session_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut planted = pgid(t);
    planted.args(["audit", "verify", "--dev"]);
    let out = run(planted).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("not this user's private pgid dev session"),
        "{}",
        out.stderr
    );
}
