use super::{Req, field_error, load};
use crate::{DenyReason, ObjectRef, Peer, Rules};
use http::Method;
use std::net::IpAddr;

fn reviews() -> ObjectRef {
    ObjectRef::new("app", "reviews")
}

fn peer(principal: Option<&'static str>, ip: &str) -> Peer<'static> {
    Peer {
        principal,
        namespace: principal.and_then(|p| p.split('/').nth(2)),
        ip: ip.parse::<IpAddr>().expect("ip"),
    }
}

const FRONTEND: Option<&str> = Some("cluster.local/ns/web/sa/frontend");
const BATCH: Option<&str> = Some("cluster.local/ns/jobs/sa/batch");

fn check(rules: &Rules, who: Option<&'static str>, req: &Req) -> Result<(), DenyReason> {
    rules
        .authorize(&reviews(), &peer(who, "10.0.0.5"), &req.view())
        .map_err(|d| d.reason)
}

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-frontend
  namespace: app
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: reviews
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["spiffe://cluster.local/ns/web/sa/frontend"]
    to:
    - operation:
        methods: ["GET", "HEAD"]
        paths: ["/reviews/*", "/health"]
        ports: ["9080"]
  - from:
    - source:
        namespaces: ["jobs"]
        ipBlocks: ["10.0.0.0/16", "192.168.1.1"]
    to:
    - operation:
        methods: ["POST"]
        paths: ["*/batch"]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: app
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/reviews/admin*"]
  - from:
    - source:
        notNamespaces: ["web", "jobs"]
"#;

#[test]
fn deny_beats_allow_and_allow_must_match() {
    let rules = load(POLICIES);
    assert_eq!(rules.authz.len(), 2);
    assert_eq!(rules.authz[1].services, None, "targets the waypoint");
    assert_eq!(check(&rules, FRONTEND, &Req::get("/reviews/1")), Ok(()));
    assert_eq!(check(&rules, FRONTEND, &Req::get("/health")), Ok(()));
    assert_eq!(
        check(&rules, FRONTEND, &Req::get("/reviews/admin/x")),
        Err(DenyReason::DenyRule(0)),
        "allowed by ALLOW, denied by DENY"
    );
    assert_eq!(
        check(&rules, FRONTEND, &Req::get("/healthz")),
        Err(DenyReason::NoAllowMatch)
    );
    assert_eq!(
        check(&rules, FRONTEND, &Req::get("/reviews/1").port(8080)),
        Err(DenyReason::NoAllowMatch)
    );
    assert_eq!(
        check(
            &rules,
            FRONTEND,
            &Req::get("/reviews/1").method(Method::POST)
        ),
        Err(DenyReason::NoAllowMatch)
    );
    assert_eq!(
        check(&rules, BATCH, &Req::get("/jobs/batch").method(Method::POST)),
        Ok(())
    );
    assert_eq!(
        check(&rules, BATCH, &Req::get("/reviews/1")),
        Err(DenyReason::NoAllowMatch)
    );
    let outside = rules.authorize(
        &reviews(),
        &peer(BATCH, "10.1.0.5"),
        &Req::get("/jobs/batch").method(Method::POST).view(),
    );
    assert_eq!(
        outside.map_err(|d| d.reason),
        Err(DenyReason::NoAllowMatch),
        "ipBlocks"
    );
    let other_ns = check(
        &rules,
        Some("cluster.local/ns/evil/sa/x"),
        &Req::get("/reviews/1"),
    );
    assert_eq!(other_ns, Err(DenyReason::DenyRule(1)));
    let denied = rules
        .authorize(
            &reviews(),
            &peer(FRONTEND, "10.0.0.5"),
            &Req::get("/reviews/admin").view(),
        )
        .expect_err("denied");
    assert_eq!(
        denied.to_string(),
        "denied by app/deny-admin: DENY rule 0 matched"
    );
    let denied = rules
        .authorize(
            &reviews(),
            &peer(FRONTEND, "10.0.0.5"),
            &Req::get("/nope").view(),
        )
        .expect_err("denied");
    assert_eq!(
        denied.to_string(),
        "denied by app/allow-frontend: no ALLOW policy matched"
    );
}

#[test]
fn service_policies_apply_only_to_their_service() {
    let rules = load(POLICIES);
    let ratings = ObjectRef::new("app", "ratings");
    // Only the DENY policy (on the whole waypoint) applies to ratings: anything else passes.
    assert!(
        rules
            .authorize(
                &ratings,
                &peer(BATCH, "1.2.3.4"),
                &Req::get("/anything").view()
            )
            .is_ok()
    );
    assert!(
        rules
            .authorize(
                &ratings,
                &peer(FRONTEND, "1.2.3.4"),
                &Req::get("/reviews/admin").view()
            )
            .is_err()
    );
}

#[test]
fn no_rules_allows_nothing_and_an_empty_rule_allows_everything() {
    let policy = |rules: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: app}}\nspec:\n  targetRefs: [{{kind: Service, group: \"\", name: reviews}}]\n{rules}"
        )
    };
    let none = load(&policy(""));
    assert_eq!(
        check(&none, FRONTEND, &Req::get("/")),
        Err(DenyReason::NoAllowMatch)
    );
    let empty = load(&policy("  rules: []\n"));
    assert_eq!(
        check(&empty, FRONTEND, &Req::get("/")),
        Err(DenyReason::NoAllowMatch)
    );
    let all = load(&policy("  rules: [{}]\n"));
    assert_eq!(check(&all, FRONTEND, &Req::get("/")), Ok(()));
    assert_eq!(check(&all, None, &Req::get("/")), Ok(()));
    let deny_nothing = load(&policy("  action: DENY\n"));
    assert_eq!(check(&deny_nothing, FRONTEND, &Req::get("/")), Ok(()));
    assert_eq!(
        check(&Rules::default(), None, &Req::get("/")),
        Ok(()),
        "no policy: allowed"
    );
}

