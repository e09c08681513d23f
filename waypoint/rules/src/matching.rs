//! Route matching: which entry a request takes.

use crate::model::{
    HeaderMatch, ObjectRef, PathMatch, QueryMatch, RequestView, RouteEntry, RouteMatch, Rules,
    StringMatch,
};
use http::HeaderMap;
use percent_encoding::percent_decode_str;
use std::borrow::Cow;

impl Rules {
    /// The first entry that matches `req`: among the service's own entries, or among the
    /// waypoint Gateway's when the service has none. `None`: no route (Gateway API answers
    /// 404).
    pub fn route(&self, service: &ObjectRef, req: &RequestView<'_>) -> Option<&RouteEntry> {
        self.entries(service)
            .iter()
            .find(|e| e.matcher.matches(req))
    }

    /// Whether any route applies to `service` on `port`: when none does, its requests take
    /// the service's default route, as Envoy's waypoint falls back to passthrough for a port
    /// no route names; when one does and none matches, the answer is 404.
    pub fn has_routes(&self, service: &ObjectRef, port: u16) -> bool {
        self.entries(service)
            .iter()
            .any(|e| e.matcher.port.is_none_or(|p| p == port))
    }

    /// The service's own routes, else the waypoint Gateway's.
    fn entries(&self, service: &ObjectRef) -> &[RouteEntry] {
        match self.routes.get(service) {
            Some(entries) if !entries.is_empty() => entries,
            _ => &self.gateway_routes,
        }
    }
}

impl RouteMatch {
    /// Every condition holds.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.port.is_none_or(|p| p == req.port)
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self.path.as_ref().is_none_or(|p| p.matches(req.path))
            && self.headers.iter().all(|h| h.matches(req.headers))
            && self.query.iter().all(|q| q.matches(req.query))
    }
}

impl PathMatch {
    /// `path` is the request path without its query.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::SegmentPrefix(p) => {
                // A trailing `/` in the prefix is ignored: `/foo/` matches `/foo`.
                let p = p.trim_end_matches('/');
                match path.strip_prefix(p) {
                    Some(rest) => rest.is_empty() || rest.starts_with('/'),
                    None => false,
                }
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(e) => value == e,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
            StringMatch::Present => true,
        }
    }
}

impl HeaderMatch {
    /// The header's value matches; a repeated header is matched as its values joined with
    /// `,` (RFC 9110 5.3; `; ` for HTTP/2's split `cookie`, RFC 9113 8.2.3), as Envoy does.
    /// Presence needs no readable value. Names are case-insensitive by construction; the
    /// result is inverted for `withoutHeaders`.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let found = match (values.next(), values.next()) {
            (None, _) => false,
            _ if matches!(self.value, StringMatch::Present) => true,
            (Some(one), None) => one.to_str().is_ok_and(|v| self.value.matches(v)),
            (Some(first), Some(second)) => {
                let all: Option<Vec<&str>> = [first, second]
                    .into_iter()
                    .chain(values)
                    .map(|v| v.to_str().ok())
                    .collect();
                let separator = if self.name == http::header::COOKIE {
                    "; "
                } else {
                    ","
                };
                all.is_some_and(|all| self.value.matches(&all.join(separator)))
            }
        };
        found != self.invert
    }
}

impl QueryMatch {
    /// The first parameter of that name (percent-decoded) must match, as Gateway API says.
    pub fn matches(&self, query: Option<&str>) -> bool {
        query_param(query.unwrap_or(""), &self.name).is_some_and(|v| self.value.matches(&v))
    }
}

/// The first value of `name` in a raw query string, percent-decoded.
fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| percent_decode_str(key).decode_utf8_lossy() == name)
        .map(|(_, value)| percent_decode_str(value).decode_utf8_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_prefix_matches_whole_segments() {
        let m = PathMatch::SegmentPrefix("/foo".into());
        assert!(m.matches("/foo"));
        assert!(m.matches("/foo/bar"));
        assert!(!m.matches("/foobar"));
        assert!(!m.matches("/fo"));
        let trailing = PathMatch::SegmentPrefix("/foo/".into());
        assert!(trailing.matches("/foo"));
        assert!(trailing.matches("/foo/x"));
        assert!(!trailing.matches("/foox"));
        assert!(PathMatch::SegmentPrefix("/".into()).matches("/anything"));
    }

    #[test]
    fn istio_prefix_is_a_string_prefix() {
        let m = PathMatch::Prefix("/foo".into());
        assert!(m.matches("/foobar"));
        assert!(!m.matches("/fo"));
    }

    #[test]
    fn query_params_are_decoded_and_first_wins() {
        assert_eq!(query_param("a=1&b=x%20y&a=2", "b").as_deref(), Some("x y"));
        assert_eq!(query_param("a=1&a=2", "a").as_deref(), Some("1"));
        assert_eq!(query_param("flag&x=1", "flag").as_deref(), Some(""));
        assert_eq!(query_param("x%5B%5D=3", "x[]").as_deref(), Some("3"));
        assert_eq!(query_param("", "a"), None);
    }

    #[test]
    fn a_repeated_header_matches_as_its_joined_values_and_invert() {
        let mut headers = HeaderMap::new();
        headers.append("x-user", "alice".parse().expect("value"));
        headers.append("x-user", "bob".parse().expect("value"));
        let m = HeaderMatch {
            name: "x-user".parse().expect("name"),
            value: StringMatch::Exact("alice,bob".into()),
            invert: false,
        };
        assert!(m.matches(&headers));
        let one_of_them = HeaderMatch {
            value: StringMatch::Exact("bob".into()),
            ..m.clone()
        };
        assert!(!one_of_them.matches(&headers));
        let without = HeaderMatch {
            invert: true,
            ..m.clone()
        };
        assert!(!without.matches(&headers));
        let absent = HeaderMatch {
            name: "x-other".parse().expect("name"),
            value: StringMatch::Present,
            invert: true,
        };
        assert!(absent.matches(&headers));
        headers.append(
            "x-raw",
            http::HeaderValue::from_bytes(b"\xff").expect("value"),
        );
        let present = HeaderMatch {
            name: "x-raw".parse().expect("name"),
            value: StringMatch::Present,
            invert: false,
        };
        assert!(present.matches(&headers), "present, though not UTF-8");
        headers.append("cookie", "a=1".parse().expect("value"));
        headers.append("cookie", "b=2".parse().expect("value"));
        let cookie = HeaderMatch {
            name: http::header::COOKIE,
            value: StringMatch::Exact("a=1; b=2".into()),
            invert: false,
        };
        assert!(
            cookie.matches(&headers),
            "HTTP/2 cookie crumbs are joined with `; `"
        );
    }
}
