//! The planner's row estimate for a held statement (`min_rows`, and what reviewers see):
//! `EXPLAIN (FORMAT JSON)`, never ANALYZE, with the statement's own Bind values in their own
//! formats, as the lease's own role, over the extended protocol (which takes one statement
//! only). The largest row estimate of any plan node counts; `None` when there is none. VERBOSE,
//! so that each scan names its relation's schema: whether the estimate can be trusted depends on
//! the statistics of the relations scanned ([`super::statistics`]).
//!
//! On the session's own upstream connection when it is idle (nothing in flight, no transaction
//! open): no extra login, and no extra slot of the lease's connection limit. Otherwise on a
//! connection of its own.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::inspect::registry::ExactParameters;
use super::stream::ClientStream;
use super::upstream::Upstream;
use super::wire::backend::{self, Backend};
use super::wire::frontend::{self, Target};
use super::Proxy;

/// The statement and portal name pgid's estimate uses on a session's connection.
const OWN_NAME: &[u8] = b"pgid_estimate";

/// Longest pgid waits for an estimate.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why the session cannot go on after an estimate on its own connection.
pub enum Broken {
    Upstream,
    Client,
}

/// What the planner expects of a statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// The largest `Plan Rows` of any node.
    pub rows: f64,
    /// Every relation a node of the plan scans (its subplans and init plans included).
    pub scans: Vec<Scan>,
}

/// A relation a plan node scans, as `EXPLAIN (VERBOSE)` names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scan {
    /// `None` when the plan does not say (then nothing can be known of its statistics).
    pub schema: Option<String>,
    pub relation: String,
}

/// Reads an `EXPLAIN (VERBOSE, FORMAT JSON)` result.
pub fn read_plan(plan: &serde_json::Value) -> Option<Estimate> {
    fn walk(node: &serde_json::Value, scans: &mut Vec<Scan>) -> f64 {
        // A ModifyTable node names its target, whose rows it takes from the scans below it
        // (or from VALUES, for an INSERT): the target's own statistics do not make the estimate.
        if node["Node Type"] != "ModifyTable" {
            if let Some(relation) = node["Relation Name"].as_str() {
                scans.push(Scan {
                    schema: node["Schema"].as_str().map(str::to_string),
                    relation: relation.to_string(),
                });
            }
        }
        let own = node["Plan Rows"].as_f64().unwrap_or(0.0);
        node["Plans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| walk(n, scans))
            .fold(own, f64::max)
    }
    let top = &plan[0]["Plan"];
    if !top.is_object() {
        return None;
    }
    let mut scans = Vec::new();
    let rows = walk(top, &mut scans);
    scans.sort();
    scans.dedup();
    Some(Estimate { rows, scans })
}

/// The EXPLAIN pgid runs in front of a statement.
const EXPLAIN: &str = "EXPLAIN (VERBOSE, FORMAT JSON) ";

/// On the session's idle upstream connection, with the statement as the client sent it (in the
/// session's client encoding). Messages the server sends meanwhile that belong to the client
/// (notifications, notices, parameter changes) are passed on; reported settings are kept.
pub async fn on_session(
    upstream: &mut Upstream,
    client: &mut ClientStream,
    raw_sql: &[u8],
    params: &ExactParameters,
) -> Result<Option<Estimate>, Broken> {
    let mut out = BytesMut::new();
    let mut explain = EXPLAIN.as_bytes().to_vec();
    explain.extend_from_slice(raw_sql);
    // Under names of pgid's own, closed before the Sync: the client's unnamed statement and
    // portal stay as they were.
    frontend::parse(&mut out, OWN_NAME, &explain, &params.types);
    frontend::bind_portal(&mut out, OWN_NAME, OWN_NAME, &params.values);
    frontend::execute(&mut out, OWN_NAME, 0);
    frontend::close(&mut out, Target::Portal, OWN_NAME);
    frontend::close(&mut out, Target::Statement, OWN_NAME);
    frontend::sync(&mut out);
    upstream
        .stream
        .write_all(&out)
        .await
        .map_err(|_| Broken::Upstream)?;
    upstream
        .stream
        .flush()
        .await
        .map_err(|_| Broken::Upstream)?;
    let mut plan = None;
    loop {
        let m = upstream
            .frames
            .read(&mut upstream.stream)
            .await
            .map_err(|_| Broken::Upstream)?;
        match Backend::decode(m.tag, &m.body).map_err(|_| Broken::Upstream)? {
            Backend::DataRow(body) => plan = first_column(body),
            Backend::ReadyForQuery(_) => break,
            msg @ (Backend::NotificationResponse
            | Backend::NoticeResponse(_)
            | Backend::ParameterStatus { .. }) => {
                if let Backend::ParameterStatus { name, value } = msg {
                    upstream.set_param(
                        String::from_utf8_lossy(name).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    );
                }
                let mut whole = BytesMut::with_capacity(m.body.len() + 5);
                backend::raw(&mut whole, m.tag, &m.body);
                client.write_all(&whole).await.map_err(|_| Broken::Client)?;
            }
            // ParseComplete, BindComplete, RowDescription, CommandComplete, ErrorResponse.
            _ => {}
        }
    }
    client.flush().await.map_err(|_| Broken::Client)?;
    Ok(plan
        .and_then(|text| serde_json::from_slice(&text).ok())
        .and_then(|v: serde_json::Value| read_plan(&v)))
}

/// The first column of a DataRow, as sent.
fn first_column(body: &[u8]) -> Option<Vec<u8>> {
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    if n < 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    (len >= 0).then(|| body.get(6..6 + len as usize).map(<[u8]>::to_vec))?
}

/// On a connection of its own, as the lease's role.
pub async fn on_new_connection(
    proxy: &Proxy,
    lease: &crate::store::LeaseRow,
    sql: &str,
    params: &ExactParameters,
) -> Option<Estimate> {
    let db = proxy.leases.databases().get(&lease.database)?;
    let mut cfg = tokio_postgres::Config::new();
    match &db.upstream {
        crate::database::Upstream::Tcp { host, port } => cfg.host(host).port(*port),
        crate::database::Upstream::Unix { dir, port } => cfg.host_path(dir).port(*port),
    };
    let password = crate::roles::database_password(proxy.leases.key(), lease.id);
    cfg.user(&lease.role_name)
        .password(password.expose())
        .dbname(&db.dbname)
        .application_name("pgid estimate")
        .connect_timeout(TIMEOUT);
    let explain = format!("{EXPLAIN}{sql}");
    // The parameter types the client declared, as far as they are built-in ones; the server
    // infers the rest, as it did for the client.
    let types: Vec<tokio_postgres::types::Type> = params
        .types
        .iter()
        .map_while(|oid| tokio_postgres::types::Type::from_oid(*oid))
        .collect();
    let values: Vec<WireValue<'_>> = params
        .values
        .iter()
        .map(|(binary, v)| WireValue {
            bytes: v.as_deref(),
            binary: *binary,
        })
        .collect();
    let plan: serde_json::Value = tokio::time::timeout(TIMEOUT, async {
        let client = match &db.tls {
            Some(tls) => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, conn) = cfg
                    .connect(crate::postgres_tls::RustlsConnect(tls.clone()))
                    .await
                    .ok()?;
                tokio::spawn(conn);
                client
            }
            None => {
                let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(conn);
                client
            }
        };
        let statement = client.prepare_typed(&explain, &types).await.ok()?;
        let rows = client
            .query(
                &statement,
                &values
                    .iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect::<Vec<_>>(),
            )
            .await
            .ok()?;
        rows.first()?.try_get(0).ok()
    })
    .await
    .ok()??;
    read_plan(&plan)
}

