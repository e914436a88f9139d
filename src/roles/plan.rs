//! The SQL that brings one policy's group role in line with its policy file: create the role if
//! missing, then grant what the policy wants and the role lacks, and revoke what the role holds
//! and the policy no longer wants — for every kind of object, compared ACL by ACL.

use tokio_postgres::GenericClient;

use super::acl::held;
use super::ddl;
use super::objects::{wanted, Privileges};
use super::reconcile::ReconcileError;
use super::Deployment;
use crate::policy::{Policy, Privilege};

/// The SQL that brings one policy's group role in line with the policy file.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub policy: String,
    pub database: String,
    pub role: String,
    pub statements: Vec<String>,
}

/// A role of the group role's name exists that is not this deployment's: fail closed rather
/// than grant through it.
fn foreign(policy: &Policy, role: &str, why: &str) -> ReconcileError {
    ReconcileError::Foreign {
        policy: policy.name.clone(),
        role: role.to_string(),
        why: why.to_string(),
    }
}

pub async fn plan_policy(
    client: &impl GenericClient,
    policy: &Policy,
    dbname: &str,
    deployment: &Deployment,
) -> Result<GroupPlan, ReconcileError> {
    let pg = |source| ReconcileError::Postgres {
        policy: policy.name.clone(),
        source,
    };
    let role = deployment.group_role(&policy.name);
    let marker = deployment.group_marker();
    let mut statements = Vec::new();
    // (can log in or is a superuser, is a member of this deployment's group marker)
    let found = client
        .query_opt(
            "SELECT r.rolcanlogin OR r.rolsuper, EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m                JOIN pg_catalog.pg_roles k ON k.oid = m.roleid                WHERE m.member = r.oid AND k.rolname = $2)              FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
            &[&role, &marker],
        )
        .await
        .map_err(pg)?
        .map(|r| (r.get::<_, bool>(0), r.get::<_, bool>(1)));
    let exists = found.is_some();
    match found {
        None => statements.push(ddl::create_group_role(&role, &marker)),
        Some((true, _)) => return Err(foreign(policy, &role, "it can log in or is a superuser")),
        Some((false, true)) => {}
        // Made by pgid before group roles carried a marker: this deployment's by its name.
        Some((false, false)) if deployment.adopts_unmarked_groups() => {
            statements.push(ddl::grant_membership(&marker, &role))
        }
        Some((false, false)) => {
            return Err(foreign(
                policy,
                &role,
                &format!("it is not a member of {marker}, this deployment's group marker"),
            ))
        }
    }
    let want = wanted(client, policy, dbname).await?;
    let have = if exists {
        held(client, &role).await.map_err(pg)?
    } else {
        Privileges::new()
    };
    statements.extend(changes(&want, &have, &role));
    Ok(GroupPlan {
        policy: policy.name.clone(),
        database: policy.database.clone(),
        role,
        statements,
    })
}

/// The GRANTs (in object order) and then the REVOKEs that turn what `role` has into what it
/// should have.
pub(super) fn changes(want: &Privileges, have: &Privileges, role: &str) -> Vec<String> {
    let none = Default::default();
    let mut statements = Vec::new();
    for (object, wanted) in want {
        let add: Vec<Privilege> = wanted
            .difference(have.get(object).unwrap_or(&none))
            .copied()
            .collect();
        if !add.is_empty() {
            statements.push(ddl::grant(&add, object, role));
        }
    }
    for (object, held) in have {
        let remove: Vec<Privilege> = held
            .difference(want.get(object).unwrap_or(&none))
            .copied()
            .collect();
        if !remove.is_empty() {
            statements.push(ddl::revoke(&remove, object, role));
        }
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::ddl::Object;
    use Privilege::*;

    fn privileges(entries: &[(Object, &[Privilege])]) -> Privileges {
        entries
            .iter()
            .map(|(o, p)| (o.clone(), p.iter().copied().collect()))
            .collect()
    }

    #[test]
    fn grants_what_is_missing_and_revokes_what_is_no_longer_wanted() {
        let int4 = [("pg_catalog".to_string(), "int4".to_string())];
        let want = privileges(&[
            (Object::database("app"), &[Connect, Temporary]),
            (Object::schema("scratch"), &[Create, Usage]),
            (Object::table("crm", "orders"), &[Select, Insert]),
            (Object::sequence("crm", "orders_id_seq"), &[Usage]),
            (Object::routine("crm", "total", &int4), &[Execute]),
        ]);
        let have = privileges(&[
            (Object::database("app"), &[Connect, Create]),
            (Object::schema("scratch"), &[Usage]),
            (Object::table("crm", "orders"), &[Select, Delete]),
            (Object::data_type("crm", "mood"), &[Usage]),
            (Object::routine("crm", "total", &int4), &[Execute]),
        ]);
        let r = "pgid_p_x";
        assert_eq!(
            changes(&want, &have, r),
            [
                "GRANT TEMPORARY ON DATABASE \"app\" TO \"pgid_p_x\"",
                "GRANT CREATE ON SCHEMA \"scratch\" TO \"pgid_p_x\"",
                "GRANT INSERT ON TABLE \"crm\".\"orders\" TO \"pgid_p_x\"",
                "GRANT USAGE ON SEQUENCE \"crm\".\"orders_id_seq\" TO \"pgid_p_x\"",
                "REVOKE CREATE ON DATABASE \"app\" FROM \"pgid_p_x\"",
                "REVOKE DELETE ON TABLE \"crm\".\"orders\" FROM \"pgid_p_x\"",
                "REVOKE USAGE ON TYPE \"crm\".\"mood\" FROM \"pgid_p_x\"",
            ]
        );
        assert!(changes(&want, &want, r).is_empty());
        // A policy with no grants at all keeps only CONNECT.
        let bare = privileges(&[(Object::database("app"), &[Connect])]);
        let all = changes(&bare, &have, r);
        assert_eq!(all.len(), 5, "{all:?}");
        assert!(all.iter().all(|s| s.starts_with("REVOKE")), "{all:?}");
        assert!(all.contains(
            &"REVOKE EXECUTE ON ROUTINE \"crm\".\"total\"(\"pg_catalog\".\"int4\") FROM \"pgid_p_x\""
                .to_string()
        ));
    }
}
