//! Tests over whole YAML documents, one file per source.

mod authorization;
mod destinationrule;
mod httproute;
mod load;
mod virtualservice;

use crate::{ObjectRef, RequestView, Rules, RulesError, load_str};
use http::{HeaderMap, Method};
use std::path::Path;

/// The waypoint every test loads for.
pub(crate) fn waypoint() -> ObjectRef {
    ObjectRef::new("app", "waypoint")
}

pub(crate) fn load(text: &str) -> Rules {
    match load_str(Path::new("rules.yaml"), text, &waypoint()) {
        Ok(rules) => rules,
        Err(e) => panic!("load failed: {e}"),
    }
}

pub(crate) fn load_err(text: &str) -> RulesError {
    match load_str(Path::new("rules.yaml"), text, &waypoint()) {
        Ok(rules) => panic!("loaded, expected an error: {rules:#?}"),
        Err(e) => e,
    }
}

/// `(field, message)` of a field error, after checking it names the file and object.
pub(crate) fn field_error(text: &str, object: &str) -> (String, String) {
    let err = load_err(text);
    let shown = err.to_string();
    assert!(shown.starts_with("rules.yaml:"), "{shown}");
    assert!(shown.contains(object), "{shown}");
    match err {
        RulesError::Field(f) => (f.field, f.message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

/// An owned request to take views of.
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub host: String,
    pub port: u16,
}

impl Req {
    /// `target` may carry a query: `/a?b=c`.
    pub fn get(target: &str) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Self {
            method: Method::GET,
            path,
            query,
            headers: HeaderMap::new(),
            host: "reviews.app.svc.cluster.local".into(),
            port: 9080,
        }
    }

    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers
            .append(name, value.parse().expect("header value"));
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            host: &self.host,
            port: self.port,
        }
    }
}
