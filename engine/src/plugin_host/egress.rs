//! Outbound HTTP for plugins: the grant check and the request itself.
//!
//! The check runs on the host after the URL is parsed the way the HTTP client
//! will parse it (WHATWG rules via the `url` crate), so tricks that fool a
//! string comparison — `user@host` authorities, decimal or hex IP literals,
//! default ports spelled out or left off, upper-case hosts — are compared in
//! their normalised form. Redirects are never followed (a granted host could
//! otherwise bounce a request anywhere), and a plugin cannot set `Host` or other
//! hop-by-hop headers.

use std::time::Duration;

/// Largest response body handed back to a plugin.
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest request body a plugin may send.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Headers a plugin may not set: they would let it address another host than
/// the URL says, or desynchronise the connection.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "keep-alive",
    "trailer",
];

/// Why a request was not sent, or did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EgressError {
    /// The origin is not granted; the message names the origin, never the path or query.
    Denied(String),
    /// The request is malformed.
    Invalid(String),
    /// No complete response in time; the request may have reached the server.
    Timeout,
    /// DNS, connect or TLS failure.
    Connection(String),
    /// The response body exceeded [`MAX_RESPONSE_BYTES`].
    TooLarge,
}

/// A request after the grant check: the URL is the normalised one that is sent.
#[derive(Debug)]
pub struct CheckedRequest {
    pub method: &'static str,
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The normalised origin of a parsed URL: `scheme://host:port`.
fn origin(url: &url::Url) -> Option<String> {
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => format!("[{ip}]"),
    };
    Some(format!(
        "{}://{}:{}",
        url.scheme(),
        host,
        url.port_or_known_default()?
    ))
}

/// Checks a plugin's request against its granted origins.
///
/// ```
/// use casework::plugin_host::egress::{check, EgressError};
/// let granted = vec!["https://api.stripe.com:443".to_string()];
/// let ok = check("POST", "https://API.stripe.com/v1/refunds", vec![], vec![], &granted).unwrap();
/// assert_eq!(ok.url.as_str(), "https://api.stripe.com/v1/refunds");
/// // Credentials in the authority move the real host after the `@`.
/// assert!(matches!(
///     check("GET", "https://api.stripe.com@evil.example/", vec![], vec![], &granted),
///     Err(EgressError::Invalid(_))
/// ));
/// assert!(matches!(
///     check("GET", "https://api.stripe.com:8443/", vec![], vec![], &granted),
///     Err(EgressError::Denied(_))
/// ));
/// ```
pub fn check(
    method: &'static str,
    raw_url: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    granted: &[String],
) -> Result<CheckedRequest, EgressError> {
    let url = url::Url::parse(raw_url)
        .map_err(|e| EgressError::Invalid(format!("the URL does not parse: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(EgressError::Invalid(format!(
            "scheme `{}` is not allowed; use http or https",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EgressError::Invalid(
            "credentials in the URL are not allowed; send them in a header".into(),
        ));
    }
    let origin = origin(&url).ok_or_else(|| EgressError::Invalid("the URL has no host".into()))?;
    if !granted.iter().any(|g| g == &origin) {
        return Err(EgressError::Denied(origin));
    }
    // The HTTP client re-parses the URL with the `http` crate's rules; insist both
    // parsers see the same authority so no differential can redirect the request.
    let uri: ureq::http::Uri = url
        .as_str()
        .parse()
        .map_err(|_| EgressError::Invalid("the URL is not a valid HTTP URI".into()))?;
    let same_host = uri.host().map(|h| h.to_ascii_lowercase())
        == url.host_str().map(|h| h.to_ascii_lowercase());
    let same_port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    }) == url.port_or_known_default();
    if !same_host || !same_port {
        return Err(EgressError::Invalid("the URL is ambiguous".into()));
    }
    for (name, value) in &headers {
        let lower = name.to_ascii_lowercase();
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
            return Err(EgressError::Invalid(format!(
                "header `{name}` is set by the host, not the plugin"
            )));
        }
        if ureq::http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || ureq::http::HeaderValue::from_str(value).is_err()
        {
            return Err(EgressError::Invalid(format!(
                "header `{name}` has an invalid name or value"
            )));
        }
    }
    if body.len() > MAX_REQUEST_BYTES {
        return Err(EgressError::Invalid(format!(
            "the request body is {} bytes; the limit is {MAX_REQUEST_BYTES}",
            body.len()
        )));
    }
    Ok(CheckedRequest {
        method,
        url,
        headers,
        body,
    })
}

