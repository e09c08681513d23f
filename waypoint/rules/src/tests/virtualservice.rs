use super::{Req, field_error, load, load_err};
use crate::{Action, ObjectRef, PathMatch, PathRewrite, RetryOn, RetryPolicy, RulesError};
use std::time::Duration;

const REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: app
spec:
  hosts:
  - reviews.app.svc.cluster.local
  - ratings
  http:
  - name: jason
    match:
    - headers:
        end-user:
          exact: jason
      uri:
        prefix: /reviews
    route:
    - destination:
        host: reviews
        subset: v2
    fault:
      delay:
        fixedDelay: 7s
        percentage:
          value: 10
      abort:
        httpStatus: 503
        percentage:
          value: 0.5
  - match:
    - uri:
        exact: /health
      withoutHeaders:
        x-probe: {}
    directResponse:
      status: 204
  - route:
    - destination:
        host: reviews
        subset: v1
        port:
          number: 9080
      weight: 75
    - destination:
        host: reviews.canary.svc.cluster.local
        subset: v3
      weight: 25
    headers:
      request:
        set:
          x-mesh: waypoint
      response:
        remove: [server]
    timeout: 0.5s
    retries:
      attempts: 3
      perTryTimeout: 250ms
      retryOn: 5xx,reset,503,retriable-status-codes
    mirror:
      host: shadow
    mirrorPercentage:
      value: 5
"#;

fn reviews() -> ObjectRef {
    ObjectRef::new("app", "reviews")
}

#[test]
fn parses_routes_in_order_for_every_host() {
    let rules = load(REVIEWS);
    assert_eq!(rules.routes[&reviews()].len(), 3);
    assert_eq!(rules.routes[&ObjectRef::new("app", "ratings")].len(), 3);

    let jason = Req::get("/reviews/1").header("end-user", "jason");
    let entry = rules.route(&reviews(), &jason.view()).expect("route");
    assert_eq!(
        entry.rule.name,
        "VirtualService app/reviews http[0] (jason)"
    );
    assert!(matches!(&entry.matcher.path, Some(PathMatch::Prefix(p)) if p == "/reviews"));
    let fault = entry.rule.fault.as_ref().expect("fault");
    let delay = fault.delay.as_ref().expect("delay");
    assert_eq!((delay.fixed, delay.percent), (Duration::from_secs(7), 10.0));
    let abort = fault.abort.as_ref().expect("abort");
    assert_eq!((abort.status, abort.percent), (503, 0.5));
    assert_eq!(
        entry.rule.retry, None,
        "not given: the proxy applies Istio's default"
    );

    let health = rules
        .route(&reviews(), &Req::get("/health").view())
        .expect("route");
    assert!(matches!(
        health.rule.action,
        Action::DirectResponse { status: 204 }
    ));
    let probe = Req::get("/health").header("x-probe", "1");
    let entry = rules.route(&reviews(), &probe.view()).expect("route");
    assert!(
        entry.rule.name.ends_with("http[2]"),
        "withoutHeaders excludes probes"
    );

    match &entry.rule.action {
        Action::Forward(b) => {
            let got: Vec<_> = b
                .iter()
                .map(|b| (b.service.to_string(), b.subset.clone(), b.port, b.weight))
                .collect();
            assert_eq!(
                got,
                [
                    ("app/reviews".into(), Some("v1".into()), Some(9080), 75),
                    ("canary/reviews".into(), Some("v3".into()), None, 25),
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(entry.rule.timeout, Some(Duration::from_millis(500)));
    assert_eq!(entry.rule.request_headers.set[0].0, "x-mesh");
    assert_eq!(entry.rule.response_headers.remove[0], "server");
    assert_eq!(
        entry.rule.retry,
        Some(RetryPolicy {
            attempts: 3,
            per_try_timeout: Some(Duration::from_millis(250)),
            on: RetryOn {
                five_xx: true,
                reset: true,
                status_codes: vec![503],
                ..RetryOn::default()
            },
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
        })
    );
    let mirror = &entry.rule.mirrors[0];
    assert_eq!(
        (mirror.service.to_string(), mirror.percent),
        ("app/shadow".into(), 5.0)
    );
}

#[test]
fn first_match_wins_without_sorting() {
    let rules = load(
        r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: r, namespace: app}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /}}]
    route: [{destination: {host: broad}}]
  - match: [{uri: {exact: /specific}}]
    route: [{destination: {host: specific}}]
"#,
    );
    let entry = rules
        .route(&reviews(), &Req::get("/specific").view())
        .expect("route");
    assert!(
        matches!(&entry.rule.action, Action::Forward(b) if b[0].service.name == "broad" && b[0].weight == 100)
    );
}

