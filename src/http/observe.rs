//! What every request of both listeners is logged with: a request id and a span.
//!
//! The id is the request's `x-request-id` when it is sane (1 to [`REQUEST_ID_MAX`] visible ASCII
//! characters), otherwise a fresh ULID; it is recorded in the request's span (`request`, at info
//! level, so every line logged while the request is handled carries it, with the method and the
//! path) and returned in the response's `x-request-id`.

use axum::{
    Router,
    http::{HeaderName, HeaderValue, Request},
    middleware,
};
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::{MakeSpan, TraceLayer},
};

/// The header that carries the request id, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming request id kept.
pub const REQUEST_ID_MAX: usize = 128;

/// True when an incoming request id may be kept: 1 to [`REQUEST_ID_MAX`] visible ASCII
/// characters (no spaces, no control characters).
pub fn sane_request_id(value: &[u8]) -> bool {
    (1..=REQUEST_ID_MAX).contains(&value.len()) && value.iter().all(|b| b.is_ascii_graphic())
}

/// A new request id: a ULID (sortable by time).
#[derive(Debug, Clone, Copy)]
struct NewUlid;

impl MakeRequestId for NewUlid {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&ulid::Ulid::new().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// The request's span: method, path (not the query: Socket.IO's carries session ids) and id.
#[derive(Debug, Clone, Copy)]
struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> tracing::Span {
        let id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = %id,
        )
    }
}

/// Drops an incoming request id that is not [`sane_request_id`], so a new one is made.
async fn drop_insane_id(mut request: axum::extract::Request) -> axum::extract::Request {
    if request
        .headers()
        .get_all(REQUEST_ID)
        .iter()
        .enumerate()
        .any(|(at, value)| at > 0 || !sane_request_id(value.as_bytes()))
    {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

/// `router` with request ids and request spans (see the module); applied outermost.
pub fn observe(router: Router) -> Router {
    router
        .layer(TraceLayer::new_for_http().make_span_with(RequestSpan))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, NewUlid))
        .layer(middleware::map_request(drop_insane_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_visible_ascii() {
        assert!(sane_request_id(b"abc-123_XYZ.4:5/6"));
        assert!(sane_request_id(&[b'a'; REQUEST_ID_MAX]));
        assert!(!sane_request_id(&[b'a'; REQUEST_ID_MAX + 1]));
        assert!(!sane_request_id(b""));
        assert!(!sane_request_id(b"has space"));
        assert!(!sane_request_id(b"tab\there"));
        assert!(!sane_request_id("caf\u{e9}".as_bytes()));
        assert!(!sane_request_id(b"nul\0"));
    }
}
