//! Builds pgid's services once from a validated [`Config`] and runs them: policies loaded and
//! reconciled, state migrated, leases reconciled, then the broker and the reaper.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{AuditLog, AuditSetup};
use crate::broker::{self, BrokerState, ProxyAddress};
use crate::config::Config;
use crate::database::{self, Databases};
use crate::identity::Verifier;
use crate::keys::ServerKey;
use crate::metrics::Metrics;
use crate::policy::{self, PolicySet};
use crate::proxy::{self, Proxy};
use crate::roles::{self, LeaseSetup, LeaseStatus, LeaseWatch, Leases, Notifier, Reaper};
use crate::store::{self, EventKey, InstanceLock, Store, LEASE_EVENTS_CHANNEL};
use crate::tls::TlsMaterial;

/// Threads that parse statements (each with a deep stack); results are cached by text.
const ANALYSIS_THREADS: usize = 2;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

fn err<E: std::error::Error + 'static>(context: &str) -> impl FnOnce(E) -> StartError + '_ {
    move |e| StartError(format!("{context}: {}", crate::errors::chain(&e)))
}

/// Loads and checks the policy directory against the configured databases.
pub fn load_policies(config: &Config) -> Result<PolicySet, StartError> {
    let set = policy::load_dir(&config.policies).map_err(|errors| {
        StartError(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let known: Vec<&str> = config.databases.iter().map(|d| d.name.as_str()).collect();
    let mut problems = set.check_databases(&known);
    problems.extend(set.check_webhooks(&config.approvals.webhook_names()));
    if !problems.is_empty() {
        return Err(StartError(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }
    Ok(set)
}

/// The state database: its own URL (TLS when it says sslmode=require, like libpq), or the first
/// database's, with that database's TLS. Its pool, connection settings and TLS.
pub fn state_database(
    config: &Config,
    databases: &Databases,
) -> Result<
    (
        deadpool_postgres::Pool,
        tokio_postgres::Config,
        Option<Arc<rustls::ClientConfig>>,
    ),
    StartError,
> {
    let state_tls = match &config.state_url {
        Some(_) => {
            crate::postgres_tls::client_config(config.state_tls, config.state_ca_file.as_deref())
                .map_err(|e| StartError(format!("state_url: TLS: {e}")))?
        }
        None => databases
            .get(&config.databases[0].name)
            .and_then(|db| db.tls.clone()),
    };
    let (pool, pg) = match &config.state_url {
        Some(url) => database::pool(url.expose(), 8, state_tls.clone())
            .map_err(|e| StartError(format!("state_url: {e}")))?,
        None => {
            let first = &config.databases[0];
            database::pool(first.admin_url.expose(), first.pool_size, state_tls.clone())
                .map_err(|e| StartError(format!("database {}: {e}", first.name)))?
        }
    };
    Ok((pool, pg, state_tls))
}

/// Brings every policy's group role in line with its file (and the lease marker role into being).
/// All or nothing: every name the policies use is checked in their database first, each
/// database's changes run in one transaction, and the transactions commit only once every
/// database has applied its own; a problem anywhere (all are reported) changes no grant.
async fn reconcile_groups(
    databases: &Databases,
    policies: &PolicySet,
    deployment: &roles::Deployment,
) -> Result<(), StartError> {
    let mut clients = Vec::new();
    for db in databases.iter() {
        let c = db
            .pool
            .get()
            .await
            .map_err(err(&format!("connecting to database {}", db.name)))?;
        roles::ensure_marker_roles(&**c, deployment)
            .await
            .map_err(err(&format!(
                "database {}: creating the marker roles of deployment {}",
                db.name,
                deployment.name()
            )))?;
        roles::hba::check(&c, &db.name, &deployment.lease_marker()).await;
        clients.push((db, c));
    }
    // In the order of the databases' names, as every instance does (no deadlock between two).
    let mut staged = Vec::new();
    let mut problems = Vec::new();
    for (db, c) in clients.iter_mut() {
        let mine: Vec<&crate::policy::Policy> = policies
            .iter()
            .filter(|p| p.database == db.name)
            .map(|p| &**p)
            .collect();
        match roles::stage_policies(c, &db.name, &mine, &db.dbname, deployment).await {
            Ok(s) => staged.push(s),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !problems.is_empty() {
        return Err(StartError(problems.join("\n")));
    }
    for s in staged {
        s.commit().await.map_err(|e| StartError(e.to_string()))?;
    }
    Ok(())
}

/// Drops this deployment's group roles that no policy names any more (policy files removed
/// while pgid was down). Problems are logged: a group role left behind grants nothing to any
/// live lease (their leases were revoked first) and is tried again at the next start.
async fn drop_removed_groups(
    databases: &Databases,
    policies: &PolicySet,
    deployment: &roles::Deployment,
) {
    let keep: std::collections::BTreeSet<String> = policies
        .iter()
        .map(|p| deployment.group_role(&p.name))
        .collect();
    let mut left = std::collections::BTreeMap::new();
    for db in databases.iter() {
        let outcome = match db.pool.get().await {
            Ok(mut c) => roles::drop_orphan_groups(&mut c, &db.name, &keep, deployment)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(crate::database::pool_message(&e)),
        };
        match outcome {
            Ok(roles) => {
                for (role, removal) in roles {
                    match removal {
                        roles::GroupRemoval::Dropped => {
                            left.remove(&role);
                            tracing::info!(role = %role, database = %db.name, "dropped the group role of a removed policy");
                        }
                        other => {
                            left.entry(role).or_insert(other);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(database = %db.name, error = %e, "cannot drop the group roles of removed policies")
            }
        }
    }
    for (role, why) in left {
        let why = match why {
            roles::GroupRemoval::OwnsObjects => "it owns objects",
            _ => "it holds privileges in a database pgid does not manage",
        };
        tracing::warn!(role = %role, "group role of a removed policy left in place: {why}");
    }
}

/// The services, built and reconciled, not yet serving.
pub struct App {
    pub config: Config,
    pub leases: Arc<Leases>,
    pub policies: Arc<RwLock<Arc<PolicySet>>>,
    /// Bumped after each reload swapped `policies`.
    pub policy_generation: Arc<std::sync::atomic::AtomicU64>,
    pub verifier: Arc<Verifier>,
    pub tls: TlsMaterial,
    pub key: ServerKey,
    /// Statement analysis for the proxy (its cache counters are in /metrics).
    pub analyzer: Arc<crate::sql::Analyzer>,
    /// Approval requests in the state database.
    pub approvals: Arc<crate::store::Approvals>,
    /// Statements waiting here for a decision, woken by NOTIFY from any instance.
    pub approval_waits: Arc<crate::store::ApprovalWaits>,
    /// The approval page's sign-in and cookie keys.
    pub review: Arc<crate::broker::review::ReviewPage>,
    pub instance_id: i32,
    /// Whether the instance lock and the event listener are up (`/readyz`).
    pub instance: Arc<crate::store::InstanceStatus>,
    /// Cancel keys of this instance's sessions; cancels for other instances' keys are routed.
    pub cancels: Arc<proxy::cancel::CancelMap>,
    /// Held while policies reload (one reload at a time).
    reloading: tokio::sync::Mutex<()>,
    /// The policy files as last read (a reconnection reloads only when they changed).
    policy_digest: std::sync::Mutex<[u8; 32]>,
    /// Reloads asked for by other instances (or by a reconnection); taken by `start`.
    policy_nudges: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<PolicyNudge>>>,
    state_pool: deadpool_postgres::Pool,
    events: EventKey,
    _instance: InstanceLock,
}

/// Why this instance reads its policy files again without a SIGHUP of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyNudge {
    /// Instance `origin` reloaded its policies (a sealed announcement).
    Announced(i32),
    /// The event listener was down: a reload announced meanwhile was missed.
    Reconnected,
}

/// Where another instance's events go.
struct EventTargets {
    store: Store,
    watch: Arc<LeaseWatch>,
    waits: Arc<crate::store::ApprovalWaits>,
    cancels: Arc<proxy::cancel::CancelMap>,
    policies: tokio::sync::mpsc::UnboundedSender<PolicyNudge>,
}

/// What this instance does with another instance's event: a payload not sealed with the
/// deployment's key is dropped (anyone who can connect to the state database can NOTIFY); a
/// sealed one is a hint — a lease event makes this instance read the lease's row and publish
/// what the row says, an approval event wakes what waits on the request, which reads it, a
/// policy event makes it read its own policy files (never policy text from the channel), a
/// cancel event is acted on if it names one of this instance's sessions.
fn instance_events(key: EventKey, t: Arc<EventTargets>) -> crate::store::OnEvent {
    Arc::new(move |channel, payload| {
        let Some(body) = key.open(channel, payload) else {
            tracing::warn!(channel, "an event without pgid's seal was dropped");
            return;
        };
        match channel {
            crate::store::APPROVAL_EVENTS_CHANNEL => t.waits.wake(body),
            crate::store::CANCEL_EVENTS_CHANNEL => t.cancels.on_event(body),
            crate::store::POLICY_EVENTS_CHANNEL => {
                if let Some(origin) = body
                    .strip_prefix("reloaded ")
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|o| o.parse().ok())
                {
                    let _ = t.policies.send(PolicyNudge::Announced(origin));
                }
            }
            _ => {
                let Some((id, _)) = LeaseStatus::decode(body) else {
                    return;
                };
                let (store, watch) = (t.store.clone(), t.watch.clone());
                tokio::spawn(async move { refresh_lease(&store, &watch, id).await });
            }
        }
    })
}

/// After the listener was down: what other instances announced meanwhile is read from the
/// state database — every lease with sessions here, every waiting approval — and the policy
/// files are checked for a reload this instance missed.
fn instance_reconnected(t: Arc<EventTargets>) -> crate::store::OnReconnect {
    Arc::new(move || {
        t.waits.wake_all();
        let _ = t.policies.send(PolicyNudge::Reconnected);
        let t = t.clone();
        tokio::spawn(async move {
            for id in t.watch.watched_ids() {
                refresh_lease(&t.store, &t.watch, id).await;
            }
        });
    })
}

/// Reads a lease's row and tells its sessions here what it says.
async fn refresh_lease(store: &Store, watch: &LeaseWatch, id: uuid::Uuid) {
    match store.get(id).await {
        Ok(Some(row)) => {
            if let Some(status) = LeaseStatus::of(&row, chrono::Utc::now()) {
                watch.publish(id, status);
            }
        }
        Ok(None) => watch.publish(id, LeaseStatus::Ended(crate::roles::EndReason::Revoked)),
        Err(e) => {
            tracing::warn!(lease = %id, error = %crate::errors::Chain(&e), "cannot read a lease another instance changed")
        }
    }
}

/// SHA-256 over the policy directory's `*.toml` files (names and contents, in name order): tells
/// whether the files changed since they were last read.
fn policy_files_digest(dir: &std::path::Path) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(std::fs::read(&f).unwrap_or_default());
        h.update([0]);
    }
    h.finalize().into()
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartError> {
        let policy_digest = policy_files_digest(&config.policies);
        let policies = load_policies(&config)?;
        let databases =
            Databases::connect(&config.databases).map_err(|e| StartError(e.to_string()))?;
        let (state_pool, state_pg, state_tls) = state_database(&config, &databases)?;
        let key = ServerKey::load_or_create(&config.server_key_file).map_err(StartError)?;
        {
            let mut c = state_pool
                .get()
                .await
                .map_err(err("connecting to the state database"))?;
            let ran = store::migrate(&mut c)
                .await
                .map_err(err("migrating the pgid schema"))?;
            if !ran.is_empty() {
                tracing::info!(versions = ?ran, "applied migrations");
            }
            store::check_server_key(&c, &key).await.map_err(|e| {
                StartError(format!(
                    "{}: {}",
                    config.server_key_file.display(),
                    crate::errors::chain(&e)
                ))
            })?;
        }
        let watch = Arc::new(LeaseWatch::default());
        let approval_waits = Arc::new(crate::store::ApprovalWaits::default());
        let events = EventKey::new(&key);
        let cancels = Arc::new(proxy::cancel::CancelMap::default());
        let (nudge, policy_nudges) = tokio::sync::mpsc::unbounded_channel();
        let instance = {
            let targets = Arc::new(EventTargets {
                store: Store::new(state_pool.clone()),
                watch: watch.clone(),
                waits: approval_waits.clone(),
                cancels: cancels.clone(),
                policies: nudge,
            });
            InstanceLock::acquire(
                &state_pg,
                state_tls.clone(),
                instance_events(events.clone(), targets.clone()),
                instance_reconnected(targets),
            )
            .await
            .map_err(err("taking the instance lock"))?
        };
        cancels.route_through(proxy::cancel_relay::CancelRelay::new(
            state_pool.clone(),
            &key,
            instance.id,
        ));

        reconcile_groups(&databases, &policies, &config.deployment).await?;

        let metrics = Arc::new(Metrics::default());
        let state_url = config
            .state_url
            .clone()
            .unwrap_or_else(|| config.databases[0].admin_url.clone());
        let audit = AuditLog::open(AuditSetup {
            file: config.audit.file.clone(),
            sync: config.audit.sync,
            rotate_size: config.audit.rotate_size,
            table: config
                .audit
                .table
                .then_some((state_url, instance.id, state_tls.clone())),
            latency: Some(metrics.audit_write_seconds.clone()),
        })
        .map_err(|e| StartError(e.to_string()))?;
        if !config.proxy.inspect {
            tracing::warn!("[proxy] inspect = false: statements are neither checked nor recorded");
        }
        {
            // A window of refusals that were not recorded one by one gets its summary record
            // even when no further refusal comes to write it.
            let audit = audit.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    if let Err(e) = audit.flush_refusals().await {
                        tracing::error!(error = %crate::errors::Chain(&e), "cannot write a refusal summary");
                    }
                }
            });
        }
        let notify_pool = state_pool.clone();
        let notify_key = events.clone();
        let notifier: Notifier = Arc::new(move |id, status| {
            let pool = notify_pool.clone();
            let payload = notify_key.seal(LEASE_EVENTS_CHANNEL, &LeaseStatus::encode(id, status));
            Box::pin(async move {
                let sent = match pool.get().await {
                    Ok(c) => c
                        .execute(
                            "SELECT pg_notify($1, $2)",
                            &[&LEASE_EVENTS_CHANNEL, &payload],
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| crate::database::pg_message(&e)),
                    Err(e) => Err(crate::database::pool_message(&e)),
                };
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "cannot tell other instances about a lease change");
                }
            })
        });
        let leases = Arc::new(
            Leases::new(LeaseSetup {
                store: Store::new(state_pool.clone()),
                databases,
                key: key.clone(),
                grace: config.leases.grace,
                instance_id: instance.id,
                metrics: metrics.clone(),
                watch,
                audit,
                deployment: config.deployment.clone(),
                limits: config.leases.limits,
            })
            .with_notifier(notifier),
        );
        let review_sessions = Arc::new(
            crate::store::ReviewSessions::new(state_pool.clone()).announcing(events.clone()),
        );
        let approvals = Arc::new(
            crate::store::Approvals::new(state_pool.clone())
                .with_limits(config.approvals.pending)
                .announcing(events.clone()),
        );
        let report = roles::reap_once(&leases).await;
        tracing::info!(?report, "startup reconciliation");
        // Leases of policies removed while pgid was down end now: their rules are unknown.
        match leases.revoke_orphaned(&policies).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    leases = n,
                    "revoked the leases of policies that no longer exist"
                )
            }
            Err(e) => {
                tracing::error!(error = %crate::errors::Chain(&e), "cannot revoke the leases of removed policies")
            }
        }
        // Their group roles go too, once their leases are gone.
        drop_removed_groups(leases.databases(), &policies, &config.deployment).await;

        let verifier =
            Arc::new(Verifier::new(&config.issuers).map_err(|e| StartError(e.to_string()))?);
        let hosts = vec![
            config.proxy.public_host.clone(),
            config.broker.listen.ip().to_string(),
        ];
        let tls = TlsMaterial::resolve(&config.state_dir, config.broker.tls.as_ref(), &hosts)
            .map_err(|e| StartError(e.to_string()))?;
        let review = Arc::new(crate::broker::review::ReviewPage {
            login: match &config.approvals.login {
                Some(l) => Some(
                    crate::broker::review::Login::new(l.clone())
                        .map_err(|e| StartError(format!("approvals.login: {e}")))?,
                ),
                None => None,
            },
            sealer: crate::broker::review::Sealer::new(key.derive(b"pgid approval page cookies")),
            sessions: review_sessions.clone(),
            feed: Arc::new(crate::broker::review::Feed::new(
                crate::broker::review::FeedSetup {
                    approvals: approvals.clone(),
                    sessions: review_sessions,
                    metrics,
                    max_streams: config.approvals.max_streams,
                    max_streams_per_session: config.approvals.max_streams_per_session,
                },
            )),
        });
        Ok(App {
            config,
            leases,
            policies: Arc::new(RwLock::new(Arc::new(policies))),
            policy_generation: Default::default(),
            verifier,
            tls,
            key,
            analyzer: crate::sql::Analyzer::start(ANALYSIS_THREADS)
                .map_err(|e| StartError(format!("starting SQL analysis: {e}")))?,
            approvals,
            approval_waits,
            review,
            reloading: tokio::sync::Mutex::new(()),
            policy_digest: std::sync::Mutex::new(policy_digest),
            policy_nudges: std::sync::Mutex::new(Some(policy_nudges)),
            instance_id: instance.id,
            instance: instance.status.clone(),
            cancels,
            state_pool,
            events,
            _instance: instance,
        })
    }

    pub fn broker_state(&self, proxy: ProxyAddress, shutdown: CancellationToken) -> BrokerState {
        BrokerState {
            shutdown,
            analyzer: Some(self.analyzer.clone()),
            approvals: self.approvals.clone(),
            review: self.review.clone(),
            leases: self.leases.clone(),
            policies: self.policies.clone(),
            verifier: self.verifier.clone(),
            admins: Arc::new(self.config.broker.admins.clone()),
            instance: self.instance.clone(),
            proxy,
        }
    }

    /// The proxy's shared state (TLS from the same certificate as the broker); `broker` is the
    /// broker's bound address (for review links).
    pub fn proxy(&self, broker: SocketAddr) -> Result<Proxy, StartError> {
        // Links in notices and webhooks: the configured review URL, else this broker's page
        // (when it has one) at the host agents already reach pgid by.
        let review_url = self.config.approvals.review_url.clone().or_else(|| {
            self.review.login.as_ref().map(|_| {
                format!(
                    "https://{}:{}/approvals",
                    self.config.proxy.public_host,
                    broker.port()
                )
            })
        });
        Ok(Proxy {
            leases: self.leases.clone(),
            verifier: self.verifier.clone(),
            policies: self.policies.clone(),
            policy_generation: self.policy_generation.clone(),
            tls: Some(
                self.tls
                    .server_config(&[])
                    .map_err(|e| StartError(e.to_string()))?,
            ),
            tls_end_point: self.tls.server_end_point(),
            settings: self.config.proxy.clone(),
            cancels: self.cancels.clone(),
            pool: proxy::pool::Pool::new(
                self.config.proxy.pool_idle_timeout,
                self.leases.metrics().proxy.pool_idle.clone(),
            ),
            salts: Default::default(),
            token_leases: proxy::token_leases::TokenLeases::new(
                self.leases.key(),
                self.config.proxy.token_lease_cache,
            ),
            mask_catalog: Default::default(),
            approvals: self.approvals.clone(),
            approval_waits: self.approval_waits.clone(),
            approval_notifier: crate::approval::notify::Notifier::new(
                self.config.approvals.webhooks.clone(),
                review_url,
            ),
            instance_id: self.instance_id,
            analyzer: self.analyzer.clone(),
        })
    }

    /// Binds the configured addresses (port 0 picks a free port) and starts serving.
    pub async fn start(self) -> Result<Running, StartError> {
        descriptors(&self.config);
        let proxy_listener = TcpListener::bind(self.config.proxy.listen)
            .await
            .map_err(err(&format!(
                "binding proxy address {}",
                self.config.proxy.listen
            )))?;
        let proxy_addr = proxy_listener.local_addr().map_err(err("proxy address"))?;
        let broker_listener = TcpListener::bind(self.config.broker.listen)
            .await
            .map_err(err(&format!(
                "binding broker address {}",
                self.config.broker.listen
            )))?;
        let broker_addr = broker_listener
            .local_addr()
            .map_err(err("broker address"))?;
        let public = ProxyAddress {
            host: self.config.proxy.public_host.clone(),
            port: self.config.proxy.public_port.unwrap_or(proxy_addr.port()),
            ca_cert: self
                .tls
                .ca
                .as_ref()
                .and_then(|ca| std::fs::read_to_string(ca).ok()),
        };
        let cancel = CancellationToken::new();
        let router = broker::router(self.broker_state(public, cancel.clone()));
        let tls = self
            .tls
            .server_config(&[b"http/1.1"])
            .map_err(|e| StartError(e.to_string()))?;
        let proxy = Arc::new(self.proxy(broker_addr)?);
        let tasks = TaskTracker::new();
        tasks.spawn(broker::serve_tls(
            broker_listener,
            tls,
            router,
            cancel.clone(),
            broker::ConnectionCap {
                max: self.config.broker.max_connections,
                header_timeout: self.config.broker.header_timeout,
                body_timeout: self.config.broker.body_timeout,
                metrics: self.leases.metrics().clone(),
            },
        ));
        if self.review.login.is_some() {
            tasks.spawn(
                self.review
                    .feed
                    .clone()
                    .run(self.approval_waits.changes(), cancel.clone()),
            );
        }
        tasks.spawn(proxy::serve(proxy_listener, proxy.clone(), cancel.clone()));
        tasks.spawn({
            let r = Reaper::spawn(
                self.leases.clone(),
                self.config.leases.reaper_interval,
                cancel.clone(),
            );
            async move {
                let _ = r.await;
            }
        });
        let nudges = self.policy_nudges.lock().unwrap().take();
        let app = Arc::new(self);
        if let Some(nudges) = nudges {
            tasks.spawn(follow_reloads(
                app.clone(),
                proxy.clone(),
                nudges,
                cancel.clone(),
            ));
        }
        tasks.close();
        tracing::info!(broker = %broker_addr, proxy = %proxy_addr, "pgid is serving");
        Ok(Running {
            broker_addr,
            proxy_addr,
            cancel,
            tasks,
            app,
            proxy,
        })
    }
}

