//! Istio's default request path normalization (meshConfig `pathNormalization: BASE`, Envoy's
//! `normalize_path: true`), so that authorization and route matching see the path the
//! backend will act on: `/./admin`, `/x/../admin` and `/%61dmin` are all `/admin`.
//!
//! 1. `%XX` of an unreserved character (ALPHA DIGIT `-` `.` `_` `~`) is decoded; other
//!    escapes keep their meaning and get upper-case hex (`%2f` to `%2F`). An escaped slash
//!    stays escaped, and slashes are not merged: BASE does neither.
//! 2. A backslash is a slash, as Envoy's canonicalizer (and many backends) read it.
//! 3. Dot segments are removed as RFC 3986 section 5.2.4 says, after steps 1 and 2, so that
//!    `%2e` is a dot and `..\` a parent too.
//!
//! A `%` not followed by two hex digits, and `%00`, are refused (400): kept, they would let
//! a backend that decodes once more see a path other than the one checked (`%%32%65` would
//! become `%2e`). So normalizing a normalized path changes nothing.

use std::borrow::Cow;

/// A request path that cannot be normalized.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPath {
    /// Not origin form.
    #[error("request path `{0}` does not start with `/`")]
    NoLeadingSlash(String),
    /// A `%` without two hex digits after it.
    #[error("request path `{0}` has a `%` not followed by two hex digits")]
    BadEscape(String),
    /// An escaped NUL.
    #[error("request path `{0}` has an escaped NUL (`%00`)")]
    Nul(String),
}

/// `raw` (a path without its query) normalized; borrowed when there was nothing to do.
///
/// # Errors
///
/// [`InvalidPath`] when `raw` does not start with `/` or has a bad or NUL escape.
pub fn path(raw: &str) -> Result<Cow<'_, str>, InvalidPath> {
    if !raw.starts_with('/') {
        return Err(InvalidPath::NoLeadingSlash(raw.to_owned()));
    }
    // The common case: no escape, no backslash, no dot segment.
    let dotted = raw.split('/').any(|s| s == "." || s == "..");
    if !dotted && !raw.contains(['%', '\\']) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw)?.replace('\\', "/");
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` of unreserved characters and upper-cases the hex of the others.
fn decode_unreserved(raw: &str) -> Result<String, InvalidPath> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let digit = |at: usize| bytes.get(at).copied().and_then(hex);
        let escape = if b == b'%' {
            match digit(i + 1).zip(digit(i + 2)) {
                Some(hex) => Some(hex),
                None => return Err(InvalidPath::BadEscape(raw.to_owned())),
            }
        } else {
            None
        };
        match escape {
            Some((hi, lo)) => {
                let value = (hi << 4) | lo;
                if value == 0 {
                    return Err(InvalidPath::Nul(raw.to_owned()));
                }
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else {
                    out.push('%');
                    out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                    out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                }
                i += 3;
            }
            None => {
                // Copy the whole character, not one byte of it (`i` is on a boundary: it
                // only ever moves past ASCII escapes and whole characters).
                let Some(ch) = raw.get(i..).and_then(|r| r.chars().next()) else {
                    break;
                };
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok(out)
}

/// RFC 3986 section 5.2.4 for a path starting with `/`: `.` segments go, `..` removes the
/// segment before it (never above the root), and a path ending in either ends with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    // Skip the empty piece before the leading `/`.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                continue;
            }
        }
        if last {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_as_istio_base_does() {
        let cases = [
            // Unchanged.
            ("/", "/"),
            ("/admin", "/admin"),
            ("/a/b/", "/a/b/"),
            ("/...", "/..."),
            ("/a/.b/..c", "/a/.b/..c"),
            // Slashes are not merged.
            ("//admin", "//admin"),
            ("/a//b", "/a//b"),
            // Dot segments.
            ("/./admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/a/b/../../../admin", "/admin"),
            ("/..", "/"),
            ("/.", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/./b/../c/", "/a/c/"),
            ("/a//../b", "/a/b"),
            // Unreserved characters are decoded, then dot segments removed.
            ("/%61dmin", "/admin"),
            ("/%41%7a%30%2D%5f%7E", "/Az0-_~"),
            ("/%2e/admin", "/admin"),
            ("/x/%2E%2e/admin", "/admin"),
            ("/x/.%2e/admin", "/admin"),
            // Other escapes stay, with upper-case hex; escaped slashes are not slashes.
            ("/a%2fb", "/a%2Fb"),
            ("/x/..%2fadmin", "/x/..%2Fadmin"),
            ("/%2e%2e%2fadmin", "/..%2Fadmin"),
            ("/a%20b%3f", "/a%20b%3F"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            // A backslash is a slash.
            ("/x/..\\admin", "/admin"),
            ("/a\\b", "/a/b"),
        ];
        for (raw, want) in cases {
            assert_eq!(path(raw).as_deref(), Ok(want), "{raw}");
            // Normalized once is normalized: a backend that normalizes again sees the same.
            assert_eq!(path(want).as_deref(), Ok(want), "{want}");
        }
    }

    #[test]
    fn a_bad_or_nul_escape_is_refused() {
        for raw in [
            "/100%",
            "/%zz/%4",
            "/%%61",
            "/x/%%32%65%%32%65/admin",
            "/%4",
        ] {
            assert_eq!(
                path(raw),
                Err(InvalidPath::BadEscape(raw.to_owned())),
                "{raw}"
            );
        }
        assert_eq!(path("/a%00b"), Err(InvalidPath::Nul("/a%00b".to_owned())));
    }

    #[test]
    fn a_path_not_starting_with_a_slash_is_refused() {
        for raw in ["", "*", "admin", "./admin", "%2Fadmin"] {
            assert_eq!(
                path(raw),
                Err(InvalidPath::NoLeadingSlash(raw.to_owned())),
                "{raw}"
            );
        }
    }

    #[test]
    fn a_path_needing_nothing_is_borrowed() {
        assert!(matches!(path("/reviews/1"), Ok(Cow::Borrowed(_))));
    }
}
