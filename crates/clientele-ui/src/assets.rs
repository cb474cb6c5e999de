//! The stylesheet and the script, compiled into the binary.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const STYLE: &str = include_str!("../assets/style.css");
const SCRIPT: &str = include_str!("../assets/app.js");

/// FNV-1a over both files, computed at compile time: it changes whenever either file does.
const HASH: u64 = {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let (a, b) = (STYLE.as_bytes(), SCRIPT.as_bytes());
    let mut i = 0;
    while i < a.len() + b.len() {
        let byte = if i < a.len() { a[i] } else { b[i - a.len()] };
        h ^= byte as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
};

/// What pages put in `?v=` after the asset paths, so a changed asset is a new address and
/// browsers may keep each version for a day.
pub fn version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("{HASH:016x}"));
    &VERSION
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}