/// Sends a checked request, blocking the calling thread (run it on a blocking pool).
pub fn send(request: CheckedRequest, timeout: Duration) -> Result<Response, EgressError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .user_agent("casework-plugin-host")
        .build()
        .into();
    let mut builder = ureq::http::Request::builder()
        .method(request.method)
        .uri(request.url.as_str());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let http_request = builder
        .body(request.body)
        .map_err(|e| EgressError::Invalid(e.to_string()))?;
    let response = agent.run(http_request).map_err(|e| match e {
        ureq::Error::Timeout(_) => EgressError::Timeout,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => EgressError::Timeout,
        other => EgressError::Connection(connection_message(&other)),
    })?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response
        .into_body()
        .into_with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => EgressError::TooLarge,
            ureq::Error::Timeout(_) => EgressError::Timeout,
            other => EgressError::Connection(connection_message(&other)),
        })?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The client's error without the URL, whose path or query may carry customer data.
fn connection_message(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => format!("{:?}", io.kind()).to_lowercase().replace('_', " "),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Tls(_) => "TLS handshake failed".into(),
        _ => "the request failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted() -> Vec<String> {
        vec![
            "https://api.stripe.com:443".to_string(),
            "http://127.0.0.1:18080".to_string(),
        ]
    }

    fn verdict(url: &str) -> Result<String, EgressError> {
        check("GET", url, vec![], vec![], &granted()).map(|r| r.url.to_string())
    }

    #[test]
    fn granted_origins_pass_in_their_normalised_form() {
        assert_eq!(
            verdict("https://api.stripe.com:443/v1/refunds?x=1").unwrap(),
            "https://api.stripe.com/v1/refunds?x=1"
        );
        assert!(verdict("HTTPS://API.STRIPE.COM/v1").is_ok());
        assert!(verdict("http://127.0.0.1:18080/v2/enqueue").is_ok());
        // The same address spelled as a single number is the same origin.
        assert!(verdict("http://2130706433:18080/").is_ok());
    }

    #[test]
    fn other_hosts_ports_schemes_and_ip_literals_are_denied() {
        for url in [
            "https://api.stripe.com:8443/",
            "http://api.stripe.com/",
            "https://api.stripe.com.evil.example/",
            "https://evil.example/?to=api.stripe.com",
            "http://127.0.0.1:18081/",
            "http://[::1]:18080/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:18080/",
        ] {
            assert!(
                matches!(verdict(url), Err(EgressError::Denied(_))),
                "{url} should be denied, got {:?}",
                verdict(url)
            );
        }
    }

    #[test]
    fn malformed_or_tricky_urls_are_refused() {
        for url in [
            "https://api.stripe.com@evil.example/",
            "https://user:pass@api.stripe.com/",
            "file:///etc/passwd",
            "ftp://api.stripe.com:443/",
            "not a url",
            "//api.stripe.com/",
        ] {
            assert!(
                matches!(verdict(url), Err(EgressError::Invalid(_))),
                "{url} should be invalid, got {:?}",
                verdict(url)
            );
        }
    }

    #[test]
    fn host_and_framing_headers_are_refused() {
        for header in ["Host", "host", "Content-Length", "Transfer-Encoding"] {
            let result = check(
                "POST",
                "https://api.stripe.com/v1/refunds",
                vec![(header.to_string(), "evil.example".to_string())],
                vec![],
                &granted(),
            );
            assert!(matches!(result, Err(EgressError::Invalid(_))), "{header}");
        }
        let newline = check(
            "GET",
            "https://api.stripe.com/",
            vec![("X-A".into(), "a\r\nHost: evil".into())],
            vec![],
            &granted(),
        );
        assert!(matches!(newline, Err(EgressError::Invalid(_))));
    }

    #[test]
    fn denial_names_the_origin_only() {
        let Err(EgressError::Denied(msg)) =
            verdict("https://evil.example/customer/4242?email=a@b.c")
        else {
            panic!("expected a denial");
        };
        assert_eq!(msg, "https://evil.example:443");
    }
}
