use super::{Req, field_error, load};
use crate::{Action, ObjectRef, PathMatch, PathRewrite, Rules};
use http::Method;
use std::time::Duration;

const REVIEWS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: app
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - matches:
    - headers:
      - name: End-User
        value: jason
    backendRefs:
    - name: reviews-v2
      port: 9080
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: x-route
          value: default
        remove: [x-debug]
    backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - name: reviews-v3
      namespace: canary
      port: 9080
      weight: 10
    timeouts:
      request: 10s
      backendRequest: 2s
    retry:
      codes: [503, 504]
      attempts: 3
      backoff: 100ms
"#;

fn reviews() -> ObjectRef {
    ObjectRef::new("app", "reviews")
}

fn backends(rules: &Rules, req: &Req) -> Vec<(String, u32)> {
    let entry = rules.route(&reviews(), &req.view()).expect("a route");
    match &entry.rule.action {
        Action::Forward(b) => b
            .iter()
            .map(|b| (b.service.to_string(), b.weight))
            .collect(),
        other => panic!("expected forward, got {other:?}"),
    }
}

#[test]
fn parses_a_service_route() {
    let rules = load(REVIEWS);
    let entries = &rules.routes[&reviews()];
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.matcher.port == Some(9080)));
    assert_eq!(
        backends(&rules, &Req::get("/").header("end-user", "jason")),
        [("app/reviews-v2".to_owned(), 1)]
    );
    assert_eq!(
        backends(&rules, &Req::get("/")),
        [
            ("app/reviews-v1".to_owned(), 90),
            ("canary/reviews-v3".to_owned(), 10)
        ]
    );
    let rule = &rules
        .route(&reviews(), &Req::get("/").view())
        .expect("route")
        .rule;
    assert_eq!(rule.name, "HTTPRoute app/reviews rules[1]");
    assert_eq!(rule.request_headers.set[0].0, "x-route");
    assert_eq!(rule.request_headers.remove[0], "x-debug");
    assert_eq!(rule.timeout, Some(Duration::from_secs(10)));
    let retry = rule.retry.as_ref().expect("retry");
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(retry.on.status_codes, [503, 504]);
    assert!(retry.on.connect_failure && retry.on.refused_stream && !retry.on.five_xx);
    assert_eq!(retry.backoff_base, Duration::from_millis(100));
    assert_eq!(retry.backoff_max, Duration::from_secs(1));
    // The parentRef's port: other ports of the service have no route.
    assert!(
        rules
            .route(&reviews(), &Req::get("/").port(8080).view())
            .is_none()
    );
}

#[test]
fn backend_request_timeout_without_retry_is_the_route_timeout_as_istio_makes_it() {
    let rules = load(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - backendRefs: [{name: reviews, port: 9080}]
    timeouts: {request: 0s, backendRequest: 500ms}
  - backendRefs: [{name: reviews, port: 9080}]
    timeouts: {request: 10s, backendRequest: 2s}
"#,
    );
    let entries = &rules.routes[&reviews()];
    for entry in entries {
        assert_eq!(entry.rule.retry, None, "Istio's default retries");
    }
    assert_eq!(entries[0].rule.timeout, Some(Duration::from_millis(500)));
    assert_eq!(entries[1].rule.timeout, Some(Duration::from_secs(2)));
}