#[test]
fn rewrite_uri_replaces_the_matched_prefix() {
    let rules = load(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: r, namespace: app}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /v1/}, port: 9080}, {uri: {exact: /old}}]
    rewrite: {uri: /v2/, authority: new.app}
    route: [{destination: {host: reviews}}]
"#,
    );
    let entries = &rules.routes[&reviews()];
    let rewrite = entries[0].rule.rewrite.as_ref().expect("rewrite");
    assert_eq!(rewrite.hostname.as_deref(), Some("new.app"));
    assert!(
        matches!(&rewrite.path, Some(PathRewrite::Literal { matched, replacement }) if matched == "/v1/" && replacement == "/v2/")
    );
    assert!(
        matches!(&entries[1].rule.rewrite.as_ref().and_then(|r| r.path.clone()), Some(PathRewrite::Full(p)) if p == "/v2/")
    );
    assert_eq!(entries[0].matcher.port, Some(9080));
    assert!(
        rules
            .route(&reviews(), &Req::get("/v1/x").port(80).view())
            .is_none()
    );
}

#[test]
fn ingress_virtual_services_are_skipped() {
    let rules = load(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress, namespace: app}
spec:
  hosts: [reviews]
  gateways: [istio-system/public]
  http:
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: both, namespace: app}
spec:
  hosts: [ratings]
  gateways: [istio-system/public, mesh]
  http:
  - route: [{destination: {host: ratings}}]
"#,
    );
    assert!(!rules.routes.contains_key(&reviews()));
    assert!(rules.routes.contains_key(&ObjectRef::new("app", "ratings")));
}

