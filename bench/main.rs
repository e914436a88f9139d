//! pgid benchmark (run with `bench/run`): starts a throwaway PostgreSQL, pgid (`pgid serve`, a
//! separate process) and PgBouncer in session mode when installed, then runs interleaved rounds of
//! pgbench against each and prints TPS, latency, the ratios to direct and to PgBouncer, and each
//! proxy's CPU per statement (user+system time of its process from `/proc/<pid>/stat` over the
//! run, divided by the statements pgbench completed: far steadier than TPS on a shared machine).
//! Then a masked column against the same policy without the mask, and finally idle client
//! connections to pgid for its memory per connection.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use pgid::dev::{demo, postgres_user, DevIssuer, TempPostgres};
use serde_json::json;

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Target {
    name: &'static str,
    port: u16,
    user: String,
    password: String,
    /// The proxy's process, whose CPU time is measured (none for `direct`).
    pid: Option<u32>,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Result {
    tps: f64,
    latency_ms: f64,
    /// Transactions pgbench completed.
    transactions: f64,
}

/// A process's user+system CPU time so far, in µs (all its threads, live and ended).
fn cpu_us(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15: 11 and 12 after the state.
    (ticks(11) + ticks(12)) * 1e6 / hz
}

/// One pgbench run and, for a proxy, its CPU µs per statement over the run.
fn measured(
    t: &Target,
    args: &[&str],
    clients: u32,
    seconds: u32,
    statements: f64,
) -> anyhow::Result<(Result, Option<f64>)> {
    let before = t.pid.map(cpu_us);
    let r = pgbench(t, args, clients, seconds)?;
    let cpu = t
        .pid
        .zip(before)
        .map(|(pid, before)| (cpu_us(pid) - before) / (r.transactions * statements).max(1.0));
    Ok((r, cpu))
}

fn pgbench(t: &Target, args: &[&str], clients: u32, seconds: u32) -> anyhow::Result<Result> {
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &t.port.to_string(),
            "-U",
            &t.user,
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", &t.password)
        .env("PGSSLMODE", "disable")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench against {} failed: {}{}",
            t.name,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let num = |prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l[prefix.len()..].split_whitespace().next()?.parse().ok())
    };
    Ok(Result {
        tps: num("tps = ").context("no tps in pgbench output")?,
        latency_ms: num("latency average = ").unwrap_or(0.0),
        transactions: text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split('/').next()?.trim().parse().ok())
            .context("no transaction count in pgbench output")?,
    })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs by (workload, target): TPS and proxy CPU µs per statement of each round.
