//! The only door to the host: component imports on wasm32, the thread-local
//! fake from [`testing`](crate::testing) everywhere else.

use crate::http::Method;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::fake::*;
#[cfg(target_arch = "wasm32")]
pub(crate) use component::*;

/// An HTTP request as it crosses the boundary, after the builder is done.
#[derive(Clone, Debug)]
pub(crate) struct OutgoingRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[cfg(target_arch = "wasm32")]
mod component {
    use super::OutgoingRequest;
    use crate::__bindings::casework::plugin as wit;
    use crate::http::{self, Method};
    use crate::log::Level;
    use crate::secrets::LookupError;

    pub(crate) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::log::Level::Trace,
            Level::Debug => wit::log::Level::Debug,
            Level::Info => wit::log::Level::Info,
            Level::Warn => wit::log::Level::Warn,
            Level::Error => wit::log::Level::Error,
        };
        wit::log::log(level, message);
    }

    pub(crate) fn config_get(key: &str) -> Option<String> {
        wit::config::get(key)
    }

    pub(crate) fn secret_get(name: &str) -> Result<String, LookupError> {
        wit::secrets::get(name).map_err(|err| match err {
            wit::secrets::SecretError::NotGranted => LookupError::NotGranted,
            wit::secrets::SecretError::NotFound => LookupError::NotFound,
            wit::secrets::SecretError::Unavailable => LookupError::Unavailable,
        })
    }

    pub(crate) fn http_send(request: OutgoingRequest) -> Result<http::Response, http::Error> {
        use wit::http as w;
        let method = match request.method {
            Method::Get => w::Method::Get,
            Method::Head => w::Method::Head,
            Method::Post => w::Method::Post,
            Method::Put => w::Method::Put,
            Method::Patch => w::Method::Patch,
            Method::Delete => w::Method::Delete,
            Method::Options => w::Method::Options,
        };
        let request = w::Request {
            method,
            url: request.url,
            headers: request.headers,
            body: request.body,
        };
        match w::send(&request) {
            Ok(response) => Ok(http::Response {
                status: response.status,
                headers: response.headers,
                body: response.body,
            }),
            Err(w::HttpError::Denied(why)) => Err(http::Error::Denied(why)),
            Err(w::HttpError::InvalidRequest(why)) => Err(http::Error::InvalidRequest(why)),
            Err(w::HttpError::Timeout) => Err(http::Error::Timeout),
            Err(w::HttpError::Connection(why)) => Err(http::Error::Connection(why)),
            Err(w::HttpError::ResponseTooLarge) => Err(http::Error::ResponseTooLarge),
        }
    }

    pub(crate) fn now_ms() -> u64 {
        wit::clock::now_ms()
    }

    pub(crate) fn random_bytes(len: u32) -> Vec<u8> {
        wit::random::get_bytes(len)
    }
}
