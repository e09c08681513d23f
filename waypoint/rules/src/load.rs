//! Files and documents: reads a folder, splits each file into YAML documents, picks the
//! objects we translate and turns serde's errors into [`RulesError`]s that name the file, the
//! object and the field.

use crate::build::{self, Loaded};
use crate::error::{FieldError, InvalidField, RulesError};
use crate::fields::{DEFAULT_NAMESPACE, Metadata};
use crate::model::{ObjectRef, Rules};
use crate::{authorization, destinationrule, httproute, referencegrant, virtualservice};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use std::path::Path;

/// Reads every `*.yaml` and `*.yml` file of `dir` (sorted by name, not recursive) into one
/// [`Rules`] for the waypoint Gateway `waypoint`.
///
/// # Errors
///
/// The first problem found: an unreadable file, bad YAML, a document without `kind`, an
/// unknown, unsupported or invalid field of one of our objects, or two objects in conflict.
pub fn load_dir(dir: &Path, waypoint: &ObjectRef) -> Result<Rules, RulesError> {
    let io = |source| RulesError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut loaded = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| RulesError::Io {
            path: path.clone(),
            source,
        })?;
        loaded.extend(parse_str(&path, &text, waypoint)?);
    }
    build::build(loaded)
}

/// Translates the documents of one file's text; `path` only names the file in errors.
///
/// # Errors
///
/// As [`load_dir`].
pub fn load_str(path: &Path, text: &str, waypoint: &ObjectRef) -> Result<Rules, RulesError> {
    build::build(parse_str(path, text, waypoint)?)
}

/// The kinds we translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    HttpRoute,
    VirtualService,
    DestinationRule,
    AuthorizationPolicy,
    ReferenceGrant,
}

/// What a document's `apiVersion` and `kind` say about it.
enum Classified {
    Ours(Kind),
    /// One of our kinds in a version we do not read.
    BadVersion(&'static [&'static str]),
    /// A mesh kind that may change traffic but that we do not translate: logged as a warning.
    UnsupportedMesh,
    /// Anything else (Service, Deployment, Gateway...): no effect on the rules.
    Foreign,
}

fn classify(api_version: &str, kind: &str) -> Classified {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    const GATEWAY: &[&str] = &["v1", "v1beta1"];
    const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
    const SECURITY: &[&str] = &["v1", "v1beta1"];
    const GRANT: &[&str] = &["v1", "v1beta1", "v1alpha2"];
    let (ours, versions) = match (group, kind) {
        ("gateway.networking.k8s.io", "HTTPRoute") => (Kind::HttpRoute, GATEWAY),
        ("networking.istio.io", "VirtualService") => (Kind::VirtualService, NETWORKING),
        ("networking.istio.io", "DestinationRule") => (Kind::DestinationRule, NETWORKING),
        ("security.istio.io", "AuthorizationPolicy") => (Kind::AuthorizationPolicy, SECURITY),
        ("gateway.networking.k8s.io", "ReferenceGrant") => (Kind::ReferenceGrant, GRANT),
        // No L7 effect: the Gateway is the waypoint itself; PeerAuthentication is ztunnel's
        // business; Sidecar has no effect in ambient mode.
        ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
        | ("security.istio.io", "PeerAuthentication")
        | ("networking.istio.io", "Sidecar") => return Classified::Foreign,
        (
            "gateway.networking.k8s.io"
            | "networking.istio.io"
            | "security.istio.io"
            | "extensions.istio.io"
            | "telemetry.istio.io",
            _,
        ) => return Classified::UnsupportedMesh,
        _ => return Classified::Foreign,
    };
    if versions.contains(&version) {
        Classified::Ours(ours)
    } else {
        Classified::BadVersion(versions)
    }
}

/// What every document must have, read before its kind is known.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
}

/// One of our objects, with exactly the top-level fields Kubernetes gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Object<S> {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(rename = "metadata")]
    _metadata: IgnoredAny,
    spec: S,
    /// Written by controllers; no effect on the rules.
    #[serde(default, rename = "status")]
    _status: Option<IgnoredAny>,
}