/// Descriptors pgid may hold: the soft limit raised to the hard one (sessions take two sockets
/// each), with a warning when that still leaves the proxy little beyond the broker's share.
fn descriptors(config: &Config) {
    match crate::net::raise_open_files_limit() {
        Ok((soft, hard)) => {
            tracing::info!(soft, hard, "open file limit");
            let broker = config.broker.max_connections as u64;
            if soft < broker * 4 {
                tracing::warn!(
                    limit = soft,
                    broker_max_connections = broker,
                    "the open file limit leaves the proxy little room beside the broker's \
                     connections; raise the hard limit (LimitNOFILE=) or lower \
                     [broker] max_connections"
                );
            }
        }
        Err(e) => {
            tracing::warn!(error = %crate::errors::Chain(&e), "cannot raise the open file limit")
        }
    }
}

/// A started pgid: its addresses and the handle that stops it.
pub struct Running {
    pub broker_addr: SocketAddr,
    pub proxy_addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub cancel: CancellationToken,
    tasks: TaskTracker,
    pub app: Arc<App>,
}

impl Running {
    /// Stops accepting, lets in-flight requests and sessions finish (bounded by the drain
    /// timeout), stops the reaper.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.wait().await;
    }

    /// Reads the policy files again (SIGHUP). All or nothing: a policy that does not check, or a
    /// group role that cannot be reconciled, leaves the running policies as they were. Otherwise
    /// group roles follow the files, new leases and each live session's next statement follow
    /// the new rules, and a removed policy's leases are revoked and its group role dropped.
    pub async fn reload(&self) -> Result<String, String> {
        let summary = reload(&self.app, &self.proxy).await?;
        announce_reload(&self.app).await;
        Ok(summary)
    }
}

