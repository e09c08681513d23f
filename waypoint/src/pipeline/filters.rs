//! Route filters: header modifiers, URL rewrite, redirect.

use http::header::HOST;
use http::{HeaderMap, HeaderValue, Uri};
use waypoint_rules::{HeaderOps, PathRewrite, Redirect, Rewrite};

/// Applies remove, then set, then add, in the order Envoy (so Istio, for both
/// VirtualService `headers` and Gateway API modifiers) applies them.
pub fn apply_headers(ops: &HeaderOps, headers: &mut HeaderMap) {
    for name in &ops.remove {
        headers.remove(name);
    }
    for (name, value) in &ops.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &ops.add {
        headers.append(name.clone(), value.clone());
    }
}

/// The `Host` of a mirrored request: `-shadow` after the host name, before any port, as
/// Envoy appends it (`reviews:9080` is mirrored as `reviews-shadow:9080`).
pub fn shadow_host(host: &str) -> String {
    match host.parse::<http::uri::Authority>() {
        Ok(a) => match a.port() {
            Some(port) => format!("{}-shadow:{port}", a.host()),
            None => format!("{}-shadow", a.host()),
        },
        Err(_) => format!("{host}-shadow"),
    }
}

/// `path` with the prefix `matched` replaced by `replacement`, on whole path elements.
fn replace_prefix(path: &str, matched: &str, replacement: &str) -> String {
    let matched = matched.trim_end_matches('/');
    let rest = path.strip_prefix(matched).unwrap_or(path);
    let joined = match (replacement.ends_with('/'), rest.starts_with('/')) {
        (true, true) => format!("{replacement}{}", &rest[1..]),
        (false, false) if !rest.is_empty() && !replacement.is_empty() => {
            format!("{replacement}/{rest}")
        }
        _ => format!("{replacement}{rest}"),
    };
    if joined.is_empty() {
        "/".into()
    } else {
        joined
    }
}

fn rewritten_path(rule: &PathRewrite, path: &str) -> String {
    match rule {
        PathRewrite::Full(p) => p.clone(),
        PathRewrite::Prefix {
            matched,
            replacement,
        } => replace_prefix(path, matched, replacement),
        PathRewrite::Literal {
            matched,
            replacement,
        } => match path.strip_prefix(matched.as_str()) {
            Some(rest) => format!("{replacement}{rest}"),
            None => path.to_owned(),
        },
    }
}

/// Applies a URL rewrite to the request's path and host.
pub fn apply_rewrite(rw: &Rewrite, uri: &mut Uri, headers: &mut HeaderMap) {
    if let Some(p) = &rw.path {
        let path = rewritten_path(p, uri.path());
        let pq = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = uri.clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
        }
        if let Ok(u) = Uri::from_parts(parts) {
            *uri = u;
        }
    }
    if let Some(host) = &rw.hostname
        && let Ok(v) = HeaderValue::from_str(host)
    {
        headers.insert(HOST, v);
        if uri.authority().is_some() {
            let mut parts = uri.clone().into_parts();
            if let Ok(a) = host.parse() {
                parts.authority = Some(a);
            }
            if let Ok(u) = Uri::from_parts(parts) {
                *uri = u;
            }
        }
    }
}

/// The `Location` of a redirect for a request to `host` (without port) and `uri`.
pub fn redirect_location(r: &Redirect, host: &str, uri: &Uri) -> String {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    // `host` is the request's, perhaps with a port.
    let (req_host, req_port) = match host.parse::<http::uri::Authority>() {
        Ok(a) => (a.host().to_owned(), a.port_u16()),
        Err(_) => (host.to_owned(), None),
    };
    let port = match r.port {
        Some(80) if scheme == "http" => String::new(),
        Some(443) if scheme == "https" => String::new(),
        Some(p) => format!(":{p}"),
        // Only the path changes: the request's port stays, as Envoy keeps the Host.
        None if r.hostname.is_none() && r.scheme.is_none() => {
            req_port.map(|p| format!(":{p}")).unwrap_or_default()
        }
        None => String::new(),
    };
    let host = r.hostname.as_deref().unwrap_or(&req_host);
    let path = r
        .path
        .as_ref()
        .map_or_else(|| uri.path().to_owned(), |p| rewritten_path(p, uri.path()));
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{path}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrite_replaces_whole_elements() {
        assert_eq!(replace_prefix("/v1/users", "/v1", "/v2"), "/v2/users");
        assert_eq!(replace_prefix("/v1/users", "/v1", "/"), "/users");
        assert_eq!(replace_prefix("/v1", "/v1", "/"), "/");
        assert_eq!(replace_prefix("/v1/", "/v1/", "/api"), "/api/");
    }

    /// A VirtualService `rewrite.uri` replaces the matched prefix as a string, as Envoy's
    /// `prefix_rewrite` (the cases of Istio's own documentation and its known surprises).
    #[test]
    fn a_literal_prefix_rewrite_is_envoys() {
        let literal = |matched: &str, replacement: &str| PathRewrite::Literal {
            matched: matched.into(),
            replacement: replacement.into(),
        };
        for (rule, path, want) in [
            (
                literal("/ratings", "/v1/bookRatings"),
                "/ratings/2",
                "/v1/bookRatings/2",
            ),
            (
                literal("/ratings", "/v1/bookRatings"),
                "/ratingsfoo",
                "/v1/bookRatingsfoo",
            ),
            (literal("/api", "/"), "/api/users", "//users"),
            (literal("/api/", "/"), "/api/users", "/users"),
            (literal("/", "/v2"), "/users", "/v2users"),
        ] {
            assert_eq!(rewritten_path(&rule, path), want, "{rule:?} {path}");
        }
    }

    #[test]
    fn header_ops_set_add_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        let ops = HeaderOps {
            set: vec![("x-a".parse().unwrap(), HeaderValue::from_static("new"))],
            add: vec![("x-b".parse().unwrap(), HeaderValue::from_static("1"))],
            remove: vec!["x-gone".parse().unwrap()],
        };
        apply_headers(&ops, &mut h);
        assert_eq!(h["x-a"], "new");
        assert_eq!(h["x-b"], "1");
        assert!(!h.contains_key("x-gone"));

        // Removed first, as Envoy does: a header both removed and set ends up set.
        let ops = HeaderOps {
            set: vec![("x-a".parse().unwrap(), HeaderValue::from_static("b"))],
            add: vec![],
            remove: vec!["x-a".parse().unwrap()],
        };
        apply_headers(&ops, &mut h);
        assert_eq!(h["x-a"], "b");
    }

    #[test]
    fn a_mirrored_host_gets_shadow_before_its_port() {
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(shadow_host("10.0.0.1:80"), "10.0.0.1-shadow:80");
    }

    #[test]
    fn redirect_builds_the_location() {
        let r = Redirect {
            scheme: Some("https".into()),
            hostname: Some("example.com".into()),
            path: Some(PathRewrite::Full("/new".into())),
            port: Some(443),
            status: 302,
        };
        let uri: Uri = "/old?x=1".parse().unwrap();
        assert_eq!(
            redirect_location(&r, "reviews:9080", &uri),
            "https://example.com/new?x=1"
        );
        // Only the path: the request's host and port stay.
        let r = Redirect {
            scheme: None,
            hostname: None,
            path: Some(PathRewrite::Full("/new".into())),
            port: None,
            status: 301,
        };
        assert_eq!(
            redirect_location(&r, "reviews:9080", &uri),
            "http://reviews:9080/new?x=1"
        );
        assert_eq!(
            redirect_location(&r, "reviews", &uri),
            "http://reviews/new?x=1"
        );
    }
}
