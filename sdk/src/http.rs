//! Outbound HTTP through the host, which allows only the origins granted in
//! the manifest, follows no redirects and enforces its own timeout.
//!
//! ```
//! use casework_sdk::{http, testing::FakeHost};
//! use serde_json::json;
//!
//! let host = FakeHost::new();
//! host.respond(
//!     http::Method::Post,
//!     "https://api.example.com/v1/things",
//!     http::Response::from_json(201, &json!({"id": "t_1"})),
//! );
//!
//! let response = http::post("https://api.example.com/v1/things")
//!     .bearer_auth("tok")
//!     .json(&json!({"name": "x"}))
//!     .send()
//!     .unwrap();
//! assert_eq!(response.status, 201);
//! let body: serde_json::Value = response.json().unwrap();
//! assert_eq!(body["id"], "t_1");
//!
//! let sent = &host.requests()[0];
//! assert_eq!(sent.header("authorization"), Some("Bearer tok"));
//! assert_eq!(sent.header("content-type"), Some("application/json"));
//! assert_eq!(sent.body_json(), json!({"name": "x"}));
//! ```

use crate::host::OutgoingRequest;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;

/// HTTP method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
}

impl Method {
    /// The method as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why no response came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The origin is not in the manifest's `[grants] http`.
    Denied(String),
    /// The request was malformed, or its body could not be encoded.
    InvalidRequest(String),
    /// No complete response in time: the server may have acted on it.
    Timeout,
    /// DNS, connect or TLS failure, or a broken connection.
    Connection(String),
    /// The response body exceeded the host's cap.
    ResponseTooLarge,
}

impl Error {
    /// Whether the outcome is unknown or transient, so a retry with the same
    /// idempotency key is the right move.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Timeout | Error::Connection(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied(why) => write!(f, "request denied by the host: {why}"),
            Error::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Error::Timeout => f.write_str("timed out waiting for the response"),
            Error::Connection(why) => write!(f, "connection failed: {why}"),
            Error::ResponseTooLarge => f.write_str("response body exceeds the host's size limit"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for crate::Error {
    /// Maps transport failures to plugin errors: timeouts and connection
    /// failures are retryable (the engine retries with the same idempotency
    /// key), everything else is permanent.
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::Denied(_) => "http_denied",
            Error::InvalidRequest(_) => "http_invalid_request",
            Error::Timeout => "http_timeout",
            Error::Connection(_) => "http_connection",
            Error::ResponseTooLarge => "http_response_too_large",
        };
        if err.is_retryable() {
            crate::Error::retryable(code, err.to_string())
        } else {
            crate::Error::permanent(code, err.to_string())
        }
    }
}

/// A response with its whole body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in the order received.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with no headers and an empty body (useful in tests).
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response with a JSON body and `content-type: application/json`.
    pub fn from_json(status: u16, body: &serde_json::Value) -> Self {
        Self::new(status)
            .with_header("content-type", "application/json")
            .with_body(body.to_string())
    }

    /// Adds a header (builder style, for tests).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces the body (builder style, for tests).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as UTF-8 text, lossily.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON into `T`.
    ///
    /// A body that does not match is a permanent `bad_response` error naming
    /// the field, without quoting the provider's values.
    pub fn json<T: DeserializeOwned>(&self) -> crate::Result<T> {
        crate::decode::json(&self.body).map_err(|err| {
            crate::Error::permanent(
                "bad_response",
                err.describe(&format!(
                    "unexpected body in the HTTP {} response",
                    self.status
                )),
            )
        })
    }
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Starts a GET request.
pub fn get(url: impl Into<String>) -> RequestBuilder {
    request(Method::Get, url)
}

/// Starts a POST request.
pub fn post(url: impl Into<String>) -> RequestBuilder {
    request(Method::Post, url)
}

/// Starts a PUT request.
pub fn put(url: impl Into<String>) -> RequestBuilder {
    request(Method::Put, url)
}

/// Starts a PATCH request.
pub fn patch(url: impl Into<String>) -> RequestBuilder {
    request(Method::Patch, url)
}

/// Starts a DELETE request.
pub fn delete(url: impl Into<String>) -> RequestBuilder {
    request(Method::Delete, url)
}

