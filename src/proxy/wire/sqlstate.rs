//! The SQLSTATE codes pgid sends or reads, by Postgres's own names (errcodes.txt).

/// 42501: what every guardrail refusal reports.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const SYNTAX_ERROR: &str = "42601";
pub const UNDEFINED_FUNCTION: &str = "42883";
/// 54000: export limits and oversized messages.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const CONNECTION_FAILURE: &str = "08006";
/// 57P01: the session ends (lease expired or revoked, shutdown).
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const QUERY_CANCELED: &str = "57014";
/// 57P03: try again later (a token's issuer keys cannot be fetched right now).
pub const CANNOT_CONNECT_NOW: &str = "57P03";
pub const INVALID_PASSWORD: &str = "28P01";
pub const INVALID_AUTHORIZATION: &str = "28000";
pub const INVALID_CATALOG_NAME: &str = "3D000";
pub const SYSTEM_ERROR: &str = "58000";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// 53400: a configured limit was reached (too many pending approval requests).
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// 22021: bytes that are not valid in the session's client encoding.
pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const SUCCESSFUL_COMPLETION: &str = "00000";
