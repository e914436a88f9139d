//! Just-in-time approval (DESIGN §4, §6): which statements a policy's `[[approval]]` rules send
//! to a human reviewer, and who may decide (`rules`, pure); announcing requests to webhooks
//! (`notify`). The requests themselves live in the `pgid` schema (`store::approvals`).

pub mod notify;
pub mod relations;
pub mod rules;

pub use relations::{Made, Reach, Relations, Touch};
pub use rules::{fingerprint, may_decide, rule_for};
