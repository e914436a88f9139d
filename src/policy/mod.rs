//! Policies: which identities get which database privileges, under which guardrails (DESIGN §4).
//!
//! Pure core: `model` is the validated shape (`grant`: what a `[[grant]]` gives), `load` reads `policies/*.toml` and reports every
//! problem with `file:line`, `decide` picks the one policy that applies to a verified identity,
//! `matcher` compares identities and claims.

mod decide;
mod grant;
mod load;
mod matcher;
mod model;

pub use decide::{select, Request, Selection};
pub use grant::*;
pub use load::{load_dir, parse_policy, PolicyError, PolicySet};
pub use matcher::{glob_matches, ClaimValue, IdentityMatch};
pub use model::*;

/// Names of policies and databases: `[a-z0-9_-]{1,32}`.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
