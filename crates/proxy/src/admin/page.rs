//! The web page: plain HTML, CSS and JavaScript compiled into the binary (no build step; the
//! charts are SVG drawn by `page.js` itself, no chart library), and its icon (`favicon.svg`).
//! It holds no data (everything comes from the API with the token the user gives it: in the
//! URL fragment `#token=…`, which browsers never send, or in its sign-in form), so it is served
//! without a token. A strict Content-Security-Policy allows only this origin's script, style
//! and API calls.

use super::Admin;
use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use axum::routing::get;
use std::sync::Arc;

const HTML: &str = include_str!("page.html");
const JS: &str = include_str!("page.js");
const CSS: &str = include_str!("page.css");
const FAVICON: &str = include_str!("favicon.svg");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

pub(super) fn routes() -> axum::Router<Arc<Admin>> {
    axum::Router::new()
        .route(
            "/",
            get(|| async { asset(HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/admin.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/admin.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset(FAVICON, "image/svg+xml") }),
        )
}
