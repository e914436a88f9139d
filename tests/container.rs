//! The container image, built from the repository's Dockerfile and started as README's "Running
//! in a container" documents it (`-v pgid.toml:/etc/pgid/pgid.toml`, a state volume, published
//! ports), with podman from the distribution's packages.
//!
//! No registry is used: the base image is a Debian bookworm made with debootstrap and imported
//! (cached in podman's store), and the binary comes from an image holding this build's `pgid`
//! (the Dockerfile's `BINARY_FROM`); the runtime stage — packages, user, volume, defaults,
//! HEALTHCHECK — is the file's own. Checked: pgid runs as uid 10001, writes its state to the
//! volume and keeps it across a restart, loads no policies unless given some, is ready (state
//! database reachable) and healthy by its own HEALTHCHECK, answers on the published ports with a
//! certificate its generated CA verifies for 127.0.0.1, and stops cleanly on `podman stop`.
//!
//! Where podman cannot run any container at all (a kernel or cgroup set-up without support),
//! the test says so on stderr and passes: it tests the image, not the machine.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BASE: &str = "localhost/pgid-test-base:bookworm";

/// podman with the settings this kind of machine needs: runc where it is installed (crun 1.8
/// refuses hybrid cgroup hierarchies), cgroupfs (no systemd), and explicit descriptor and
/// process limits (the defaults exceed the hard limits of a container-in-a-sandbox).
fn podman(args: &[&str]) -> Command {
    let mut c = Command::new("podman");
    if Path::new("/usr/sbin/runc").exists() || Path::new("/usr/bin/runc").exists() {
        c.args(["--runtime", "runc"]);
    }
    c.args(["--cgroup-manager", "cgroupfs"]);
    c.args(args);
    c
}

fn limits() -> Vec<String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let nofile = lim.rlim_max.min(65536);
    vec![
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".into(),
        "nproc=4096:4096".into(),
    ]
}

/// `c`'s stdout; the test fails (with the command and its stderr) if it fails.
fn ok(c: Command) -> String {
    let shown = format!("{c:?}");
    out_ok(c).unwrap_or_else(|e| panic!("{shown}: {e}"))
}

/// Why no container can run here, if none can.
fn runtime_missing() -> Option<String> {
    if out_ok(podman(&["--version"])).is_err() {
        return Some("podman is not installed (scripts/setup --test installs it as root)".into());
    }
    // Making the base image is not the machine's limit: a failure there fails the test.
    if let Err(e) = ensure_base() {
        panic!("cannot make the base image: {e}");
    }
    let mut probe = podman(&["run", "--rm", "--network", "none"]);
    probe.args(limits()).args([BASE, "true"]);
    match out_ok(probe) {
        Ok(_) => None,
        Err(e) => Some(format!("podman cannot run a container here: {e}")),
    }
}