#[test]
fn plaintext_peers_fail_principals_and_pass_not_principals() {
    let text = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - from: [{source: {principals: ["*"]}}]
  - from: [{source: {notPrincipals: ["cluster.local/ns/web/*"]}}]
    to: [{operation: {paths: ["/public/*"], hosts: ["REVIEWS.app.svc.cluster.local"]}}]
"#;
    let rules = load(text);
    assert_eq!(
        check(&rules, FRONTEND, &Req::get("/private")),
        Ok(()),
        "`*` needs any principal"
    );
    assert_eq!(
        check(&rules, None, &Req::get("/private")),
        Err(DenyReason::NoAllowMatch)
    );
    assert_eq!(check(&rules, None, &Req::get("/public/x")), Ok(()));
    let mut with_port = Req::get("/public/x");
    with_port.host = "Reviews.App.svc.cluster.local:9080".into();
    assert_eq!(
        check(&rules, None, &with_port),
        Ok(()),
        "hosts are case-insensitive, port ignored"
    );
    with_port.host = "other".into();
    assert_eq!(
        check(&rules, None, &with_port),
        Err(DenyReason::NoAllowMatch)
    );
}

#[test]
fn policies_not_for_this_waypoint_are_skipped() {
    let rules = load(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: selector, namespace: app}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: namespace-wide, namespace: app}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-waypoint, namespace: app}
spec:
  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: east}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry
  namespace: app
  annotations: {istio.io/dry-run: "true"}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
"#,
    );
    assert!(rules.authz.is_empty(), "{:?}", rules.authz);
}

#[test]
fn refusals_name_their_field() {
    let base = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: app}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: reviews}]\n";
    let cases = [
        ("  action: AUDIT\n", "spec.action", "AUDIT is not supported"),
        (
            "  action: CUSTOM\n  provider: {name: ext}\n",
            "spec.action",
            "CUSTOM is not supported",
        ),
        (
            "  rules: [{when: [{key: 'request.headers[x]', values: [y]}]}]\n",
            "spec.rules[0].when",
            "not supported",
        ),
        (
            "  rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]\n",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "`10.0.0.0/33`",
        ),
        (
            "  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]\n",
            "spec.rules[0].from[0].source.requestPrincipals",
            "not supported",
        ),
        (
            "  rules: [{to: [{operation: {ports: ['http']}}]}]\n",
            "spec.rules[0].to[0].operation.ports[0]",
            "port number",
        ),
        (
            "  rules: [{to: [{operation: {paths: ['/a/*/b']}}]}]\n",
            "spec.rules[0].to[0].operation.paths[0]",
            "`prefix*`",
        ),
        (
            "  rules: [{to: [{operation: {paths: ['/a/{*}/b']}}]}]\n",
            "spec.rules[0].to[0].operation.paths[0]",
            "path template",
        ),
        (
            "  rules: [{to: [{operation: {methods: [GET], verbs: [x]}}]}]\n",
            "spec.rules[0].to[0].operation.verbs",
            "unknown field `verbs`",
        ),
    ];
    for (rest, field, message) in cases {
        let (got_field, got_message) =
            field_error(&format!("{base}{rest}"), "AuthorizationPolicy app/p");
        assert_eq!(got_field, field, "{rest}");
        assert!(got_message.contains(message), "{rest}: {got_message}");
    }
    let (field, _) = field_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: app}\nspec:\n  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: ext}]\n",
        "AuthorizationPolicy app/p",
    );
    assert_eq!(field, "spec.targetRefs[0].kind");
}

#[test]
fn tcp_is_denied_by_a_path_deny_and_not_allowed_by_a_path_allow() {
    let rules = load(POLICIES);
    let tcp = |who, port| {
        rules
            .authorize_tcp(&reviews(), &peer(who, "10.0.0.5"), port)
            .map_err(|d| d.reason)
    };
    // The DENY on `/reviews/admin*` has only HTTP conditions: left out, it matches all TCP.
    assert_eq!(tcp(FRONTEND, 9080), Err(DenyReason::DenyRule(0)));
    let deny_ratings = ObjectRef::new("app", "ratings");
    assert!(
        rules
            .authorize_tcp(&deny_ratings, &peer(BATCH, "10.0.0.5"), 9080)
            .is_err(),
        "the waypoint-wide DENY applies to every service"
    );
    let allow_only = load(&POLICIES[..POLICIES.find("---").expect("two policies")]);
    let allow_tcp = |who| {
        allow_only
            .authorize_tcp(&reviews(), &peer(who, "10.0.0.5"), 9080)
            .map_err(|d| d.reason)
    };
    // Both ALLOW rules name methods and paths: neither can match a TCP tunnel.
    assert_eq!(allow_tcp(FRONTEND), Err(DenyReason::NoAllowMatch));
    let allow_text = &POLICIES[..POLICIES.find("---").expect("two policies")];
    let ports_only = load(&allow_text.replace(
        "        methods: [\"GET\", \"HEAD\"]\n        paths: [\"/reviews/*\", \"/health\"]\n",
        "",
    ));
    let ports_only = |port| {
        ports_only
            .authorize_tcp(&reviews(), &peer(FRONTEND, "10.0.0.5"), port)
            .map_err(|d| d.reason)
    };
    // An ALLOW rule with only L4 conditions holds for TCP as for HTTP.
    assert_eq!(ports_only(9080), Ok(()));
    assert_eq!(ports_only(8080), Err(DenyReason::NoAllowMatch));
}