#[derive(Default)]
struct Runs(Vec<(String, &'static str, Vec<f64>, Vec<f64>)>);

impl Runs {
    fn add(&mut self, mode: &str, target: &'static str, tps: f64, cpu: Option<f64>) {
        let i = match self
            .0
            .iter()
            .position(|(m, n, _, _)| m == mode && *n == target)
        {
            Some(i) => i,
            None => {
                self.0.push((mode.to_string(), target, vec![], vec![]));
                self.0.len() - 1
            }
        };
        self.0[i].2.push(tps);
        self.0[i].3.extend(cpu);
    }

    /// Median TPS and median CPU µs per statement.
    fn median(&self, mode: &str, target: &str) -> Option<(f64, Option<f64>)> {
        let (_, _, tps, cpu) = self
            .0
            .iter()
            .find(|(m, n, _, _)| m == mode && *n == target)?;
        Some((
            median(tps.clone()),
            (!cpu.is_empty()).then(|| median(cpu.clone())),
        ))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = env_or("BENCH_SECONDS", 10);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let clients = env_or("BENCH_CLIENTS", 8);
    let scale = env_or("BENCH_SCALE", 10);
    let idle = env_or("BENCH_IDLE", 1000);
    let pgid_bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("binary dir")?
        .join("pgid");

    eprintln!("bench: starting PostgreSQL…");
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::start_with(&[("max_connections", "1400"), ("shared_buffers", "256MB")])
    })
    .await??;
    let admin_url = demo::provision(&pg, "app").await?;
    let admin: tokio_postgres::Config = admin_url.parse()?;
    let admin_password =
        String::from_utf8(admin.get_password().context("admin password")?.to_vec())?;
    let init = Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            demo::ADMIN_ROLE,
            "app",
        ])
        .env("PGPASSWORD", &admin_password)
        .output()?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }

    let issuer = DevIssuer::start(0, "pgid", vec![]).await?;
    let state = tempfile::Builder::new().prefix("pgid-bench-").tempdir()?;
    std::fs::create_dir_all(state.path().join("policies"))?;
    std::fs::write(
        state.path().join("policies/bench.toml"),
        "name = \"bench\"\ndatabase = \"app\"\nttl = \"2h\"\nmax_connections = 2000\n[identity]\nsubject = \"bench:pgbench\"\n\
         [[grant]]\nprivileges = [\"SELECT\", \"INSERT\", \"UPDATE\"]\n\
         on = [\"public.pgbench_accounts\", \"public.pgbench_branches\", \"public.pgbench_tellers\", \"public.pgbench_history\"]\n",
    )?;
    // The same reads with a masked column in every result row, and the same policy without
    // the mask.
    for (name, mask) in [
        (
            "masked",
            "[[mask]]\ncolumns = [\"public.pgbench_accounts.filler\"]\nmethod = \"redact\"\n",
        ),
        ("unmasked", ""),
    ] {
        std::fs::write(
            state.path().join(format!("policies/bench-{name}.toml")),
            format!(
                "name = \"bench-{name}\"\ndatabase = \"app\"\nttl = \"2h\"\nmax_connections = 2000\n[identity]\nsubject = \"bench:{name}\"\n\
                 [[grant]]\nprivileges = [\"SELECT\"]\non = [\"public.pgbench_accounts\"]\n{mask}"
            ),
        )?;
    }
    let (broker_port, proxy_port) = (free_port(), free_port());
    std::fs::write(
        state.path().join("pgid.toml"),
        format!(
            "state_dir = \"state\"\npolicies = \"policies\"\n[broker]\nlisten = \"127.0.0.1:{broker_port}\"\n[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\n\
             [[issuers]]\nissuer = \"{}\"\naudiences = [\"pgid\"]\n[[databases]]\nname = \"app\"\nadmin_url = \"{admin_url}\"\n",
            issuer.url()
        ),
    )?;
    let pgid = Killed(
        Command::new(&pgid_bin)
            .args(["serve", "--config"])
            .arg(state.path().join("pgid.toml"))
            .env("PGID_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", pgid_bin.display()))?,
    );
    let ca = state.path().join("state/tls/ca.crt");
    let mut http = None;
    for _ in 0..100 {
        if let Ok(pem) = std::fs::read(&ca) {
            let client = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
                .build()?;
            if client
                .get(format!("https://127.0.0.1:{broker_port}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                http = Some(client);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = http.context("pgid did not start")?;
    let issue = |subject: &str| {
        let token = issuer.mint(&issuer.claims(subject));
        let request = http
            .post(format!("https://127.0.0.1:{broker_port}/v1/credentials"))
            .bearer_auth(token)
            .json(&json!({}));
        async move { anyhow::Ok(request.send().await?.json::<serde_json::Value>().await?) }
    };
    let lease = issue("bench:pgbench").await?;
    let user = lease["username"].as_str().context("no lease")?.to_string();
    let key = pgid::keys::ServerKey::load_or_create(&state.path().join("state/server.key"))
        .map_err(anyhow::Error::msg)?;
    let derived =
        pgid::roles::database_password(&key, lease["lease_id"].as_str().unwrap().parse()?)
            .expose()
            .clone();

    // More pgid instances on the same state, each with its own audit file, measured side by
    // side: `pgid-relay` checks and records nothing (inspect = false), the baseline for what
    // guardrails and audit cost; `pgid-fsync` (audit sync = "always") fsyncs every group commit
    // before forwarding, where the default writes records before forwarding and fsyncs them
    // within 10 ms.
    let relay_port = instance(
        &pgid_bin,
        &state.path().join("pgid.toml"),
        &[
            ("PGID_PROXY_INSPECT", "false"),
            ("PGID_AUDIT_FILE", "audit-relay.jsonl"),
        ],
    )
    .await?;
    let fsync_port = instance(
        &pgid_bin,
        &state.path().join("pgid.toml"),
        &[
            ("PGID_AUDIT_SYNC", "always"),
            ("PGID_AUDIT_FILE", "audit-fsync.jsonl"),
        ],
    )
    .await?;

    let mut targets = vec![
        Target {
            name: "direct",
            port: pg.port,
            user: user.clone(),
            password: derived.clone(),
            pid: None,
        },
        Target {
            name: "pgid",
            port: proxy_port,
            user: user.clone(),
            password: lease["password"].as_str().unwrap().to_string(),
            pid: Some(pgid.0.id()),
        },
        Target {
            name: "pgid-fsync",
            port: fsync_port.1,
            user: user.clone(),
            password: lease["password"].as_str().unwrap().to_string(),
            pid: Some(fsync_port.0 .0.id()),
        },
        Target {
            name: "pgid-relay",
            port: relay_port.1,
            user: user.clone(),
            password: lease["password"].as_str().unwrap().to_string(),
            pid: Some(relay_port.0 .0.id()),
        },
    ];
    let _bouncer = match which("pgbouncer") {
        Some(bin) => {
            let port = free_port();
            let dir = tempfile::Builder::new()
                .prefix("pgid-bench-bouncer-")
                .tempdir()?;
            std::fs::write(
                dir.path().join("userlist.txt"),
                format!("\"{user}\" \"{derived}\"\n"),
            )?;
            std::fs::write(
                dir.path().join("pgbouncer.ini"),
                format!(
                    "[databases]\napp = host=127.0.0.1 port={} dbname=app\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                     auth_type = scram-sha-256\nauth_file = {}\npool_mode = session\nmax_client_conn = 2000\ndefault_pool_size = 100\n\
                     unix_socket_dir =\nlogfile = {}\n",
                    pg.port,
                    dir.path().join("userlist.txt").display(),
                    dir.path().join("pgbouncer.log").display()
                ),
            )?;
            let mut cmd = Command::new(bin);
            cmd.arg(dir.path().join("pgbouncer.ini"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if unsafe { libc::geteuid() } == 0 {
                let (uid, gid) =
                    postgres_user().context("pgbouncer refuses root; no postgres user")?;
                for f in ["", "userlist.txt", "pgbouncer.ini"] {
                    std::os::unix::fs::chown(dir.path().join(f), Some(uid), Some(gid))?;
                }
                cmd.uid(uid).gid(gid);
            }
            let child = Killed(cmd.spawn()?);
            tokio::time::sleep(Duration::from_millis(500)).await;
            targets.push(Target {
                name: "pgbouncer",
                port,
                user: user.clone(),
                password: derived.clone(),
                pid: Some(child.0.id()),
            });
            Some((child, dir))
        }
        None => None,
    };

    let wanted = std::env::var("BENCH_MODES").unwrap_or_default();
    // (mode, pgbench arguments, statements per transaction)
    let modes: Vec<(&str, &[&str], f64)> = [
        ("select-only", &["-S"][..], 1.0),
        // BEGIN, 3 UPDATEs, SELECT, INSERT, END
        ("tpcb-like", &[][..], 7.0),
        ("connect", &["-S", "-C"][..], 1.0),
    ]
    .into_iter()
    .filter(|(m, _, _)| wanted.is_empty() || wanted.split(',').any(|w| w == *m))
    .collect();
    let only = std::env::var("BENCH_TARGETS").unwrap_or_default();
    targets
        .retain(|t| t.name == "direct" || only.is_empty() || only.split(',').any(|w| w == t.name));
    let mut results = Runs::default();
    for round in 1..=rounds {
        for (mode, args, statements) in &modes {
            for t in &targets {
                // Each run starts with no dirty pages left by the one before (audit files).
                let _ = Command::new("sync").status();
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (r, cpu) = measured(t, args, clients, seconds, *statements)?;
                eprintln!(
                    "round {round} {mode:12} {:10} tps {:10.1}  latency {:7.3} ms  cpu {} µs/statement",
                    t.name,
                    r.tps,
                    r.latency_ms,
                    cpu.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into())
                );
                results.add(mode, t.name, r.tps, cpu);
            }
        }
    }
    println!("\npgbench, {clients} clients, {seconds} s per run, {rounds} interleaved rounds, scale {scale} (medians)");
    println!(
        "{:12} {:10} {:>10} {:>16}",
        "workload", "target", "tps", "proxy cpu µs/st"
    );
    for (mode, _, _) in &modes {
        for t in &targets {
            if let Some((tps, cpu)) = results.median(mode, t.name) {
                let cpu = cpu.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into());
                println!("{mode:12} {:10} {tps:>10.1} {cpu:>16}", t.name);
            }
        }
        let direct = results.median(mode, "direct").map(|m| m.0);
        let bouncer = results.median(mode, "pgbouncer");
        for t in targets.iter().filter(|t| t.pid.is_some()) {
            let Some((tps, cpu)) = results.median(mode, t.name) else {
                continue;
            };
            let ratio = |other: Option<f64>| {
                other
                    .map(|o| format!("{:.2}", tps / o))
                    .unwrap_or_else(|| "n/a".into())
            };
            let cpu_ratio = cpu
                .zip(bouncer.and_then(|b| b.1))
                .map(|(c, b)| format!("{:.2}", c / b))
                .unwrap_or_else(|| "n/a".into());
            println!(
                "{mode:12} {:10} tps/direct {}  tps/pgbouncer {}  cpu/pgbouncer {cpu_ratio}",
                t.name,
                ratio(direct),
                ratio(bouncer.map(|b| b.0)),
            );
        }
    }

    // Masking: the same lookups through the same pgid by two leases of the same policy, one
    // whose policy masks `filler` and one whose policy does not (one row per statement, and 100
    // rows to see the cost per row).
    let lease_of = |v: &serde_json::Value| -> anyhow::Result<(String, String)> {
        Ok((
            v["username"].as_str().context("no lease")?.to_string(),
            v["password"].as_str().context("no lease")?.to_string(),
        ))
    };
    let (masked_user, masked_password) = lease_of(&issue("bench:masked").await?)?;
    let (plain_user, plain_password) = lease_of(&issue("bench:unmasked").await?)?;
    let mask_targets = [
        Target {
            name: "unmasked",
            port: proxy_port,
            user: plain_user,
            password: plain_password,
            pid: Some(pgid.0.id()),
        },
        Target {
            name: "masked",
            port: proxy_port,
            user: masked_user,
            password: masked_password,
            pid: Some(pgid.0.id()),
        },
    ];
    let scripts = [
        (
            "1 row",
            1.0,
            format!("\\set aid random(1, {})\nSELECT aid, abalance, filler FROM pgbench_accounts WHERE aid = :aid;\n", 100_000 * scale),
        ),
        (
            "100 rows",
            100.0,
            format!("\\set aid random(1, {})\nSELECT aid, abalance, filler FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 99;\n", 100_000 * scale - 100),
        ),
    ];
    let mut mask_results = Runs::default();
    for (label, _, text) in &scripts {
        let file = state
            .path()
            .join(format!("{}.sql", label.replace(' ', "-")));
        std::fs::write(&file, text)?;
        let path = file.display().to_string();
        for _ in 0..rounds {
            for t in &mask_targets {
                let _ = Command::new("sync").status();
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (r, cpu) = measured(t, &["-f", &path], clients, seconds, 1.0)?;
                eprintln!(
                    "masking {label:8} {:10} tps {:10.1}  cpu {:.1} µs/statement",
                    t.name,
                    r.tps,
                    cpu.unwrap_or(0.0)
                );
                mask_results.add(label, t.name, r.tps, cpu);
            }
        }
    }
    println!("\nmasking (same pgid, same policy; `redact` on pgbench_accounts.filler vs no mask)");
    for (label, rows, _) in &scripts {
        let (Some((plain, plain_cpu)), Some((with_mask, mask_cpu))) = (
            mask_results.median(label, "unmasked"),
            mask_results.median(label, "masked"),
        ) else {
            continue;
        };
        let (plain_cpu, mask_cpu) = (plain_cpu.unwrap_or(0.0), mask_cpu.unwrap_or(0.0));
        println!(
            "{label:8} unmasked {plain:10.1} tps {plain_cpu:6.1} µs/st  masked {with_mask:10.1} tps {mask_cpu:6.1} µs/st  \
             tps ratio {:.2}  cpu ratio {:.2}  cpu {:.2} µs per masked row",
            with_mask / plain,
            mask_cpu / plain_cpu.max(0.001),
            (mask_cpu - plain_cpu) / rows,
        );
    }

    // The statement analysis cache of the main instance over the whole run.
    let metrics = http
        .get(format!("https://127.0.0.1:{broker_port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (hits, misses) = (
        counter("pgid_sql_cache_hits_total "),
        counter("pgid_sql_cache_misses_total "),
    );
    println!(
        "\nparse cache (pgid): {hits} hits, {misses} misses, hit rate {:.4}",
        hits / (hits + misses).max(1.0)
    );
    let _keep = (&relay_port.0, &fsync_port.0);

    // Memory per idle client connection.
    let pid = pgid.0.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let dsn = lease["dsn"].as_str().unwrap().to_string();
    let mut conns = Vec::new();
    for _ in 0..idle {
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        conns.push(c);
    }
    for c in conns.iter().take(10) {
        c.simple_query("SELECT 1").await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    println!(
        "\nmemory: pgid RSS {before} KiB → {after} KiB with {idle} idle client connections: {:.1} KiB per connection",
        (after.saturating_sub(before)) as f64 / idle as f64
    );
    drop(conns);
    Ok(())
}

/// Starts another `pgid serve` on the same configuration with `env` overrides and fresh ports;
/// returns it (killed on drop) and its proxy port once that accepts connections.
async fn instance(
    bin: &Path,
    config: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<(Killed, u16)> {
    let (broker, proxy) = (free_port(), free_port());
    let child = Killed(
        Command::new(bin)
            .args(["serve", "--config"])
            .arg(config)
            .env("PGID_LOG", "warn")
            .env("PGID_BROKER_LISTEN", format!("127.0.0.1:{broker}"))
            .env("PGID_PROXY_LISTEN", format!("127.0.0.1:{proxy}"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()?,
    );
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", proxy))
            .await
            .is_ok()
        {
            return Ok((child, proxy));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("pgid instance with {env:?} did not start")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.exists())
    })
}
