//! Route templates inferred from concrete paths, for APIs without an OpenAPI spec.
//!
//! `/users/42/orders/7f9c0a52-...` becomes `/users/{id}/orders/{id}`: numeric, UUID and
//! hash-like segments are parameters, so per-route statistics group the way people think
//! about an API instead of one row per object.

/// The template for `path` (query string already removed).
pub fn infer_template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_parameter(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn is_parameter(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let bytes = seg.as_bytes();
    // Plain numbers, possibly signed: ids, years, page numbers in paths.
    if bytes.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(seg) {
        return true;
    }
    // Hex digests and object ids (Mongo ObjectId is 24, SHA-1 40, SHA-256 64).
    if seg.len() >= 16
        && bytes.iter().all(u8::is_ascii_hexdigit)
        && bytes.iter().any(u8::is_ascii_digit)
    {
        return true;
    }
    // Long opaque tokens that mix letters and digits, such as base62 ids (`cus_9s8d7f6g5h4j`):
    // words rarely carry three or more digits.
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    seg.len() >= 10
        && digits >= 3
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

fn is_uuid(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::infer_template;

    #[test]
    fn infers_parameters() {
        assert_eq!(infer_template("/pets/42"), "/pets/{id}");
        assert_eq!(
            infer_template("/users/550e8400-e29b-41d4-a716-446655440000/orders"),
            "/users/{id}/orders"
        );
        assert_eq!(
            infer_template("/blobs/9f86d081884c7d659a2feaa0c55ad015"),
            "/blobs/{id}"
        );
        assert_eq!(
            infer_template("/customers/cus_9s8d7f6g5h4j"),
            "/customers/{id}"
        );
        assert_eq!(infer_template("/v1/search"), "/v1/search");
        assert_eq!(infer_template("/v2/healthcheck"), "/v2/healthcheck");
        assert_eq!(infer_template("/"), "/");
        assert_eq!(infer_template(""), "/");
        assert_eq!(infer_template("/a//b/"), "/a//b/");
    }
}
