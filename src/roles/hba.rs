//! Defence in depth: a lease role should be useless outside pgid. Its password is known only to
//! pgid, and `pg_hba.conf` should accept members of the deployment's lease marker role
//! (`pgid_lease`, or `pgid_lease_<deployment>`) only from pgid's own addresses. At start pgid reads the server's rules (`pg_hba_file_rules`, readable by
//! superusers or where granted) and warns when a rule would let a lease role log in from
//! elsewhere; when it cannot read them it says so. The evaluation is pure ([`exposure`]).

use std::net::IpAddr;

/// One line of `pg_hba_file_rules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub line: i32,
    /// `local`, `host`, `hostssl`, `hostnossl`, `hostgssenc`, `hostnogssenc`.
    pub kind: String,
    pub users: Vec<String>,
    /// `None` for `local`; an address, `all`, `samehost` or `samenet` otherwise.
    pub address: Option<String>,
    pub netmask: Option<String>,
    pub method: String,
}

/// Whether `rule` matches a lease role (`marker`: the marker role it is a member of).
fn matches_lease_role(rule: &Rule, marker: &str) -> bool {
    rule.users
        .iter()
        .any(|u| u == "all" || u == &format!("+{marker}"))
}

/// The number of leading one bits of a netmask.
fn prefix_len(mask: &str) -> Option<u32> {
    let ip: IpAddr = mask.parse().ok()?;
    Some(match ip {
        IpAddr::V4(v) => u32::from(v).leading_ones(),
        IpAddr::V6(v) => u128::from(v).leading_ones(),
    })
}

/// Whether the rule's addresses are exactly pgid's own (`pgid`: the address the server sees
/// pgid connect from).
fn only(rule: &Rule, pgid: Option<IpAddr>) -> bool {
    let (Some(addr), Some(pgid)) = (rule.address.as_deref(), pgid) else {
        return false;
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let full = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    ip == pgid && rule.netmask.as_deref().and_then(prefix_len) == Some(full)
}

/// The first rule that would let a lease role log in from somewhere other than pgid, as a
/// sentence for the log; `None` when the rules keep lease roles to pgid's address (or reject
/// them from everywhere else first). Unix-socket (`local`) rules need a login on the database
/// host itself and are not counted.
pub fn exposure(rules: &[Rule], pgid: Option<IpAddr>, marker: &str) -> Option<String> {
    for r in rules {
        if r.kind == "local" || !matches_lease_role(r, marker) || only(r, pgid) {
            continue;
        }
        if r.method == "reject" {
            // Everything this rule covers is closed; a rule covering all addresses closes
            // everything after it.
            let everywhere = matches!(r.address.as_deref(), Some("all"))
                || r.netmask.as_deref().and_then(prefix_len) == Some(0);
            if everywhere {
                return None;
            }
            continue;
        }
        let from = match (&r.address, &r.netmask) {
            (Some(a), Some(m)) => format!("{a}/{}", prefix_len(m).unwrap_or(0)),
            (Some(a), None) => a.clone(),
            _ => "anywhere".into(),
        };
        return Some(format!(
            "pg_hba.conf line {} ({} {} from {from}, {}) accepts lease roles from addresses \
             other than pgid's{}: add `host all +{marker} <pgid's address>/32 scram-sha-256` \
             and `host all +{marker} all reject` before it (see README, Preparing the database)",
            r.line,
            r.kind,
            r.users.join(","),
            r.method,
            pgid.map(|p| format!(" ({p})")).unwrap_or_default()
        ));
    }
    None
}

/// Reads the server's rules and logs what [`exposure`] finds (or that it cannot tell).
pub async fn check(client: &tokio_postgres::Client, database: &str, marker: &str) {
    let rows = client
        .query(
            "SELECT line_number, type, user_name, address, netmask, auth_method, \
             inet_client_addr()::text FROM pg_hba_file_rules WHERE error IS NULL \
             ORDER BY line_number",
            &[],
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                database,
                reason = %crate::database::pg_message(&e),
                "cannot read pg_hba_file_rules to check that lease roles can log in only through \
                 pgid; grant SELECT on it to the admin role, or check pg_hba.conf by hand (README, \
                 Preparing the database)"
            );
            return;
        }
    };
    let pgid: Option<IpAddr> = rows
        .first()
        .and_then(|r| r.get::<_, Option<String>>(6))
        .and_then(|a| a.split('/').next().and_then(|a| a.parse().ok()));
    let rules: Vec<Rule> = rows
        .iter()
        .map(|r| Rule {
            line: r.get(0),
            kind: r.get(1),
            users: r.get::<_, Option<Vec<String>>>(2).unwrap_or_default(),
            address: r.get(3),
            netmask: r.get(4),
            method: r.get::<_, Option<String>>(5).unwrap_or_default(),
        })
        .collect();
    match exposure(&rules, pgid, marker) {
        Some(problem) => tracing::warn!(database, "{problem}"),
        None => tracing::info!(database, "pg_hba.conf accepts lease roles only from pgid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(line: i32, kind: &str, user: &str, addr: &str, mask: &str, method: &str) -> Rule {
        Rule {
            line,
            kind: kind.into(),
            users: vec![user.into()],
            address: (!addr.is_empty()).then(|| addr.into()),
            netmask: (!mask.is_empty()).then(|| mask.into()),
            method: method.into(),
        }
    }

    #[test]
    fn lease_roles_must_be_kept_to_pgids_address() {
        let pgid = Some("10.0.0.5".parse().unwrap());
        let open = [
            rule(1, "local", "all", "", "", "peer"),
            rule(2, "host", "all", "0.0.0.0", "0.0.0.0", "scram-sha-256"),
        ];
        let found = exposure(&open, pgid, "pgid_lease").unwrap();
        assert!(found.contains("line 2"), "{found}");
        let closed = [
            rule(
                1,
                "host",
                "+pgid_lease",
                "10.0.0.5",
                "255.255.255.255",
                "scram-sha-256",
            ),
            rule(2, "host", "+pgid_lease", "all", "", "reject"),
            rule(3, "host", "all", "0.0.0.0", "0.0.0.0", "scram-sha-256"),
        ];
        assert_eq!(exposure(&closed, pgid, "pgid_lease"), None);
        // A reject of part of the address space does not close the rest.
        let partly = [
            rule(
                1,
                "host",
                "+pgid_lease",
                "192.168.0.0",
                "255.255.0.0",
                "reject",
            ),
            rule(2, "host", "all", "::", "::", "scram-sha-256"),
        ];
        assert!(exposure(&partly, pgid, "pgid_lease")
            .unwrap()
            .contains("line 2"));
        // Rules for other users do not count.
        let others = [rule(
            1,
            "host",
            "app",
            "0.0.0.0",
            "0.0.0.0",
            "scram-sha-256",
        )];
        assert_eq!(exposure(&others, pgid, "pgid_lease"), None);
    }
}
