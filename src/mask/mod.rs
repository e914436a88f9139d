//! Masking (DESIGN §7): sensitive columns never reach an agent in clear. `plan` decides from a
//! statement's analysis whether its results need masking, how, or whether it must be refused;
//! `rows` applies a plan to the result messages (RowDescription names each column's origin:
//! table OID and attribute number); `method` is what a masked value becomes. Pure: the catalog
//! lookups that turn policy column names into OIDs happen in the proxy.

pub mod method;
pub mod plan;
pub mod rows;

pub use plan::{plan, MaskPlan, MaskedColumn};