/// The object a translator is given besides its `spec`.
pub(crate) struct Context<'a> {
    pub object: ObjectRef,
    pub metadata: &'a Metadata,
    pub waypoint: &'a ObjectRef,
}

/// Splits and translates one file.
pub(crate) fn parse_str(
    path: &Path,
    text: &str,
    waypoint: &ObjectRef,
) -> Result<Vec<Loaded>, RulesError> {
    let mut out = Vec::new();
    for (start, doc) in documents(text) {
        if let Some(loaded) = parse_document(path, start, doc, waypoint)? {
            out.push(loaded);
        }
    }
    Ok(out)
}

/// `(0-based line where the document starts, its text)` for each `---`-separated document.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let (mut start_line, mut start_byte, mut offset) = (0, 0, 0);
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        let marker = content == "---"
            || content.starts_with("--- ")
            || content.starts_with("---\t")
            || content.starts_with("--- #");
        if marker && index > 0 {
            docs.push((start_line, &text[start_byte..offset]));
            start_line = index;
            start_byte = offset;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

fn parse_document(
    path: &Path,
    start: usize,
    doc: &str,
    waypoint: &ObjectRef,
) -> Result<Option<Loaded>, RulesError> {
    let syntax = |e: serde_yaml::Error| {
        let (line, column) = e
            .location()
            .map_or((start + 1, 1), |l| (start + l.line(), l.column()));
        RulesError::Syntax {
            file: path.to_owned(),
            line,
            column,
            message: absolute_lines(strip_location(&e.to_string()), start),
        }
    };
    let value: serde_yaml::Value = serde_yaml::from_str(doc).map_err(syntax)?;
    if value.is_null() {
        return Ok(None); // An empty document: comments only, or a trailing `---`.
    }
    let document_error = |message: &str| RulesError::Document {
        file: path.to_owned(),
        line: start + 1,
        message: message.to_owned(),
    };
    if !value.is_mapping() {
        return Err(document_error(
            "a document must be a mapping (a Kubernetes object)",
        ));
    }
    let header: Header = serde_yaml::from_value(value).map_err(|e| RulesError::Document {
        file: path.to_owned(),
        line: start + 1,
        message: e.to_string(),
    })?;
    let Some(kind_name) = header.kind else {
        return Err(document_error("a document has no `kind`"));
    };
    let Some(api_version) = header.api_version else {
        return Err(document_error(&format!(
            "a {kind_name} has no `apiVersion`"
        )));
    };
    let metadata = header.metadata;
    let namespace = metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let kind = match classify(&api_version, &kind_name) {
        Classified::Ours(kind) => kind,
        Classified::Foreign => {
            tracing::debug!(file = %path.display(), kind = %kind_name, "skipped: not a rule");
            return Ok(None);
        }
        Classified::UnsupportedMesh => {
            tracing::warn!(
                file = %path.display(), kind = %kind_name, api_version = %api_version,
                "skipped: the waypoint does not read this kind"
            );
            return Ok(None);
        }
        Classified::BadVersion(versions) => {
            return Err(RulesError::Field(Box::new(InvalidField {
                file: path.to_owned(),
                line: start + 1,
                column: None,
                kind: kind_name,
                object: ObjectRef::new(&namespace, metadata.name.as_deref().unwrap_or("")),
                field: "apiVersion".into(),
                message: format!(
                    "version of `{api_version}` is not supported: expected one of {}",
                    versions.join(", ")
                ),
            })));
        }
    };
    let Some(name) = metadata.name.clone() else {
        return Err(document_error(&format!(
            "a {kind_name} has no `metadata.name`"
        )));
    };
    let cx = Context {
        object: ObjectRef::new(&namespace, &name),
        metadata: &metadata,
        waypoint,
    };
    let translated = match kind {
        Kind::HttpRoute => typed(doc).and_then(|spec| httproute::translate(spec, &cx)),
        Kind::VirtualService => typed(doc).and_then(|spec| virtualservice::translate(spec, &cx)),
        Kind::DestinationRule => typed(doc).and_then(|spec| destinationrule::translate(spec, &cx)),
        Kind::AuthorizationPolicy => {
            typed(doc).and_then(|spec| authorization::translate(spec, &cx))
        }
        Kind::ReferenceGrant => typed(doc).and_then(|spec| referencegrant::translate(spec, &cx)),
    };
    let translated = match translated {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(e) => {
            let (line, column) = match e.location {
                Some((line, column)) => (start + line, Some(column)),
                None => (start + 1, None),
            };
            return Err(RulesError::Field(Box::new(InvalidField {
                file: path.to_owned(),
                line,
                column,
                kind: kind_name,
                object: cx.object,
                field: e.field,
                message: e.message,
            })));
        }
    };
    Ok(Some(Loaded {
        file: path.to_owned(),
        kind: kind_name,
        object: cx.object,
        translated,
    }))
}

/// Deserializes one of our objects' `spec`, keeping the field path and position of an error.
fn typed<S: DeserializeOwned>(doc: &str) -> Result<S, FieldError> {
    let deserializer = serde_yaml::Deserializer::from_str(doc);
    match serde_path_to_error::deserialize::<_, Object<S>>(deserializer) {
        Ok(object) => Ok(object.spec),
        Err(e) => {
            let field = e.path().to_string();
            let inner = e.inner();
            let location = inner.location().map(|l| (l.line(), l.column()));
            let text = inner.to_string();
            let message = strip_location(&text);
            let message = strip_path(message, &field);
            Err(FieldError {
                field,
                message: message.to_owned(),
                location,
            })
        }
    }
}

/// Drops serde_yaml's own copy of the path (`spec.rules[0]: `), which for an unknown field
/// stops at the struct: `field` already says it.
fn strip_path<'m>(message: &'m str, field: &str) -> &'m str {
    match message.split_once(": ") {
        Some((head, rest))
            if head == "."
                || field == head
                || field
                    .strip_prefix(head)
                    .is_some_and(|tail| tail.starts_with(['.', '['])) =>
        {
            rest
        }
        _ => message,
    }
}