#[test]
fn errors_name_their_field() {
    let base = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: app}\nspec:\n  hosts: [reviews]\n  http:\n";
    let cases = [
        (
            "  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 2, retryOn: 'connect-failure,on-a-whim'}\n",
            "spec.http[0].retries.retryOn",
            "unknown retry condition `on-a-whim`",
        ),
        (
            "  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 2, retryOn: 'unavailable'}\n",
            "spec.http[0].retries.retryOn",
            "gRPC retry condition `unavailable`",
        ),
        (
            "  - route: [{destination: {host: a}, weight: 0}, {destination: {host: b}}]\n",
            "spec.http[0].route",
            "every weight is 0",
        ),
        (
            "  - route: [{destination: {host: a}}]\n    corsPolicy: {allowOrigins: [{exact: x}]}\n",
            "spec.http[0].corsPolicy",
            "unknown field `corsPolicy`",
        ),
        (
            "  - route: [{destination: {host: a}}]\n    timeout: soon\n",
            "spec.http[0].timeout",
            "invalid duration `soon`",
        ),
        (
            "  - route: [{destination: {host: a}}]\n    timeout: 9300000000000000000s\n",
            "spec.http[0].timeout",
            "invalid duration `9300000000000000000s`: longer than the maximum of 8760h",
        ),
        (
            "  - route: [{destination: {host: a}}]\n    fault: {delay: {fixedDelay: 9000h, percentage: {value: 1}}}\n",
            "spec.http[0].fault.delay.fixedDelay",
            "longer than the maximum",
        ),
        (
            "  - route: [{destination: {host: a}}]\n    rewrite: {authority: 'bad host'}\n",
            "spec.http[0].rewrite.authority",
            "`bad host` is not a valid host",
        ),
        (
            "  - route: [{destination: {host: a}}]\n    rewrite: {uri: '/a b'}\n",
            "spec.http[0].rewrite.uri",
            "`/a b` is not a valid URL path",
        ),
        (
            "  - redirect: {uri: \"/x\\ty\", authority: 'ok:80'}\n",
            "spec.http[0].redirect.uri",
            "is not a valid URL path",
        ),
        (
            "  - redirect: {authority: 'user@host'}\n",
            "spec.http[0].redirect.authority",
            "not a valid host",
        ),
        (
            "  - match: [{uri: {regex: '[a-'}}]\n    route: [{destination: {host: a}}]\n",
            "spec.http[0].match[0].uri.regex",
            "invalid regular expression",
        ),
        (
            "  - match: [{uri: {exact: /a, prefix: /b}}]\n    route: [{destination: {host: a}}]\n",
            "spec.http[0].match[0].uri",
            "exactly one",
        ),
        (
            "  - match: [{uri: {prefix: /}}]\n",
            "spec.http[0]",
            "exactly one of `route`, `redirect`",
        ),
        (
            "  - route: [{destination: {host: '*.example.com'}}]\n",
            "spec.http[0].route[0].destination.host",
            "wildcard",
        ),
        (
            "  - route: [{destination: {host: a}}]\n    fault: {abort: {httpStatus: 700}}\n",
            "spec.http[0].fault.abort.httpStatus",
            "700",
        ),
        (
            "  - route: [{destination: {host: a}}]\n    fault: {delay: {fixedDelay: 1s, percentage: {value: 150}}}\n",
            "spec.http[0].fault.delay.percentage.value",
            "150",
        ),
        (
            "  - redirect: {uri: /x, redirectCode: 200}\n",
            "spec.http[0].redirect.redirectCode",
            "not a redirect status",
        ),
    ];
    for (http, field, message) in cases {
        let (got_field, got_message) =
            field_error(&format!("{base}{http}"), "VirtualService app/r");
        assert_eq!(got_field, field, "{http}");
        assert!(got_message.contains(message), "{http}: {got_message}");
    }
    let (field, message) = field_error(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: app}\nspec:\n  hosts: [reviews]\n  tcp: []\n",
        "VirtualService app/r",
    );
    assert_eq!(field, "spec.tcp");
    assert!(message.contains("unknown field `tcp`"), "{message}");
}

#[test]
fn a_service_takes_httproutes_or_one_virtual_service() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: NAME, namespace: app}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n";
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: app}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: reviews}]\n";
    for text in [
        format!(
            "{}---\n{}",
            vs.replace("NAME", "one"),
            vs.replace("NAME", "two")
        ),
        format!("{}---\n{}", vs.replace("NAME", "one"), route),
        format!("{}---\n{}", route, vs.replace("NAME", "one")),
    ] {
        match load_err(&text) {
            RulesError::Conflict(c) => {
                assert!(
                    c.message.contains("service app/reviews already has routes"),
                    "{}",
                    c.message
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The rule of the one `http` route of a VirtualService for reviews (`route`: its YAML,
/// indented under `http:`).
fn only_rule(route: &str) -> std::sync::Arc<crate::RouteRule> {
    let rules = load(&format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: app}}\nspec:\n  hosts: [reviews]\n  http:\n{route}"
    ));
    let entry = rules
        .route(&reviews(), &Req::get("/").view())
        .expect("route");
    entry.rule.clone()
}

/// Istio applies a fault only to the `percentage` given: without one, never.
#[test]
fn a_fault_without_percentage_is_never_applied() {
    let rule = only_rule(
        "  - route: [{destination: {host: reviews}}]\n    fault: {delay: {fixedDelay: 1s}, abort: {httpStatus: 503}}\n",
    );
    let fault = rule.fault.as_ref().expect("fault");
    assert_eq!(fault.delay.as_ref().map(|d| d.percent), Some(0.0));
    assert_eq!(fault.abort.as_ref().map(|a| a.percent), Some(0.0));
}

/// `attempts: 0` is no retry policy at all in Istio, so its `perTryTimeout` does not apply.
#[test]
fn no_retries_means_no_per_try_timeout() {
    let rule = only_rule(
        "  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 0, perTryTimeout: 1s}\n",
    );
    let retry = rule.retry.as_ref().expect("retry");
    assert_eq!((retry.attempts, retry.per_try_timeout), (0, None));
}
