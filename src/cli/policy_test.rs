//! `pgid policy test`: what the proxy would do with each statement for an identity, without a
//! database — refuse it (guardrails, masking), hold it for approval (which rule), or let it run,
//! and which columns of its results would be masked.
//!
//! Without the catalog, two things the proxy knows are not known here, and the output says so:
//! views built on masked columns (the proxy masks them too), and how many rows the planner
//! expects (`min_rows`: the proxy holds only statements estimated at or above it, or whose
//! estimate cannot be trusted).

use anyhow::Context;

use crate::guard::Verdict;
use crate::mask::{MaskPlan, MaskedColumn};
use crate::policy::{self, Policy};
use crate::sql::Analysis;

/// What becomes of one statement string under a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Refused {
        rule: String,
        reason: String,
    },
    Runs {
        /// Masked columns its results read (`schema.table.column (method)`).
        masked: Vec<String>,
        /// Outputs computed from masked columns are masked as a whole.
        whole_outputs: bool,
        /// The approval rule that holds it, described.
        held: Option<String>,
    },
}

/// The masked columns of a policy, as the masking plan takes them (no views: no catalog here).
fn masked_columns(policy: &Policy) -> Vec<MaskedColumn> {
    policy
        .masks
        .iter()
        .flat_map(|m| {
            m.columns.iter().map(|c| MaskedColumn {
                schema: c.schema.clone(),
                table: c.table.clone(),
                column: Some(c.column.clone()),
                method: m.method,
                keep: m.keep,
            })
        })
        .collect()
}

fn method_name(m: policy::MaskMethod) -> &'static str {
    match m {
        policy::MaskMethod::Redact => "redact",
        policy::MaskMethod::Hash => "hash",
        policy::MaskMethod::Partial => "partial",
        policy::MaskMethod::Null => "null",
    }
}

/// Guardrails, then masking, then approval rules — the proxy's order (a refused statement is
/// never sent for review).
pub(super) fn outcome(policy: &Policy, analysis: Result<&Analysis, String>) -> Outcome {
    let a = match analysis {
        Ok(a) => a,
        Err(reason) => {
            return Outcome::Refused {
                rule: "analysis".into(),
                reason,
            }
        }
    };
    if let Verdict::Deny { rule, reason } = crate::guard::check(a, &policy.guardrails, &|_| None) {
        return Outcome::Refused {
            rule: rule.into(),
            reason,
        };
    }
    let columns = masked_columns(policy);
    let mut masked: Vec<String> = Vec::new();
    let mut whole_outputs = false;
    for st in &a.statements {
        match crate::mask::plan(st, &columns) {
            // Names a masked table without reading a masked column: rows as they are, error
            // texts withheld.
            MaskPlan::Untouched | MaskPlan::Withhold => {}
            MaskPlan::Refuse(reason) => {
                return Outcome::Refused {
                    rule: "mask".into(),
                    reason,
                }
            }
            MaskPlan::Mask {
                tainted,
                tainted_outputs,
                columns: used,
                ..
            } => {
                whole_outputs |= tainted || !tainted_outputs.is_empty();
                for name in used {
                    let method = columns
                        .iter()
                        .find(|c| {
                            format!(
                                "{}.{}.{}",
                                c.schema,
                                c.table,
                                c.column.as_deref().unwrap_or("*")
                            ) == name
                        })
                        .map(|c| method_name(c.method))
                        .unwrap_or("masked");
                    let shown = format!("{name} ({method})");
                    if !masked.contains(&shown) {
                        masked.push(shown);
                    }
                }
            }
        }
    }
    let statements: Vec<&crate::sql::Statement> = a.statements.iter().collect();
    let held = crate::approval::rule_for(
        &statements,
        &policy.approvals,
        None,
        crate::approval::Made::default(),
    )
    .map(|rule| {
        let index = policy
            .approvals
            .iter()
            .position(|r| std::ptr::eq(r, rule))
            .map_or(0, |i| i + 1);
        describe_rule(index, rule)
    });
    Outcome::Runs {
        masked,
        whole_outputs,
        held,
    }
}

/// `[[approval]] #n (DELETE, UPDATE on crm.orders): …` — what a reader needs to find the rule and
/// know when it holds.
fn describe_rule(index: usize, rule: &policy::Approval) -> String {
    let classes: Vec<String> = rule
        .statements
        .iter()
        .map(|c| {
            serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{c:?}"))
        })
        .collect();
    let tables = if rule.tables.is_empty() {
        "any table".to_string()
    } else {
        rule.tables
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The keys the rule gives (`{"claims":{"groups":"dba"}}`), as written in the file.
    let approvers = match serde_json::to_value(&rule.approvers) {
        Ok(serde_json::Value::Object(mut keys)) => {
            keys.retain(|_, v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()));
            serde_json::Value::Object(keys).to_string()
        }
        _ => String::new(),
    };
    let mode = match rule.mode {
        policy::ApprovalMode::Wait => format!(
            "waits up to {} for a reviewer",
            humantime::format_duration(rule.timeout)
        ),
        policy::ApprovalMode::Retry => format!(
            "refused until approved, then may run once within {}",
            humantime::format_duration(rule.window)
        ),
    };
    let mut text = format!(
        "[[approval]] #{index} ({} on {tables}): {mode}; approvers {approvers}",
        classes.join(", ")
    );
    if let Some(min) = rule.min_rows {
        text.push_str(&format!(
            "; only if the planner estimates {min} rows or more, or its estimate cannot be \
             trusted (tables not analysed) — not known without a database"
        ));
    }
    text
}

