//! The HTTP client of the commands that talk to a running daemon: `list`, `cancel`,
//! `retry`, `send-event`, and `inspect`/`report` when a daemon holds the data directory.
//!
//! Every request is built one way (base URL from `--url`/`CASEWORK_URL`, bearer token from
//! `--token`/`CASEWORK_TOKEN`, JSON in and out) and every failure is reported one way: an
//! API error as `message (code)`, a daemon that does not answer with the URL that was tried
//! and what to check.

use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Where `casework serve` listens by default, as a URL.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7420";

/// Largest response body read (an instance view with a long journal can be large).
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// How to reach the daemon: shared by every command that talks to one.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// The daemon's base URL (HOST:PORT is read as http://HOST:PORT; `--addr` is the
    /// older name of this flag).
    #[arg(
        long,
        alias = "addr",
        env = "CASEWORK_URL",
        default_value = DEFAULT_URL,
        value_name = "URL"
    )]
    pub url: String,
    /// API token, sent as `Authorization: Bearer TOKEN`; needed when the daemon has
    /// tokens. Prefer CASEWORK_TOKEN: a flag is visible to other users in `ps`.
    #[arg(
        long,
        env = "CASEWORK_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

/// What went wrong talking to the daemon.
#[derive(Debug)]
pub enum Error {
    /// The daemon answered with an API error (`{"error": {"code", "message"}}`).
    Api {
        status: u16,
        code: String,
        message: String,
        /// What the user can do about it, when the CLI knows better than the message.
        hint: Option<String>,
    },
    /// Nothing answered at the URL (refused, unknown host, timeout).
    Unreachable { url: String, detail: String },
    /// Something answered, but not like a Casework daemon.
    Unexpected { url: String, detail: String },
    /// The `--url` value cannot be used.
    BadUrl { url: String, detail: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Api {
                code,
                message,
                hint,
                ..
            } => {
                write!(f, "{message} ({code})")?;
                if let Some(h) = hint {
                    write!(f, "\nhint: {h}")?;
                }
                Ok(())
            }
            Error::Unreachable { url, detail } => write!(
                f,
                "no casework daemon answered at {url} ({detail}); check that `casework serve` \
                 is running and listening there, or point --url (CASEWORK_URL) at it"
            ),
            Error::Unexpected { url, detail } => write!(
                f,
                "{url} did not answer like a casework daemon: {detail}; check --url (CASEWORK_URL)"
            ),
            Error::BadUrl { url, detail } => write!(
                f,
                "--url {url}: {detail}; write it like {DEFAULT_URL} (or set CASEWORK_URL)"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// A client for one daemon.
pub struct Client {
    base: url::Url,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(args: &DaemonArgs) -> Result<Client, Error> {
        let base = parse_base(&args.url)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // API errors carry a JSON body worth reading: not an `Err` without it.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Client {
            base,
            token: args.token.clone().filter(|t| !t.is_empty()),
            agent,
        })
    }

    /// `req` with the token, if there is one, as `Authorization: Bearer`.
    fn authorized<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// The daemon's base URL, for messages.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// The URL of a route: `segments` are percent-encoded, so an id cannot change the path.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> url::Url {
        let mut u = self.base.clone();
        if let Ok(mut path) = u.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query);
        }
        u
    }

    /// `GET` a route; the JSON it answers.
    pub fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value, Error> {
        let url = self.url(segments, query);
        let req = self.authorized(self.agent.get(url.as_str()));
        self.answer(&url, req.call())
    }

    /// `GET` a route that answers a file, copied to `to` as it arrives (no time limit:
    /// a backup can be large); the bytes copied. An error answer is the API's error.
    pub fn download(&self, segments: &[&str], to: &mut dyn std::io::Write) -> Result<u64, Error> {
        let url = self.url(segments, &[]);
        let req = self.authorized(
            self.agent
                .get(url.as_str())
                .config()
                .timeout_global(None)
                .build(),
        );
        let mut resp = match req.call() {
            Ok(r) if r.status() == 200 => r,
            other => {
                self.answer(&url, other)?;
                return Err(Error::Unexpected {
                    url: self.base().to_string(),
                    detail: format!("{} answered JSON, not a file", url.path()),
                });
            }
        };
        let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut body, to).map_err(|e| Error::Unexpected {
            url: self.base().to_string(),
            detail: format!("reading {}: {e}", url.path()),
        })
    }

    /// `DELETE` a route; the JSON it answers.
    pub fn delete(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value, Error> {
        let url = self.url(segments, query);
        let req = self.authorized(self.agent.delete(url.as_str()));
        self.answer(&url, req.call())
    }

    /// `POST` a route with a JSON body (or none); the JSON it answers.
    pub fn post(&self, segments: &[&str], body: Option<&Value>) -> Result<Value, Error> {
        let url = self.url(segments, &[]);
        let req = self.authorized(self.agent.post(url.as_str()));
        let sent = match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        };
        self.answer(&url, sent)
    }

    fn answer(
        &self,
        url: &url::Url,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, Error> {
        let shown = self.base().to_string();
        let mut resp = sent.map_err(|e| match e {
            ureq::Error::BadUri(d) => Error::BadUrl {
                url: shown.clone(),
                detail: d,
            },
            ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed => Error::Unreachable {
                url: shown.clone(),
                detail: e.to_string(),
            },
            other => Error::Unexpected {
                url: shown.clone(),
                detail: other.to_string(),
            },
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string()
            .map_err(|e| Error::Unexpected {
                url: shown.clone(),
                detail: format!("reading the answer to {}: {e}", url.path()),
            })?;
        let body: Option<Value> = serde_json::from_str(&text).ok();
        if (200..300).contains(&status) {
            return body.ok_or_else(|| Error::Unexpected {
                url: shown.clone(),
                detail: format!("HTTP {status} for {} is not JSON", url.path()),
            });
        }
        let err = body.as_ref().map(|b| &b["error"]);
        match (
            err.and_then(|e| e["code"].as_str()),
            err.and_then(|e| e["message"].as_str()),
        ) {
            (Some(code), Some(message)) => Err(Error::Api {
                status,
                code: code.to_string(),
                message: message.to_string(),
                hint: self.hint(code),
            }),
            _ => Err(Error::Unexpected {
                url: shown,
                detail: format!(
                    "HTTP {status} for {} with a body that is not a casework error: {}",
                    url.path(),
                    text.chars().take(200).collect::<String>()
                ),
            }),
        }
    }

    /// What to do about an error the daemon's message explains in HTTP terms.
    fn hint(&self, code: &str) -> Option<String> {
        let base = self.base();
        match (code, &self.token) {
            ("unauthorized", None) => Some(format!(
                "the daemon at {base} needs an API token: set CASEWORK_TOKEN or pass --token"
            )),
            ("unauthorized", Some(_)) => Some(format!(
                "the daemon at {base} did not accept the token from --token / CASEWORK_TOKEN"
            )),
            ("forbidden", _) => Some(
                "use a token with the scope named above (cancel and retry need `admin`, \
                 send-event needs `start`)"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

/// `--url` as a base URL: `HOST:PORT` (what `--addr` took) means `http://HOST:PORT`.
fn parse_base(text: &str) -> Result<url::Url, Error> {
    let bad = |detail: String| Error::BadUrl {
        url: text.to_string(),
        detail,
    };
    let full = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let u = url::Url::parse(&full).map_err(|e| bad(e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad(format!(
            "the scheme must be http or https, not {}",
            u.scheme()
        )));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host".into()));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(bad("give the daemon's base URL, without ? or #".into()));
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> Client {
        Client::new(&DaemonArgs {
            url: url.into(),
            token: None,
        })
        .unwrap()
    }

    #[test]
    fn the_default_url_is_where_serve_listens() {
        assert_eq!(
            DEFAULT_URL,
            format!("http://{}", crate::cli::serve::DEFAULT_LISTEN)
        );
    }

    #[test]
    fn an_addr_without_scheme_is_http_and_a_path_prefix_is_kept() {
        let c = client("127.0.0.1:7421");
        assert_eq!(c.base(), "http://127.0.0.1:7421");
        assert_eq!(
            c.url(&["v1", "instances"], &[("status", "failed")])
                .as_str(),
            "http://127.0.0.1:7421/v1/instances?status=failed"
        );
        let c = client("https://ops.example.com/casework/");
        assert_eq!(
            c.url(&["v1", "events"], &[]).as_str(),
            "https://ops.example.com/casework/v1/events"
        );
    }

    #[test]
    fn an_id_cannot_change_the_route() {
        let c = client(DEFAULT_URL);
        assert_eq!(
            c.url(&["v1", "instances", "../workflows?x", "cancel"], &[])
                .as_str(),
            "http://127.0.0.1:7420/v1/instances/..%2Fworkflows%3Fx/cancel"
        );
    }

    #[test]
    fn unusable_urls_are_refused_with_the_flag_named() {
        for bad in [
            "ftp://host",
            "http://",
            "http://h:1/?a=b",
            "http://h:notaport",
        ] {
            let e = Client::new(&DaemonArgs {
                url: bad.into(),
                token: None,
            })
            .err()
            .unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(e.to_string().starts_with(&format!("--url {bad}: ")), "{e}");
        }
    }

    #[test]
    fn an_api_error_reads_message_then_code_and_a_missing_token_says_what_to_set() {
        let e = Error::Api {
            status: 401,
            code: "unauthorized".into(),
            message: "send a valid token".into(),
            hint: client(DEFAULT_URL).hint("unauthorized"),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("send a valid token (unauthorized)\nhint: "),
            "{text}"
        );
        assert!(text.contains("CASEWORK_TOKEN"), "{text}");
    }
}