/// Rewrites the positions serde_yaml gives inside a message (relative to the document) as
/// lines of the whole file.
fn absolute_lines(message: &str, start: usize) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find("at line ") {
        let (before, after) = rest.split_at(at + "at line ".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(line) => out.push_str(&(start + line).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Drops serde_yaml's ` at line L column C` suffix: we report positions in the whole file.
fn strip_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) if message[at..].contains(" column ") => &message[..at],
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_start_lines() {
        let text = "a: 1\n---\nb: 2\n--- # note\n\n---\nc: 3\n";
        let docs = documents(text);
        assert_eq!(
            docs,
            vec![
                (0, "a: 1\n"),
                (1, "---\nb: 2\n"),
                (3, "--- # note\n\n"),
                (5, "---\nc: 3\n")
            ]
        );
        assert_eq!(documents("---\nx: 1\n"), vec![(0, "---\nx: 1\n")]);
    }

    #[test]
    fn classify_kinds_and_versions() {
        assert!(matches!(
            classify("gateway.networking.k8s.io/v1beta1", "HTTPRoute"),
            Classified::Ours(Kind::HttpRoute)
        ));
        assert!(matches!(
            classify("networking.istio.io/v1alpha3", "DestinationRule"),
            Classified::Ours(Kind::DestinationRule)
        ));
        assert!(matches!(
            classify("security.istio.io/v1alpha1", "AuthorizationPolicy"),
            Classified::BadVersion(_)
        ));
        assert!(matches!(classify("v1", "Service"), Classified::Foreign));
        assert!(matches!(
            classify("gateway.networking.k8s.io/v1", "Gateway"),
            Classified::Foreign
        ));
        assert!(matches!(
            classify("gateway.networking.k8s.io/v1", "GRPCRoute"),
            Classified::UnsupportedMesh
        ));
    }

    #[test]
    fn absolute_lines_adds_the_document_start() {
        assert_eq!(
            absolute_lines("expected ',' at line 3 column 1, while parsing", 10),
            "expected ',' at line 13 column 1, while parsing"
        );
        assert_eq!(absolute_lines("no position", 10), "no position");
    }

    #[test]
    fn strip_location_only_strips_the_suffix() {
        assert_eq!(strip_location("bad at line 3 column 4"), "bad");
        assert_eq!(
            strip_location("looked at line numbers"),
            "looked at line numbers"
        );
    }
}
