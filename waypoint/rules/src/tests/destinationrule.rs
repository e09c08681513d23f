use super::{field_error, load};
use crate::{ConnectionPool, LoadBalancer, ObjectRef, OutlierDetection, RulesError};
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn parses_a_destination_rule() {
    let rules = load(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: app
spec:
  host: reviews.app.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 1000
        maxRequestsPerConnection: 5
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: all
"#,
    );
    let policy = &rules.traffic[&ObjectRef::new("app", "reviews")];
    assert_eq!(policy.load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(
        policy.connection_pool,
        ConnectionPool {
            max_connections: Some(100),
            max_pending_requests: Some(10),
            max_requests: Some(1000),
            max_requests_per_connection: Some(5),
            connect_timeout: Some(Duration::from_millis(30)),
        }
    );
    assert_eq!(
        policy.outlier,
        Some(OutlierDetection {
            consecutive_5xx: 7,
            interval: Duration::from_secs(300),
            base_ejection_time: Duration::from_secs(900),
            max_ejection_percent: 10,
        })
    );
    let v1 = BTreeMap::from([("version".to_owned(), "v1".to_owned())]);
    assert_eq!(policy.subsets.get("v1"), Some(&v1));
    assert_eq!(policy.subsets.get("all"), Some(&BTreeMap::new()));
}

#[test]
fn defaults_and_least_conn_alias() {
    let rules = load(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: ratings\n  trafficPolicy:\n    loadBalancer: {simple: LEAST_CONN}\n    outlierDetection: {}\n",
    );
    let policy = &rules.traffic[&ObjectRef::new("default", "ratings")];
    assert_eq!(policy.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(
        policy.outlier,
        Some(OutlierDetection {
            consecutive_5xx: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        })
    );
}

#[test]
fn refusals_name_their_field() {
    let base = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: app}\nspec:\n  host: reviews\n";
    let cases = [
        (
            "  subsets: [{name: v1, labels: {app: reviews}}]\n",
            "spec.subsets[0].labels.app",
            "only `version`",
        ),
        (
            "  subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}]\n",
            "spec.subsets[0].trafficPolicy",
            "not supported",
        ),
        (
            "  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}\n",
            "spec.trafficPolicy.loadBalancer.simple",
            "unknown variant `PASSTHROUGH`",
        ),
        (
            "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x}}}\n",
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "unknown field",
        ),
        (
            "  trafficPolicy: {tls: {mode: SIMPLE}}\n",
            "spec.trafficPolicy.tls.mode",
            "SIMPLE",
        ),
        (
            "  trafficPolicy: {portLevelSettings: []}\n",
            "spec.trafficPolicy.portLevelSettings",
            "unknown field",
        ),
        (
            "  trafficPolicy: {outlierDetection: {interval: 10}}\n",
            "spec.trafficPolicy.outlierDetection.interval",
            "invalid duration `10`",
        ),
        (
            "  trafficPolicy: {outlierDetection: {baseEjectionTime: 9300000000000000000s}}\n",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
            "longer than the maximum of 8760h",
        ),
    ];
    for (rest, field, message) in cases {
        let (got_field, got_message) =
            field_error(&format!("{base}{rest}"), "DestinationRule app/r");
        assert_eq!(got_field, field, "{rest}");
        assert!(got_message.contains(message), "{rest}: {got_message}");
    }
}

#[test]
fn two_rules_for_one_host_conflict() {
    let one = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: NAME, namespace: app}\nspec:\n  host: reviews\n";
    let err = super::load_err(&format!(
        "{}---\n{}",
        one.replace("NAME", "a"),
        one.replace("NAME", "b")
    ));
    assert!(
        matches!(err, RulesError::Conflict(ref c) if c.message.contains("already has DestinationRule app/a")),
        "{err}"
    );
}

/// Istio reads a connection-pool limit of 0 as no limit.
#[test]
fn a_limit_of_zero_is_no_limit() {
    let rules = load(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: app}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 0}
      http: {http1MaxPendingRequests: 0, http2MaxRequests: 0, maxRequestsPerConnection: 0}
"#,
    );
    let policy = &rules.traffic[&ObjectRef::new("app", "reviews")];
    assert_eq!(policy.connection_pool, ConnectionPool::default());
}
