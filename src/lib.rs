//! # pgid: non-human identity for PostgreSQL
//!
//! Every agent, job or script gets its own short-lived, least-privilege Postgres identity:
//!
//! ```text
//!  agent ──(1) OIDC JWT──▶ broker (HTTPS) ──(2) CREATE ROLE … VALID UNTIL──▶ Postgres
//!    │                        │  returns DSN → proxy                               ▲
//!    └──(3) any Postgres client ──▶ proxy (pg wire) ──(4) logs in as the role ─────┘
//! ```
//!
//! 1. `identity` verifies the token against an explicitly trusted issuer's keys.
//! 2. `policy` picks the one policy whose `[identity]` matches; `roles` issues a lease: a login
//!    role in the policy's group role, `VALID UNTIL` its expiry, with a database password derived
//!    from the server key that the agent never sees. The agent gets a client secret instead.
//! 3. The agent connects to the [`proxy`] with that secret; 4. the proxy logs in upstream as the
//!    role, relays the session, and ends it when the lease ends. On the way, every statement is
//!    analysed ([`sql`]), judged ([`guard`]), its decision made durable in the [`audit`] chain
//!    before it is forwarded, its outcome recorded after; results are masked ([`mask`]) where
//!    the policy says so. Every credential action and session is recorded too.
//!
//! ## Layout
//! Pure core, no I/O: [`policy`], [`units`], [`sql`] (the only user of pg_query), [`guard`],
//! [`mask`], [`html`], [`encoding`] (client bytes read as the server reads them),
//! [`roles::ddl`], [`audit::chain`], [`audit::statement`], [`proxy::wire`], [`proxy::scram`],
//! [`proxy::inspect`] (the session state machine: what the server has, what awaits an answer).
//! Services: [`identity`] (JWKS fetching and caching for a slow issuer, verification),
//! [`roles`] (leases, reconcile, reaper), [`store`] (the `pgid` schema), [`database`] (admin
//! pools), [`audit`] (the hash-chained log), [`keys`], [`tls`], [`metrics`].
//! Edges: [`broker`] (HTTP API), [`proxy`] (wire protocol), [`cli`]; [`app`] wires services together.
//! [`dev`] runs a throwaway Postgres and a development issuer for `pgid dev` and the tests.

pub mod app;
pub mod approval;
pub mod audit;
pub mod broker;
pub mod cli;
pub mod config;
pub mod database;
pub mod dev;
pub mod encoding;
pub mod errors;
pub mod guard;
pub mod html;
pub mod identity;
pub mod keys;
pub mod mask;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod postgres_tls;
pub mod proxy;
pub mod roles;
pub mod secret;
pub mod sql;
pub mod store;
pub mod tls;
pub mod units;