/// A Bind value passed on to the server exactly as the client sent it, in its own format.
#[derive(Debug)]
struct WireValue<'a> {
    bytes: Option<&'a [u8]>,
    binary: bool,
}

impl tokio_postgres::types::ToSql for WireValue<'_> {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.bytes {
            None => Ok(tokio_postgres::types::IsNull::Yes),
            Some(b) => {
                out.extend_from_slice(b);
                Ok(tokio_postgres::types::IsNull::No)
            }
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    fn encode_format(&self, _: &tokio_postgres::types::Type) -> tokio_postgres::types::Format {
        if self.binary {
            tokio_postgres::types::Format::Binary
        } else {
            tokio_postgres::types::Format::Text
        }
    }

    tokio_postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn the_largest_node_estimate_counts() {
        let plan = serde_json::json!([{"Plan": {"Plan Rows": 3, "Plans": [
            {"Plan Rows": 40, "Plans": [{"Plan Rows": 7}]},
            {"Plan Rows": 12}
        ]}}]);
        assert_eq!(read_plan(&plan).map(|e| e.rows), Some(40.0));
        assert_eq!(read_plan(&serde_json::json!([])), None);
        assert_eq!(read_plan(&serde_json::json!("x")), None);
    }

    #[test]
    fn every_scanned_relation_is_named_but_not_the_modified_one() {
        // DELETE FROM a partitioned table with a subquery: the target itself is not a scan.
        let plan = serde_json::json!([{"Plan": {
            "Node Type": "ModifyTable", "Relation Name": "jobs", "Schema": "crm", "Plan Rows": 0,
            "Plans": [{"Node Type": "Append", "Plan Rows": 5, "Plans": [
                {"Node Type": "Seq Scan", "Relation Name": "jobs_1", "Schema": "crm", "Plan Rows": 2},
                {"Node Type": "Index Scan", "Relation Name": "jobs_2", "Schema": "crm",
                 "Index Name": "jobs_2_pkey", "Plan Rows": 3},
                {"Node Type": "Seq Scan", "Relation Name": "jobs_1", "Schema": "crm", "Plan Rows": 1},
                {"Node Type": "Function Scan", "Function Name": "f", "Schema": "public", "Plan Rows": 1000},
                {"Node Type": "Seq Scan", "Parent Relationship": "SubPlan",
                 "Relation Name": "t", "Plan Rows": 1}
            ]}]
        }}]);
        let e = read_plan(&plan).unwrap();
        assert_eq!(e.rows, 1000.0);
        let names: Vec<(Option<&str>, &str)> = e
            .scans
            .iter()
            .map(|s| (s.schema.as_deref(), s.relation.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (None, "t"),
                (Some("crm"), "jobs_1"),
                (Some("crm"), "jobs_2")
            ]
        );
    }

    #[test]
    fn data_rows_give_their_first_column() {
        let mut row = BytesMut::new();
        row.put_i16(1);
        row.put_i32(2);
        row.put_slice(b"[]");
        assert_eq!(first_column(&row), Some(b"[]".to_vec()));
        let mut null = BytesMut::new();
        null.put_i16(1);
        null.put_i32(-1);
        assert_eq!(first_column(&null), None);
        assert_eq!(first_column(b"\x00"), None);
    }
}