/// One route per document, attached to `reviews`, each rule with one match and a backend
/// named after the rule so that the order can be read back.
fn route(name: &str, created: Option<&str>, rules: &[(&str, &str)]) -> String {
    let created = created
        .map(|t| format!("  creationTimestamp: \"{t}\"\n"))
        .unwrap_or_default();
    let mut text = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: app\n{created}spec:\n  parentRefs: [{{kind: Service, group: \"\", name: reviews}}]\n  rules:\n"
    );
    for (backend, matches) in rules {
        text.push_str(&format!(
            "  - matches: [{matches}]\n    backendRefs: [{{name: {backend}}}]\n"
        ));
    }
    text
}

fn order(rules: &Rules) -> Vec<String> {
    rules.routes[&reviews()]
        .iter()
        .map(|e| match &e.rule.action {
            Action::Forward(b) => b[0].service.name.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn precedence_across_routes() {
    let text = [
        route(
            "b-route",
            Some("2024-01-01T00:00:00Z"),
            &[
                ("short-prefix", "{path: {type: PathPrefix, value: /api}}"),
                ("regex", "{path: {type: RegularExpression, value: '/api/v[0-9]+/users/.*'}}"),
                ("one-header", "{path: {value: /api/v1}, headers: [{name: a, value: '1'}]}"),
                ("method", "{path: {value: /api/v1}, method: POST}"),
            ],
        ),
        route(
            "a-route",
            Some("2024-01-01T00:00:00Z"),
            &[
                ("query", "{path: {value: /api/v1}, queryParams: [{name: q, value: x}]}"),
                ("two-headers", "{path: {value: /api/v1}, headers: [{name: a, value: '1'}, {name: b, value: '2'}]}"),
                ("long-prefix-a", "{path: {value: /api/v1}}"),
            ],
        ),
        route(
            "old-route",
            Some("2023-06-01T00:00:00Z"),
            &[("long-prefix-old", "{path: {value: /api/v1}}"), ("exact", "{path: {type: Exact, value: /}}")],
        ),
        route("no-timestamp", None, &[("long-prefix-none", "{path: {value: /api/v1}}"), ("default", "")]),
    ]
    .concat();
    let rules = load(&text);
    assert_eq!(
        order(&rules),
        [
            "exact",
            "method",
            "two-headers",
            "one-header",
            "query",
            "long-prefix-old", // oldest first
            "long-prefix-a",   // then a-route before b-route... and before no timestamp
            "long-prefix-none",
            "short-prefix",
            "default",
            "regex",
        ]
    );
    // And matching follows that order.
    let req = Req::get("/api/v1/users/7")
        .header("a", "1")
        .header("b", "2");
    assert_eq!(backends(&rules, &req)[0].0, "app/two-headers");
    assert_eq!(
        backends(&rules, &Req::get("/api/v1?q=x").method(Method::POST))[0].0,
        "app/method"
    );
    assert_eq!(backends(&rules, &Req::get("/api/v1?q=x"))[0].0, "app/query");
    assert_eq!(
        backends(&rules, &Req::get("/api/v10"))[0].0,
        "app/short-prefix"
    );
    assert_eq!(backends(&rules, &Req::get("/apix"))[0].0, "app/default");
}

#[test]
fn rule_without_backends_answers_500_and_rule_without_matches_matches_all() {
    let rules = load(
        r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: broken, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - {}
"#,
    );
    let entry = rules
        .route(&reviews(), &Req::get("/x/y").view())
        .expect("matches everything");
    assert!(matches!(
        entry.rule.action,
        Action::DirectResponse { status: 500 }
    ));
    assert!(matches!(&entry.matcher.path, Some(PathMatch::SegmentPrefix(p)) if p == "/"));
}

#[test]
fn prefix_rewrite_and_redirect_take_each_match_prefix() {
    let rules = load(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - matches: [{path: {value: /old}}, {path: {value: /legacy/v1}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: new.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
    - type: RequestMirror
      requestMirror:
        backendRef: {name: shadow, port: 80}
        fraction: {numerator: 1, denominator: 4}
    backendRefs: [{name: reviews}]
  - matches: [{path: {type: Exact, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /here}}
"#,
    );
    let entries = &rules.routes[&reviews()];
    let prefixes: Vec<_> = entries
        .iter()
        .filter_map(|e| match e.rule.rewrite.as_ref()?.path.as_ref()? {
            PathRewrite::Prefix {
                matched,
                replacement,
            } => Some((matched.clone(), replacement.clone())),
            PathRewrite::Full(_) | PathRewrite::Literal { .. } => None,
        })
        .collect();
    assert_eq!(
        prefixes,
        [
            ("/legacy/v1".to_owned(), "/new".to_owned()),
            ("/old".to_owned(), "/new".to_owned())
        ]
    );
    let mirror = &entries[1].rule.mirrors[0];
    assert_eq!(
        (mirror.service.to_string(), mirror.port, mirror.percent),
        ("app/shadow".into(), Some(80), 25.0)
    );
    let moved = rules
        .route(&reviews(), &Req::get("/moved").view())
        .expect("route");
    match &moved.rule.action {
        Action::Redirect(r) => {
            assert_eq!((r.scheme.as_deref(), r.status), (Some("https"), 301));
            assert!(matches!(&r.path, Some(PathRewrite::Full(p)) if p == "/here"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn redirect_defaults_to_302() {
    let rules = load(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - filters: [{type: RequestRedirect, requestRedirect: {hostname: other.example}}]
"#,
    );
    assert!(
        matches!(&rules.routes[&reviews()][0].rule.action, Action::Redirect(r) if r.status == 302)
    );
}

#[test]
fn gateway_parents_count_only_for_this_waypoint() {
    let rules = load(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all, namespace: app}
spec:
  parentRefs: [{name: waypoint}]
  rules:
  - backendRefs: [{name: fallback, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: app}
spec:
  parentRefs: [{name: ingress, kind: Gateway, group: gateway.networking.k8s.io}, {name: waypoint, namespace: other}]
  rules:
  - backendRefs: [{name: nope, port: 80}]
"#,
    );
    assert!(rules.routes.is_empty());
    assert_eq!(rules.gateway_routes.len(), 1);
    let any = ObjectRef::new("app", "ratings");
    let entry = rules
        .route(&any, &Req::get("/").view())
        .expect("gateway route");
    assert!(matches!(&entry.rule.action, Action::Forward(b) if b[0].service.name == "fallback"));
}

#[test]
fn service_routes_shadow_gateway_routes() {
    let text = format!(
        "{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: all, namespace: app}}\nspec:\n  parentRefs: [{{name: waypoint}}]\n  rules:\n  - backendRefs: [{{name: fallback}}]\n",
        route("only-api", None, &[("api", "{path: {value: /api}}")])
    );
    let rules = load(&text);
    assert!(
        rules
            .route(&reviews(), &Req::get("/other").view())
            .is_none(),
        "the service has routes: no fallback"
    );
    assert!(
        rules
            .route(
                &ObjectRef::new("app", "ratings"),
                &Req::get("/other").view()
            )
            .is_some()
    );
}

#[test]
fn unknown_field_names_file_object_and_path() {
    let err = super::load_err(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - matches:
    - path: {value: /a}
    - path: {value: /b, caseInsensitive: true}
"#,
    );
    assert_eq!(
        err.to_string(),
        "rules.yaml:9:25: HTTPRoute app/r: spec.rules[0].matches[1].path.caseInsensitive: \
         unknown field `caseInsensitive`, expected `type` or `value`"
    );
}

#[test]
fn invalid_values_name_their_field() {
    let base = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: app}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: reviews}]\n  rules:\n";
    let cases = [
        (
            "  - matches: [{path: {type: RegularExpression, value: '/a[0-9'}}]\n",
            "spec.rules[0].matches[0].path.value",
            "invalid regular expression",
        ),
        (
            "  - matches: [{headers: [{type: RegularExpression, name: x, value: '(('}]}]\n",
            "spec.rules[0].matches[0].headers[0].value",
            "invalid regular expression",
        ),
        (
            "  - backendRefs: [{name: a, weight: 0}, {name: b, weight: 0}]\n",
            "spec.rules[0].backendRefs",
            "every weight is 0",
        ),
        (
            "  - timeouts: {request: 1.5s}\n",
            "spec.rules[0].timeouts.request",
            "invalid duration `1.5s`",
        ),
        (
            "  - filters: [{type: URLRewrite, urlRewrite: {hostname: 'a b'}}]\n",
            "spec.rules[0].filters[0].urlRewrite.hostname",
            "`a b` is not a valid host",
        ),
        (
            "  - filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: '/a b'}}}]\n",
            "spec.rules[0].filters[0].requestRedirect.path.replaceFullPath",
            "`/a b` is not a valid URL path",
        ),
        (
            "  - timeouts: {backendRequest: 99999h}\n",
            "spec.rules[0].timeouts.backendRequest",
            "invalid duration `99999h`: longer than the maximum of 8760h",
        ),
        (
            "  - matches: [{path: {type: Suffix}}]\n",
            "spec.rules[0].matches[0].path.type",
            "unknown variant `Suffix`",
        ),
        (
            "  - matches: [{path: {value: api}}]\n",
            "spec.rules[0].matches[0].path.value",
            "must start with `/`",
        ),
        (
            "  - matches: [{method: FETCH}]\n",
            "spec.rules[0].matches[0].method",
            "`FETCH` is not a method",
        ),
        (
            "  - filters: [{type: ExtensionRef}]\n",
            "spec.rules[0].filters[0].type",
            "not supported",
        ),
        (
            "  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]\n",
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            "not a redirect status",
        ),
        (
            "  - filters: [{type: RequestHeaderModifier}]\n",
            "spec.rules[0].filters[0].requestHeaderModifier",
            "missing",
        ),
        (
            "  - matches: [{path: {type: Exact, value: /x}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /y}}}]\n    backendRefs: [{name: a}]\n",
            "spec.rules[0].filters[0].urlRewrite.path.type",
            "ReplacePrefixMatch needs every match",
        ),
        (
            "  - backendRefs: [{name: a, kind: ServiceImport, group: multicluster.x-k8s.io}]\n",
            "spec.rules[0].backendRefs[0].kind",
            "`ServiceImport`",
        ),
        (
            "  - retry: {codes: [200]}\n    backendRefs: [{name: a}]\n",
            "spec.rules[0].retry.codes[0]",
            "not a retriable status",
        ),
    ];
    for (rules, field, message) in cases {
        let (got_field, got_message) = field_error(&format!("{base}{rules}"), "HTTPRoute app/r");
        assert_eq!(got_field, field, "{rules}");
        assert!(got_message.contains(message), "{rules}: {got_message}");
    }
}

#[test]
fn hostnames_on_the_waypoint_parent_are_refused() {
    let (field, _) = field_error(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: app}\nspec:\n  parentRefs: [{name: waypoint}]\n  hostnames: [a.example]\n",
        "HTTPRoute app/r",
    );
    assert_eq!(field, "spec.hostnames");
}

/// Lets HTTPRoutes of namespace `app` use Service `canary/reviews-v3`.
const GRANT: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-app, namespace: canary}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: app}]
  to: [{group: "", kind: Service, name: reviews-v3}]
"#;

/// Each backend of the default route, and whether it is refused.
fn refused(rules: &Rules) -> Vec<(String, bool)> {
    let entry = rules
        .route(&reviews(), &Req::get("/").view())
        .expect("a route");
    match &entry.rule.action {
        Action::Forward(b) => b
            .iter()
            .map(|b| (b.service.to_string(), b.refused.is_some()))
            .collect(),
        other => panic!("expected forward, got {other:?}"),
    }
}

#[test]
fn a_backend_in_another_namespace_needs_a_reference_grant() {
    let without = [
        ("app/reviews-v1".to_owned(), false),
        ("canary/reviews-v3".to_owned(), true),
    ];
    let with = [
        ("app/reviews-v1".to_owned(), false),
        ("canary/reviews-v3".to_owned(), false),
    ];
    assert_eq!(refused(&load(REVIEWS)), without);
    assert_eq!(refused(&load(&format!("{REVIEWS}{GRANT}"))), with);
    // Every Service of the namespace, when the grant names none.
    let any = GRANT.replace(", name: reviews-v3", "");
    assert_eq!(refused(&load(&format!("{REVIEWS}{any}"))), with);
    // Another Service, another source namespace, the grant in another namespace, another
    // source kind: refused still.
    for other in [
        GRANT.replace("name: reviews-v3", "name: ratings"),
        GRANT.replace("namespace: app}", "namespace: web}"),
        GRANT.replace("namespace: canary}", "namespace: web}"),
        GRANT.replace("kind: HTTPRoute", "kind: GRPCRoute"),
    ] {
        assert_eq!(
            refused(&load(&format!("{REVIEWS}{other}"))),
            without,
            "{other}"
        );
    }
}

#[test]
fn a_bad_reference_grant_names_its_field() {
    let (field, message) = field_error(
        &GRANT.replace("  to: [", "  too: []\n  to: ["),
        "ReferenceGrant canary/from-app",
    );
    assert_eq!(field, "spec.too");
    assert!(message.starts_with("unknown field `too`"), "{message}");
    let (field, message) = field_error(
        &GRANT.replace(
            "from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: app}]",
            "from: []",
        ),
        "ReferenceGrant canary/from-app",
    );
    assert_eq!(
        (field.as_str(), message.as_str()),
        ("spec.from", "must name at least one source")
    );
}