pub(super) fn run(
    dir: &std::path::Path,
    claims: &str,
    database: Option<&str>,
    policy_name: Option<&str>,
    statements: Vec<String>,
) -> anyhow::Result<u8> {
    let set = policy::load_dir(dir).map_err(|errors| {
        anyhow::anyhow!(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"))
    })?;
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(claims).context("--claims must be a JSON object")?;
    let subject = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .context("--claims needs a \"sub\"")?
        .to_string();
    let issuer = claims
        .get("iss")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let request = policy::Request {
        database,
        policy: policy_name,
    };
    let chosen = match policy::select(&set, &issuer, &subject, &claims, &request) {
        policy::Selection::One(p) => p.clone(),
        policy::Selection::None => {
            println!("no policy matches this identity: every statement would be refused");
            return Ok(1);
        }
        policy::Selection::Ambiguous(names) => {
            println!(
                "several policies match ({}); choose one with --policy",
                names.join(", ")
            );
            return Ok(1);
        }
    };
    println!("policy {} ({})", chosen.name, chosen.source.display());
    if !chosen.masks.is_empty() {
        println!(
            "       (without a database: views built on masked columns are masked too, but not \
             shown here)"
        );
    }
    let max = chosen.guardrails.max_statement_bytes as usize;
    let policy = chosen.clone();
    // Analysis runs on a thread with the stack deep statements need.
    let outcomes = std::thread::Builder::new()
        .stack_size(crate::sql::ANALYSIS_STACK)
        .spawn(move || {
            statements
                .into_iter()
                .map(|sql| {
                    let analysis = crate::sql::analyze(&sql, Default::default(), max)
                        .map_err(|e| e.to_string());
                    let o = outcome(&policy, analysis.as_ref().map_err(Clone::clone));
                    (sql, o)
                })
                .collect::<Vec<_>>()
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("analysis thread failed"))?;
    let mut refused = false;
    for (sql, outcome) in outcomes {
        match outcome {
            Outcome::Refused { rule, reason } => {
                refused = true;
                println!("deny   {sql}\n       rule {rule}: {reason}");
            }
            Outcome::Runs {
                masked,
                whole_outputs,
                held,
            } => {
                match &held {
                    Some(rule) => println!("hold   {sql}\n       approval {rule}"),
                    None => println!("allow  {sql}"),
                }
                if !masked.is_empty() {
                    println!("       mask {}", masked.join(", "));
                }
                if whole_outputs {
                    println!("       mask every output computed from a masked column, as a whole");
                }
            }
        }
    }
    Ok(u8::from(refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
name = "support"
database = "app"
ttl = "5m"
[identity]
subject = "agent:x"
[[mask]]
columns = ["crm.customers.ssn"]
method = "redact"
[[mask]]
columns = ["crm.customers.email"]
method = "hash"
[[approval]]
statements = ["DELETE"]
tables = ["crm.tickets"]
approvers = { claims = { groups = "dba" } }
min_rows = 5
"#;

    fn judge(sql: &str) -> Outcome {
        let p = policy::parse_policy(std::path::Path::new("p.toml"), POLICY).unwrap();
        let a = crate::sql::analyze(sql, Default::default(), 1 << 20).map_err(|e| e.to_string());
        outcome(&p, a.as_ref().map_err(Clone::clone))
    }

    #[test]
    fn masked_columns_and_holds_are_reported() {
        match judge("SELECT name, ssn, email FROM crm.customers") {
            Outcome::Runs {
                masked,
                whole_outputs,
                held,
            } => {
                assert_eq!(
                    masked,
                    ["crm.customers.email (hash)", "crm.customers.ssn (redact)"]
                );
                assert!(!whole_outputs);
                assert_eq!(held, None);
            }
            other => panic!("{other:?}"),
        }
        match judge("SELECT upper(email) FROM crm.customers") {
            Outcome::Runs { whole_outputs, .. } => assert!(whole_outputs),
            other => panic!("{other:?}"),
        }
        match judge("DELETE FROM crm.tickets WHERE status = 'open'") {
            Outcome::Runs {
                held: Some(rule),
                masked,
                ..
            } => {
                assert!(masked.is_empty());
                assert!(
                    rule.starts_with("[[approval]] #1 (DELETE on crm.tickets): waits up to 5m"),
                    "{rule}"
                );
                assert!(rule.contains("{\"claims\":{\"groups\":\"dba\"}}"), "{rule}");
                assert!(rule.contains("estimates 5 rows or more"), "{rule}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge("DELETE FROM crm.tickets"),
            Outcome::Refused { rule, .. } if rule == "require_where"
        ));
        assert!(matches!(
            judge("SELECT 1 FROM"),
            Outcome::Refused { rule, .. } if rule == "analysis"
        ));
    }
}
