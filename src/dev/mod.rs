//! Development and test fixtures that are real, not mocks: a throwaway PostgreSQL cluster run from
//! the system binaries, and a development OIDC issuer (discovery, JWKS, client-credentials token
//! endpoint, a sign-in form for reviewers) on loopback. `pgid dev` runs both; the integration tests use the same code.
//! **Development only**: the issuer hands a token to anyone holding a client secret it printed.

pub mod demo;
mod issuer;
mod postgres;
mod signin;

pub use issuer::{DevClient, DevIssuer, KeyAlg, ReviewClient};
pub use postgres::{postgres_user, TempPostgres, TempPostgresError};
