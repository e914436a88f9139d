//! Who is calling: validation of OIDC/OAuth JWTs from explicitly trusted issuers (DESIGN §3).
//!
//! `jwks` fetches discovery documents and key sets (no redirects, size and time limits, a key
//! cache refetched on an unknown `kid` under a rate limit); `document` keeps such a fetched
//! document for a slow or failing provider (one fetch in flight, back-off, stale copies answering
//! while a refresh runs — also used for the reviewers' provider metadata); `verifier` checks a
//! token against the keys with `jsonwebtoken` and explains every refusal in a [`TokenError`].

mod document;
mod jwks;
mod verifier;

pub use document::{CachedDocument, Refusal, Timing, Unavailable};
pub use jwks::{FetchError, KeySource};
pub use verifier::{TokenError, VerifiedToken, Verifier, MAX_TOKEN_BYTES};

use jsonwebtoken::Algorithm;

/// Asymmetric algorithms only: a shared-secret (HS*) token could be forged by anyone who holds
/// the issuer's public key if it were ever checked with it.
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| format!("unknown algorithm {name:?}"))?;
    if !DEFAULT_ALGORITHMS.contains(&alg) {
        return Err(format!(
            "algorithm {name} is not allowed: only asymmetric algorithms (RS*, PS*, ES256, ES384, EdDSA)"
        ));
    }
    Ok(alg)
}

/// `https://` anywhere; `http://` only on loopback (a local development issuer).
pub fn check_fetch_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        "http" => Err(format!(
            "{url} uses http:// on a non-loopback host; use https://"
        )),
        other => Err(format!("{url} has unsupported scheme {other:?}")),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_urls() {
        assert!(check_fetch_url("https://idp.example.com").is_ok());
        assert!(check_fetch_url("http://127.0.0.1:8080").is_ok());
        assert!(check_fetch_url("http://localhost:8080/realms/x").is_ok());
        assert!(check_fetch_url("http://[::1]:8080").is_ok());
        assert!(check_fetch_url("http://idp.example.com").is_err());
        assert!(check_fetch_url("http://127.0.0.1.evil.com").is_err());
        assert!(check_fetch_url("ftp://idp").is_err());
    }

    #[test]
    fn only_asymmetric_algorithms() {
        assert!(parse_algorithm("RS256").is_ok());
        assert!(parse_algorithm("EdDSA").is_ok());
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("none").is_err());
    }
}
