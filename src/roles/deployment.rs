//! Which roles belong to this pgid deployment (DESIGN §2): several deployments with their own
//! state may share one Postgres cluster (staging and prod, two teams), and none may touch the
//! other's roles. A deployment owns two NOLOGIN marker roles per cluster — every lease role is a
//! member of its lease marker, every group role of its group marker — and its group roles carry
//! its name, so two deployments with the same policy names do not share a group role.
//!
//! The deployment called `default` keeps the names pgid used before deployments existed
//! (`pgid_lease`, `pgid_p_<policy>`), so an upgrade changes no role name.

/// The deployment name when `pgid.toml` gives none.
pub const DEFAULT_DEPLOYMENT: &str = "default";

/// The longest deployment name: `pgid_d_<deployment>_p_<policy>` stays within Postgres's 63
/// bytes with a 32-character policy name.
pub const DEPLOYMENT_NAME_MAX: usize = 20;

/// The role names of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    name: String,
}

impl Default for Deployment {
    fn default() -> Self {
        Deployment {
            name: DEFAULT_DEPLOYMENT.to_string(),
        }
    }
}

impl Deployment {
    /// A deployment with a name checked by [`Deployment::check_name`].
    pub fn new(name: &str) -> Result<Deployment, String> {
        Deployment::check_name(name)?;
        Ok(Deployment {
            name: name.to_string(),
        })
    }

    /// Lowercase ASCII letters and digits only: no `_`, so a group role name is read one way
    /// (`pgid_d_a_p_b_c` is deployment `a`, policy `b_c`).
    pub fn check_name(name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= DEPLOYMENT_NAME_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(())
        } else {
            Err(format!(
                "must be 1 to {DEPLOYMENT_NAME_MAX} lowercase letters or digits, got {name:?}"
            ))
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn is_default(&self) -> bool {
        self.name == DEFAULT_DEPLOYMENT
    }

    /// The NOLOGIN role every lease role of this deployment is a member of (the `+role` of
    /// pg_hba.conf lines).
    pub fn lease_marker(&self) -> String {
        if self.is_default() {
            "pgid_lease".to_string()
        } else {
            format!("pgid_lease_{}", self.name)
        }
    }

    /// The NOLOGIN role every group role of this deployment is a member of.
    pub fn group_marker(&self) -> String {
        if self.is_default() {
            "pgid_groups".to_string()
        } else {
            format!("pgid_groups_{}", self.name)
        }
    }

    /// The group role holding a policy's grants. Default: `pgid_p_<policy>`; otherwise
    /// `pgid_d_<deployment>_p_<policy>`, which no default name can equal (`pgid_d_` is not
    /// `pgid_p_`).
    pub fn group_role(&self, policy: &str) -> String {
        if self.is_default() {
            format!("pgid_p_{policy}")
        } else {
            format!("pgid_d_{}_p_{policy}", self.name)
        }
    }

    /// Whether an existing role of this name that carries no group marker may be taken as this
    /// deployment's: only the default deployment's names predate markers (pgid before
    /// deployments made `pgid_p_<policy>` unmarked). Anything else unmarked was made by hand.
    pub fn adopts_unmarked_groups(&self) -> bool {
        self.is_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_keeps_the_names_of_old_versions() {
        let d = Deployment::default();
        assert_eq!(d.lease_marker(), "pgid_lease");
        assert_eq!(d.group_marker(), "pgid_groups");
        assert_eq!(d.group_role("nightly-report"), "pgid_p_nightly-report");
        assert!(d.adopts_unmarked_groups());
    }

    #[test]
    fn named_deployments_have_their_own_roles() {
        let d = Deployment::new("prod").unwrap();
        assert_eq!(d.lease_marker(), "pgid_lease_prod");
        assert_eq!(d.group_marker(), "pgid_groups_prod");
        assert_eq!(d.group_role("report"), "pgid_d_prod_p_report");
        assert!(!d.adopts_unmarked_groups());
        // The longest names fit in 63 bytes.
        let long = Deployment::new(&"a".repeat(DEPLOYMENT_NAME_MAX)).unwrap();
        assert!(long.group_role(&"b".repeat(32)).len() <= 63);
        // A group role name reads one way: the deployment has no `_`.
        assert_ne!(
            Deployment::new("a").unwrap().group_role("b_p_c"),
            Deployment::new("p").unwrap().group_role("c")
        );
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "Prod", "a_b", "a-b", "ä", &"a".repeat(21), "a b"] {
            assert!(Deployment::new(bad).is_err(), "{bad:?}");
        }
        assert!(Deployment::new("staging2").is_ok());
    }
}
