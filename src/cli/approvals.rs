//! `pgid approvals list | approve | deny`: the reviewer API from a terminal, with the reviewer's
//! own bearer token (`--token-file` or `PGID_TOKEN`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct Broker {
    /// Broker URL.
    #[arg(long, env = "PGID_BROKER", default_value = "https://127.0.0.1:7443")]
    broker: String,
    /// CA certificate to trust for the broker (pgid's generated one is <state_dir>/tls/ca.crt).
    #[arg(long, env = "PGID_CACERT")]
    cacert: Option<PathBuf>,
    /// File holding the reviewer's bearer token (or set PGID_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Review as the running `pgid dev`'s development reviewer (group `dba`), at its broker.
    #[arg(long, conflicts_with = "token_file")]
    dev: bool,
}

/// The broker as one command calls it: its URL, a client trusting its CA, the reviewer's token —
/// each found once (with `--dev`: from the dev session, the token by the development reviewer's
/// client-credentials grant), however many pages the command reads.
struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn open(b: &Broker) -> anyhow::Result<Api> {
        let (base, cacert, token) = if b.dev {
            let session = super::dev::Session::read()?;
            let r = &session.reviewer;
            let token = super::login::client_credentials(
                &session.issuer,
                &r.id,
                &r.secret,
                &Default::default(),
            )
            .await?;
            (session.broker, Some(session.ca), token)
        } else {
            (b.broker.clone(), b.cacert.clone(), token(b)?)
        };
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            http: super::broker_client(cacert.as_deref())?,
            token,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// List approval requests.
    List {
        /// pending, approved, denied, expired, withdrawn or all.
        #[arg(long, default_value = "pending")]
        state: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        broker: Broker,
    },
    /// Approve a request: the statement runs.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        broker: Broker,
    },
    /// Deny a request: the statement fails with your comment.
    Deny {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        broker: Broker,
    },
}

fn token(b: &Broker) -> anyhow::Result<String> {
    if let Some(path) = &b.token_file {
        let t =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(t.trim().to_string());
    }
    match std::env::var("PGID_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => bail!("no token: give --token-file or set PGID_TOKEN"),
    }
}

/// Calls the broker; returns the JSON body of a success, or exits 1 with the API's message.
async fn call(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Result<Value, String>> {
    let url = format!("{}{path}", api.base);
    let mut req = api.http.request(method, &url).bearer_auth(&api.token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.map_err(|e| {
        anyhow::anyhow!(
            "calling the broker at {url}: {}",
            crate::errors::chain(&e.without_url())
        )
    })?;
    let status = resp.status();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(Ok(value))
    } else {
        Ok(Err(format!(
            "{status}: {}",
            value["message"].as_str().unwrap_or("request failed")
        )))
    }
}

/// Every page of `GET /v1/approvals?state=…`, as one `{"approvals": […]}`.
async fn list(api: &Api, state: &str) -> anyhow::Result<Result<Value, String>> {
    let state: String = form_urlencoded::byte_serialize(state.as_bytes()).collect();
    let mut all = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = format!("/v1/approvals?state={state}&limit=1000");
        if let Some(b) = &before {
            path.push_str(&format!("&before={b}"));
        }
        let page = match call(api, reqwest::Method::GET, &path, None).await? {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        all.extend(page["approvals"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(n) => before = Some(form_urlencoded::byte_serialize(n.as_bytes()).collect()),
            None => return Ok(Ok(serde_json::json!({ "approvals": all }))),
        }
    }
}

pub async fn run(cmd: ApprovalsCommand) -> anyhow::Result<u8> {
    let (result, json) = match &cmd {
        ApprovalsCommand::List {
            state,
            json,
            broker,
        } => (list(&Api::open(broker).await?, state).await?, *json),
        ApprovalsCommand::Approve {
            id,
            comment,
            broker,
        }
        | ApprovalsCommand::Deny {
            id,
            comment,
            broker,
        } => {
            let verb = if matches!(cmd, ApprovalsCommand::Approve { .. }) {
                "approve"
            } else {
                "deny"
            };
            let body = serde_json::json!({ "comment": comment });
            (
                call(
                    &Api::open(broker).await?,
                    reqwest::Method::POST,
                    &format!("/v1/approvals/{id}/{verb}"),
                    Some(body),
                )
                .await?,
                true,
            )
        }
    };
    match result {
        Err(message) => {
            eprintln!("pgid: {message}");
            Ok(1)
        }
        Ok(v) if json => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Ok(v) => {
            for r in v["approvals"].as_array().into_iter().flatten() {
                let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
                let mut extra = String::new();
                if let Some(p) = r["parameters"].as_array().filter(|p| !p.is_empty()) {
                    extra.push_str(&format!("  parameters {}", Value::Array(p.clone())));
                }
                if let Some(n) = r["estimated_rows"].as_i64() {
                    extra.push_str(&format!("  ~{n} rows"));
                }
                println!(
                    "{}  {:<9} {:<5} {}  {}  until {}  {}{extra}",
                    s("id"),
                    s("state"),
                    s("mode"),
                    s("subject"),
                    s("policy"),
                    s("expires_at"),
                    s("statement")
                );
            }
            Ok(0)
        }
    }
}