/// Starts a request with any method.
pub fn request(method: Method, url: impl Into<String>) -> RequestBuilder {
    RequestBuilder {
        request: OutgoingRequest {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        },
        error: None,
    }
}

/// A request being put together; nothing is sent before [`send`](Self::send).
#[must_use = "a request does nothing until `send` is called"]
pub struct RequestBuilder {
    request: OutgoingRequest,
    // Encoding errors are kept until `send` so the builder chain stays flat.
    error: Option<Error>,
}

impl RequestBuilder {
    /// Appends a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.headers.push((name.into(), value.into()));
        self
    }

    /// Sets `authorization: Bearer <token>`.
    pub fn bearer_auth(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// Sets `authorization: Basic base64(user:password)` (RFC 7617).
    pub fn basic_auth(self, user: &str, password: &str) -> Self {
        let credentials = base64(format!("{user}:{password}").as_bytes());
        self.header("authorization", format!("Basic {credentials}"))
    }

    /// Serializes `body` as JSON and sets `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => {
                self.request.body = bytes;
                self.header("content-type", "application/json")
            }
            Err(err) => {
                self.error = Some(Error::InvalidRequest(format!(
                    "could not encode JSON body: {err}"
                )));
                self
            }
        }
    }

    /// Encodes `pairs` as `application/x-www-form-urlencoded` and sets the
    /// content type. Keys may repeat and may use bracket notation
    /// (`metadata[order_id]`) for APIs that expect it.
    pub fn form<I, K, V>(mut self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut encoder = form_urlencoded::Serializer::new(String::new());
        for (key, value) in pairs {
            encoder.append_pair(key.as_ref(), value.as_ref());
        }
        self.request.body = encoder.finish().into_bytes();
        self.header("content-type", "application/x-www-form-urlencoded")
    }

    /// Sets a raw body; set the content type yourself.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = body.into();
        self
    }

    /// Sends the request and waits for the whole response. Any status,
    /// including 4xx and 5xx, is an `Ok` response: only transport failures
    /// are errors.
    pub fn send(self) -> Result<Response, Error> {
        if let Some(err) = self.error {
            return Err(err);
        }
        crate::host::http_send(self.request)
    }
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved
/// characters), so ids from input cannot change the path.
///
/// ```
/// use casework_sdk::http::encode_path_segment;
///
/// assert_eq!(encode_path_segment("cus_42"), "cus_42");
/// assert_eq!(encode_path_segment("../admin?x=1"), "..%2Fadmin%3Fx%3D1");
/// ```
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn basic_auth_matches_rfc_7617_example() {
        let host = FakeHost::new();
        host.respond(Method::Get, "https://x.test/", Response::new(200));
        get("https://x.test/")
            .basic_auth("Aladdin", "open sesame")
            .send()
            .unwrap();
        assert_eq!(
            host.requests()[0].header("Authorization"),
            Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );
    }

    #[test]
    fn form_encodes_brackets_and_spaces() {
        let host = FakeHost::new();
        host.respond(Method::Post, "https://x.test/f", Response::new(200));
        post("https://x.test/f")
            .form([("metadata[order id]", "a&b=c"), ("amount", "100")])
            .send()
            .unwrap();
        let sent = &host.requests()[0];
        assert_eq!(
            sent.body_text(),
            "metadata%5Border+id%5D=a%26b%3Dc&amount=100"
        );
        assert_eq!(
            sent.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
    }

    #[test]
    fn transport_errors_map_to_retryable_or_permanent() {
        let timeout: crate::Error = Error::Timeout.into();
        assert!(timeout.is_retryable());
        assert_eq!(timeout.code(), "http_timeout");
        let refused: crate::Error = Error::Connection("refused".into()).into();
        assert!(refused.is_retryable());
        let denied: crate::Error = Error::Denied("https://evil.test:443".into()).into();
        assert!(!denied.is_retryable());
        assert_eq!(denied.code(), "http_denied");
    }

    #[test]
    fn response_json_names_the_field_but_not_the_value() {
        let response = Response::from_json(200, &serde_json::json!({"count": "tok_secret"}));
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Body {
            count: u32,
        }
        let err = response.json::<Body>().unwrap_err();
        assert_eq!(err.code(), "bad_response");
        assert!(err.message().contains("`count`"), "{err}");
        assert!(!err.message().contains("tok_secret"), "{err}");
    }
}
