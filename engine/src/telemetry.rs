//! OpenTelemetry traces: Casework's own spans (`http` per request, `instance` per
//! instance in memory, `step` per plugin call) exported over OTLP/HTTP when
//! `otlp_endpoint` is set, a W3C `traceparent` taken from requests, and the current
//! span's `traceparent` for the plugins' outgoing HTTP requests.
//!
//! Off by default: without an endpoint no layer is installed, spans carry no OpenTelemetry
//! context, and [`current_traceparent`] gives `None`. What is exported is what the log
//! already shows (span fields and log lines at `info` and above, Casework's targets only),
//! so it is held to the log's rules: no query strings, headers, bodies or secrets.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;

/// How long one export may take before the batch is dropped (and logged by the SDK).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The path OTLP/HTTP receivers take traces on, under the endpoint's base.
const TRACES_PATH: &str = "/v1/traces";

/// Spans being batched and sent to an OTLP receiver; [`Export::shutdown`] sends what is
/// left (at a graceful stop).
pub struct Export {
    provider: SdkTracerProvider,
}

/// The URL spans are sent to for the endpoint an operator gave (`http://host:4318`, or the
/// full URL ending in `/v1/traces`), or why it cannot be one.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let url = url::Url::parse(endpoint.trim()).map_err(|e| format!("does not parse: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "scheme `{}` is not supported; use http:// (a local collector or agent; TLS is not built in)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err("must not carry credentials or a query string".into());
    }
    let base = url.as_str().trim_end_matches('/');
    Ok(if base.ends_with(TRACES_PATH) {
        base.to_string()
    } else {
        format!("{base}{TRACES_PATH}")
    })
}

impl Export {
    /// Batches spans for the receiver at `endpoint` (checked by [`traces_url`]). Nothing
    /// is sent until the first span ends; a receiver that is down loses spans, never work.
    pub fn start(endpoint: &str) -> Result<Export, String> {
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("the OTLP exporter could not be built: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("casework")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Export { provider })
    }

    /// The tracing layer that turns Casework's spans into OpenTelemetry spans for this
    /// export: `info` and above, Casework's own targets only (libraries' spans, the HTTP
    /// client's that sends these included, stay out).
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let only_ours = tracing_subscriber::filter::Targets::new()
            .with_target("casework", tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("casework"))
            .with_filter(only_ours)
    }

    /// Send the spans still batched; waits at most the export timeout.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "not every span reached the OTLP receiver");
        }
    }
}

/// Makes `span` a child of the caller's span named by a W3C `traceparent` (and
/// `tracestate`) header, if the request has a valid one. A malformed header is ignored,
/// as the W3C recommendation says: the request gets a trace of its own.
pub fn adopt_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    struct Headers<'a>(&'a axum::http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    if cx.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: then there is nothing to join.
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` header value naming the current span, for a request made on its
/// behalf (a plugin's outgoing HTTP call), or `None` when spans are not exported.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_gets_the_traces_path_once() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://gw/otel").unwrap(),
            "http://gw/otel/v1/traces"
        );
    }

    #[test]
    fn an_endpoint_that_cannot_work_says_why() {
        assert!(traces_url("collector:4318").unwrap_err().contains("scheme"));
        assert!(traces_url("https://c:4318")
            .unwrap_err()
            .contains("TLS is not built in"));
        assert!(traces_url("http://user:pw@c:4318")
            .unwrap_err()
            .contains("credentials"));
        assert!(traces_url("not a url")
            .unwrap_err()
            .contains("does not parse"));
    }

    #[test]
    fn without_export_there_is_no_traceparent() {
        let span = tracing::info_span!("step");
        let _in = span.enter();
        assert_eq!(current_traceparent(), None);
    }
}
