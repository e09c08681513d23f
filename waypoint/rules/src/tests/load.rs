use super::{load, load_err, waypoint};
use crate::{ObjectRef, RulesError, load_dir};
use std::fs;

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: NAME, namespace: app}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: SERVICE}]\n  rules:\n  - backendRefs: [{name: SERVICE}]\n";

fn route(name: &str, service: &str) -> String {
    ROUTE.replace("NAME", name).replace("SERVICE", service)
}

#[test]
fn load_dir_reads_yaml_files_sorted_and_merges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: app}\nspec:\n  ports: [{port: 9080}]\n";
    fs::write(
        dir.path().join("b.yml"),
        format!("{service}---\n{}", route("b", "ratings")),
    )
    .expect("write");
    fs::write(
        dir.path().join("a.yaml"),
        format!("# comment only\n---\n{}---\n", route("a", "reviews")),
    )
    .expect("write");
    fs::write(dir.path().join("notes.txt"), "not: [yaml").expect("write");
    let rules = load_dir(dir.path(), &waypoint()).expect("loads");
    let services: Vec<_> = rules.routes.keys().map(ToString::to_string).collect();
    assert_eq!(services, ["app/ratings", "app/reviews"]);
}

#[test]
fn errors_give_the_file_and_the_line_in_the_whole_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.yaml"), route("a", "reviews")).expect("write");
    let bad = format!(
        "{}---\n{}",
        route("b", "ratings"),
        route("c", "details").replace("backendRefs", "backendRef")
    );
    fs::write(dir.path().join("b.yaml"), bad).expect("write");
    let err = load_dir(dir.path(), &waypoint()).expect_err("unknown field");
    match &err {
        RulesError::Field(f) => {
            assert!(f.file.ends_with("b.yaml"), "{:?}", f.file);
            // Route c starts after the 7 lines of route b and the `---` line: its rule is line 15.
            assert_eq!(f.line, 15);
            assert_eq!(f.kind, "HTTPRoute");
            assert_eq!(f.object, ObjectRef::new("app", "c"));
            assert_eq!(f.field, "spec.rules[0].backendRef");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("b.yaml:15:"), "{err}");
}

#[test]
fn missing_directory_is_an_io_error() {
    let err =
        load_dir(std::path::Path::new("/nonexistent/rules"), &waypoint()).expect_err("missing");
    assert!(matches!(err, RulesError::Io { .. }), "{err}");
}

#[test]
fn documents_without_kind_or_name_and_bad_yaml_are_errors() {
    let err = load_err("apiVersion: v1\nmetadata: {name: x}\n");
    assert!(
        matches!(err, RulesError::Document { line: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no `kind`"), "{err}");
    let err = load_err("kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nspec: {}\n");
    assert!(err.to_string().contains("no `metadata.name`"), "{err}");
    let err = load_err(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\nkind: Service\nmetadata: {name: [x}\nspec: {}\n",
    );
    assert!(matches!(err, RulesError::Syntax { line: 6, .. }), "{err:?}");
    assert!(
        !err.to_string().contains("line 2 "),
        "positions are in the whole file: {err}"
    );
    let err = load_err("- a\n- b\n");
    assert!(err.to_string().contains("must be a mapping"), "{err}");
}

#[test]
fn unsupported_versions_and_duplicates_are_errors() {
    let err = load_err(&route("a", "reviews").replace("/v1", "/v1alpha2"));
    assert!(
        matches!(&err, RulesError::Field(f) if f.field == "apiVersion"),
        "{err:?}"
    );
    let twice = format!("{}---\n{}", route("a", "reviews"), route("a", "ratings"));
    assert!(matches!(load_err(&twice), RulesError::Conflict(c) if c.message == "defined twice"));
}

#[test]
fn foreign_kinds_and_status_are_accepted() {
    let text = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: waypoint, namespace: app}}\nspec: {{gatewayClassName: istio-waypoint}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n---\n{}status:\n  parents: []\n",
        route("a", "reviews")
    );
    let rules = load(&text);
    assert_eq!(rules.routes.len(), 1);
}

#[test]
fn errors_found_after_parsing_point_at_the_document() {
    let text = route("a", "reviews").replace("[{name: reviews}]", "[{name: reviews, weight: 0}]");
    assert_eq!(
        load_err(&text).to_string(),
        "rules.yaml:1 (the document's first line): HTTPRoute app/a: spec.rules[0].backendRefs: \
         every weight is 0: expected at least one positive weight"
    );
}