/// Tells the other instances that this one reloaded its policies: each reads its own files
/// (the announcement carries no policy text; a replayed one only makes them read again).
async fn announce_reload(app: &App) {
    let nonce: u64 = rand::random();
    let payload = app.events.seal(
        crate::store::POLICY_EVENTS_CHANNEL,
        &format!("reloaded {} {nonce:016x}", app.instance_id),
    );
    let sent = match app.state_pool.get().await {
        Ok(c) => c
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&crate::store::POLICY_EVENTS_CHANNEL, &payload],
            )
            .await
            .map(|_| ())
            .map_err(|e| crate::database::pg_message(&e)),
        Err(e) => Err(crate::database::pool_message(&e)),
    };
    if let Err(e) = sent {
        tracing::error!(error = %e, "cannot tell the other instances about the policy reload; reload them by hand (SIGHUP)");
    }
}

/// Reloads this instance's own policy files when another instance announced a reload, or after
/// the listener was down if the files changed meanwhile. Never announces: no echo between
/// instances.
async fn follow_reloads(
    app: Arc<App>,
    proxy: Arc<Proxy>,
    mut nudges: tokio::sync::mpsc::UnboundedReceiver<PolicyNudge>,
    stop: CancellationToken,
) {
    loop {
        let nudge = tokio::select! {
            _ = stop.cancelled() => return,
            n = nudges.recv() => match n { Some(n) => n, None => return },
        };
        match nudge {
            PolicyNudge::Announced(origin) if origin == app.instance_id => continue,
            PolicyNudge::Reconnected
                if policy_files_digest(&app.config.policies)
                    == *app.policy_digest.lock().unwrap() =>
            {
                continue
            }
            _ => {}
        }
        match reload(&app, &proxy).await {
            Ok(summary) => {
                tracing::info!(?nudge, %summary, "policies reloaded after another instance's reload")
            }
            Err(e) => tracing::error!(
                ?nudge,
                error = %e,
                "policies NOT reloaded after another instance's reload (the running ones stay)"
            ),
        }
    }
}

