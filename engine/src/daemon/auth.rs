//! API authentication and rate limiting.
//!
//! Bearer tokens come from the configuration with a scope each. Only their SHA-256 is
//! kept in memory, and a presented token is hashed and compared with every configured
//! hash in constant time (no early exit), so timing tells nothing about how much of a
//! token was right. Token values are never logged: a token's `name` stands for it.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// What a token may do. Scopes are ordered: each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read workflows, instances and metrics.
    Read,
    /// Also start instances and deliver events.
    Start,
    /// Also cancel and retry instances: everything.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Start => "start",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "start" => Some(Scope::Start),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// A configured token: its name (for logs and rate limits), its scope and the SHA-256
/// of its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub scope: Scope,
    hash: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl ApiToken {
    /// A token from its secret value.
    pub fn from_secret(name: &str, scope: Scope, secret: &str) -> ApiToken {
        ApiToken {
            name: name.to_string(),
            scope,
            hash: sha256(secret.as_bytes()),
        }
    }

    /// A token from the hex SHA-256 of its secret (so the file need not hold the secret).
    pub fn from_sha256_hex(name: &str, scope: Scope, hex_hash: &str) -> Option<ApiToken> {
        let bytes = hex::decode(hex_hash.trim()).ok()?;
        Some(ApiToken {
            name: name.to_string(),
            scope,
            hash: bytes.try_into().ok()?,
        })
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The configured tokens. Empty means the API is open (allowed on loopback only; the
/// configuration refuses it elsewhere).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tokens: Vec<ApiToken>,
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No tokens are configured: everything is allowed.
    Open,
    Token {
        name: String,
        scope: Scope,
    },
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that matches none configured (401).
    Unauthorized,
    /// A valid token whose scope is too small (403).
    Forbidden { needed: Scope, has: Scope },
}

impl Tokens {
    pub fn new(tokens: Vec<ApiToken>) -> Tokens {
        Tokens { tokens }
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks an `Authorization` header value against the scope a route needs.
    pub fn check(&self, authorization: Option<&str>, needed: Scope) -> Result<Caller, Denied> {
        if self.tokens.is_empty() {
            return Ok(Caller::Open);
        }
        let presented = authorization
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Unauthorized)?;
        let hash = sha256(presented.as_bytes());
        // Compare with every token, keeping the match without branching on it.
        let mut found: Option<&ApiToken> = None;
        for t in &self.tokens {
            let eq: bool = t.hash.ct_eq(&hash).into();
            if eq && found.is_none() {
                found = Some(t);
            }
        }
        let t = found.ok_or(Denied::Unauthorized)?;
        if t.scope < needed {
            return Err(Denied::Forbidden {
                needed,
                has: t.scope,
            });
        }
        Ok(Caller::Token {
            name: t.name.clone(),
            scope: t.scope,
        })
    }
}

/// Requests per second per client, with a burst: a token bucket per key (a token's
/// name, or the client's IP address when the API is open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets kept at most; idle full buckets are dropped first when there are more.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket at `now`; `Err` holds how long until one is free.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.limit.per_second.max(1));
        let burst = f64::from(self.limit.burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // A bucket idle long enough to be full again holds no information.
            let full_after = Duration::from_secs_f64(burst / rate);
            buckets.retain(|_, b| now.duration_since(b.last) < full_after);
            if buckets.len() >= MAX_BUCKETS {
                // Still full: keys are being made up faster than they refill. Forget all;
                // this only ever lets a burst through, never blocks a client wrongly.
                buckets.clear();
            }
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(vec![
            ApiToken::from_secret("viewer", Scope::Read, "read-secret-0123456789"),
            ApiToken::from_secret("bot", Scope::Start, "start-secret-0123456789"),
            ApiToken::from_sha256_hex(
                "ops",
                Scope::Admin,
                &hex::encode(sha256(b"admin-secret-0123456789")),
            )
            .unwrap(),
        ])
    }

    #[test]
    fn scopes_include_the_smaller_ones() {
        let t = tokens();
        let bearer = |s: &str| format!("Bearer {s}");
        assert_eq!(
            t.check(Some(&bearer("read-secret-0123456789")), Scope::Read),
            Ok(Caller::Token {
                name: "viewer".into(),
                scope: Scope::Read
            })
        );
        assert_eq!(
            t.check(Some(&bearer("read-secret-0123456789")), Scope::Start),
            Err(Denied::Forbidden {
                needed: Scope::Start,
                has: Scope::Read
            })
        );
        assert!(t
            .check(Some(&bearer("start-secret-0123456789")), Scope::Start)
            .is_ok());
        assert!(t
            .check(Some(&bearer("start-secret-0123456789")), Scope::Admin)
            .is_err());
        assert!(t
            .check(Some("bearer admin-secret-0123456789"), Scope::Admin)
            .is_ok());
    }

    #[test]
    fn missing_malformed_and_wrong_tokens_are_unauthorized() {
        let t = tokens();
        for h in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic read-secret-0123456789"),
            Some("read-secret-0123456789"),
            Some("Bearer read-secret-012345678"),
            Some("Bearer read-secret-01234567890"),
        ] {
            assert_eq!(t.check(h, Scope::Read), Err(Denied::Unauthorized), "{h:?}");
        }
    }

    #[test]
    fn no_tokens_means_open() {
        assert_eq!(
            Tokens::default().check(None, Scope::Admin),
            Ok(Caller::Open)
        );
    }

    #[test]
    fn debug_output_never_holds_the_secret_or_its_hash() {
        let t = ApiToken::from_secret("bot", Scope::Start, "start-secret-0123456789");
        let shown = format!("{t:?}");
        assert!(!shown.contains("start-secret"));
        assert!(!shown.contains(&hex::encode(sha256(b"start-secret-0123456789"))[..8]));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 2,
            burst: 3,
        });
        // Time is passed in: the bucket's arithmetic is checked, not the machine's speed.
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take("a", t0).is_ok());
        }
        let wait = limiter.take("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(
            limiter.take("b", t0).is_ok(),
            "other clients have their own bucket"
        );
        assert!(limiter.take("a", t0 + Duration::from_millis(500)).is_ok());
        assert!(limiter.take("a", t0 + Duration::from_millis(500)).is_err());
    }
}