/// `c`'s stdout, or why it failed (its stderr).
fn out_ok(mut c: Command) -> Result<String, String> {
    match c.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The Debian base image, made once with debootstrap and kept in podman's store.
fn ensure_base() -> Result<(), String> {
    if podman(&["image", "exists", BASE])
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let target = root.path().join("rootfs");
    out_ok({
        let mut c = Command::new("debootstrap");
        c.args(["--variant=minbase", "bookworm"])
            .arg(&target)
            .arg("http://deb.debian.org/debian");
        c
    })
    .map_err(|e| format!("debootstrap: {e}"))?;
    let tar = root.path().join("rootfs.tar");
    out_ok({
        let mut c = Command::new("tar");
        c.arg("-C").arg(&target).arg("-cf").arg(&tar).arg(".");
        c
    })?;
    out_ok({
        let mut c = podman(&["import"]);
        c.arg(&tar).arg(BASE);
        c
    })
    .map(|_| ())
}

/// Removes the container and volume when the test ends, however it ends.
struct Cleanup {
    container: String,
    volume: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.container]).output();
        let _ = podman(&["volume", "rm", "-f", &self.volume]).output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_starts_as_documented_and_keeps_its_state() {
    if let Some(why) = tokio::task::spawn_blocking(runtime_missing).await.unwrap() {
        eprintln!("SKIPPED: no container runtime works on this machine: {why}");
        return;
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let cleanup = Cleanup {
        container: format!("pgid-test-{id}"),
        volume: format!("pgid-test-state-{id}"),
    };
    let ctr = cleanup.container.as_str();

    // The image: this build's binary in a scratch image, then the Dockerfile.
    let work = tempfile::tempdir().unwrap();
    let bin_ctx = work.path().join("binary");
    std::fs::create_dir(&bin_ctx).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_pgid"), bin_ctx.join("pgid")).unwrap();
    std::fs::write(
        bin_ctx.join("Containerfile"),
        "FROM scratch\nCOPY pgid /src/target/release/pgid\n",
    )
    .unwrap();
    let binary_image = format!("localhost/pgid-test-binary:{id}");
    let image = format!("localhost/pgid-test:{id}");
    ok({
        let mut c = podman(&["build", "-q", "-t", &binary_image]);
        c.arg(&bin_ctx);
        c
    });
    ok({
        let mut c = podman(&["build", "-q", "--format", "docker"]);
        c.args(limits())
            .args(["--build-arg", &format!("RUNTIME_IMAGE={BASE}")])
            .args(["--build-arg", &format!("BINARY_FROM={binary_image}")])
            .args(["-t", &image])
            .arg(common::repo_path(""));
        c
    });
    let _images = RemoveImages(vec![image.clone(), binary_image.clone()]);

    // Postgres on the host, reachable from the container's network.
    let pg = tokio::task::spawn_blocking(|| {
        pgid::dev::TempPostgres::start_with(&[("listen_addresses", "*")])
    })
    .await
    .unwrap()
    .unwrap();
    let hba = pg.data_dir().join("pg_hba.conf");
    let mut rules = std::fs::read_to_string(&hba).unwrap();
    rules.push_str("host all all 0.0.0.0/0 scram-sha-256\n");
    std::fs::write(&hba, rules).unwrap();
    let su = common::connect(&pg.superuser_url("postgres"))
        .await
        .unwrap();
    for sql in [
        "SELECT pg_reload_conf()",
        "CREATE ROLE pgid_admin LOGIN CREATEROLE PASSWORD 'admin-example-password'",
        "CREATE DATABASE app OWNER pgid_admin",
    ] {
        su.batch_execute(sql).await.unwrap();
    }

    let config = work.path().join("pgid.toml");
    std::fs::write(
        &config,
        format!(
            "[[issuers]]\nissuer = \"https://issuer.example.com\"\naudiences = [\"pgid\"]\n\n\
             [[databases]]\nname = \"app\"\n\
             admin_url = \"postgres://pgid_admin:admin-example-password@host.containers.internal:{}/app\"\n\
             upstream_tls = \"disable\"\n",
            pg.port
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (broker_port, proxy_port) = (common::free_port(), common::free_port());
    // As README documents it: the file, a state volume, both ports published.
    ok({
        let mut c = podman(&["run", "-d", "--name", ctr]);
        c.args(limits())
            .arg("-v")
            .arg(format!("{}:/etc/pgid/pgid.toml:ro", config.display()))
            .args(["-v", &format!("{}:/var/lib/pgid", cleanup.volume)])
            .args(["-p", &format!("127.0.0.1:{broker_port}:7443")])
            .args(["-p", &format!("127.0.0.1:{proxy_port}:7432")])
            .arg(&image);
        c
    });

    // Ready: the state database reached through the container's network, the CA generated.
    let ready = wait_ready(ctr, broker_port).await;
    assert_eq!(ready, 200, "not ready:\n{}", logs(ctr));
    assert_eq!(ok(podman(&["exec", ctr, "id", "-u"])).trim(), "10001");
    let listing = ok(podman(&["exec", ctr, "ls", "-ln", "/var/lib/pgid"]));
    for f in ["server.key", "tls", "audit.jsonl"] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {f}")))
            .unwrap_or_else(|| panic!("no {f} in the state volume:\n{listing}"));
        assert!(line.contains(" 10001 10001 "), "{line}");
    }
    // No policies unless given some: no group role was created.
    let app = common::connect(&pg.url("pgid_admin", "admin-example-password", "app"))
        .await
        .unwrap();
    let groups: i64 = app
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgid\\_p\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(groups, 0);
    // The image's own HEALTHCHECK.
    ok(podman(&["healthcheck", "run", ctr]));
    // The proxy port answers the Postgres TLS request.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy_port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    drop(s);

    // The state survives a restart: the same server key and CA.
    let key_digest = |ctr: &str| {
        ok(podman(&[
            "exec",
            ctr,
            "sha256sum",
            "/var/lib/pgid/server.key",
        ]))
    };
    let ca = |ctr: &str| ok(podman(&["exec", ctr, "cat", "/var/lib/pgid/tls/ca.crt"]));
    let (key_before, ca_before) = (key_digest(ctr), ca(ctr));
    ok(podman(&["restart", "-t", "20", ctr]));
    assert_eq!(wait_ready(ctr, broker_port).await, 200, "{}", logs(ctr));
    assert_eq!(key_digest(ctr), key_before);
    assert_eq!(ca(ctr), ca_before);

    // SIGTERM to pgid as the container's first process: a clean stop, well within the timeout.
    let asked = Instant::now();
    ok(podman(&["stop", "-t", "20", ctr]));
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );
    let code = ok(podman(&["inspect", "--format", "{{.State.ExitCode}}", ctr]));
    assert_eq!(code.trim(), "0", "{}", logs(ctr));
    drop(cleanup);
}

struct RemoveImages(Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        for i in &self.0 {
            let _ = podman(&["rmi", "-f", i]).output();
        }
    }
}

fn logs(ctr: &str) -> String {
    let o = podman(&["logs", ctr]).output().expect("podman logs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `/readyz` through the published broker port, verified with the CA pgid generated in the
/// volume (for 127.0.0.1, the address README's `docker run` publishes on): the last status, once
/// 200 or after 60 s.
async fn wait_ready(ctr: &str, port: u16) -> u16 {
    let until = Instant::now() + Duration::from_secs(60);
    let mut status = 0;
    while Instant::now() < until {
        let running = out_ok(podman(&["inspect", "--format", "{{.State.Running}}", ctr]));
        if running.as_deref().map(str::trim) != Ok("true") {
            return status;
        }
        if let Ok(pem) = out_ok(podman(&["exec", ctr, "cat", "/var/lib/pgid/tls/ca.crt"])) {
            let http = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            if let Ok(r) = http
                .get(format!("https://127.0.0.1:{port}/readyz"))
                .send()
                .await
            {
                status = r.status().as_u16();
                if status == 200 {
                    return status;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    status
}