/// Reads the policy files again (see [`Running::reload`]).
async fn reload(app: &App, proxy: &Proxy) -> Result<String, String> {
    let _one_at_a_time = app.reloading.lock().await;
    let digest = policy_files_digest(&app.config.policies);
    let new = load_policies(&app.config).map_err(|e| e.0)?;
    reconcile_groups(app.leases.databases(), &new, &app.config.deployment)
        .await
        .map_err(|e| e.0)?;
    let old = app.policies.read().unwrap().clone();
    let removed: Vec<Arc<crate::policy::Policy>> = old
        .iter()
        .filter(|p| new.get(&p.name).is_none())
        .cloned()
        .collect();
    let added: Vec<String> = new
        .iter()
        .filter(|p| old.get(&p.name).is_none())
        .map(|p| p.name.clone())
        .collect();
    let count = new.iter().count();
    let new = Arc::new(new);
    *app.policies.write().unwrap() = new.clone();
    app.policy_generation
        .fetch_add(1, std::sync::atomic::Ordering::Release);
    *app.policy_digest.lock().unwrap() = digest;
    proxy.mask_catalog.clear();
    let mut problems = Vec::new();
    // Their leases end first (sessions closed, roles dropped), then their group roles go.
    match app.leases.revoke_orphaned(&new).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(leases = n, "revoked the leases of removed policies"),
        Err(e) => problems.push(format!("revoking the leases of removed policies: {e}")),
    }
    for p in &removed {
        let Some(db) = app.leases.databases().get(&p.database) else {
            continue;
        };
        let dropped = match db.pool.get().await {
            Ok(mut c) => roles::drop_group_role(&mut c, p, &db.dbname, &app.config.deployment)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(crate::database::pool_message(&e)),
        };
        match dropped {
            Ok(roles::GroupRemoval::OwnsObjects) => problems.push(format!(
                "group role {} owns objects; left in place",
                app.config.deployment.group_role(&p.name)
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!(
                "dropping group role {}: {e}",
                app.config.deployment.group_role(&p.name)
            )),
        }
    }
    let mut summary = format!("{count} policies");
    if !added.is_empty() {
        summary.push_str(&format!("; added {}", added.join(", ")));
    }
    if !removed.is_empty() {
        let names: Vec<&str> = removed.iter().map(|p| p.name.as_str()).collect();
        summary.push_str(&format!("; removed {}", names.join(", ")));
    }
    if !problems.is_empty() {
        summary.push_str(&format!("; problems: {}", problems.join("; ")));
    }
    let event =
        crate::audit::Event::new(crate::audit::Kind::PolicyReloaded).reason(summary.clone());
    if let Err(e) = app.leases.audit().record(&event).await {
        tracing::error!(error = %crate::errors::Chain(&e), "cannot audit a policy reload");
    }
    tracing::info!(%summary, "policies reloaded");
    Ok(summary)
}
