//! `waypoint apply` against recorded API server responses.

mod support;

use serde_json::json;
use support::{ApiServer, chain, expect, run};
use waypoint_cli::Error;

const NS: &str = "/api/v1/namespaces/default";
const GW: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/waypoint";

#[tokio::test]
async fn apply_enroll_and_wait() {
    let server = ApiServer::start(
        vec![
            expect("GET", NS, 200, "namespace-default.json"),
            expect("PATCH", GW, 200, "gateway-applied.json"),
            expect("GET", GW, 200, "gateway-not-programmed.json"),
            expect("GET", GW, 200, "gateway-programmed.json"),
            expect("PATCH", NS, 200, "namespace-labeled.json"),
        ],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, out) = run(&[
        "apply",
        "--kubeconfig",
        &kubeconfig,
        "--enroll-namespace",
        "--wait",
        "--for",
        "service",
        "--poll-interval",
        "10ms",
    ])
    .await;
    assert!(result.is_ok(), "{:?}", result.as_ref().map_err(chain));
    assert_eq!(
        out,
        "⚠️ Warning: namespace is not enrolled in ambient. Consider running \
         `kubectl label namespace default istio.io/dataplane-mode=ambient`\n\
         ✅ waypoint default/waypoint applied\n\
         ✅ waypoint default/waypoint is ready!\n\
         ✅ namespace default labeled with \"istio.io/use-waypoint: waypoint\"\n"
    );

    let seen = server.seen();
    let methods: Vec<_> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        methods,
        [
            ("GET", NS),
            ("PATCH", GW),
            ("GET", GW),
            ("GET", GW),
            ("PATCH", NS)
        ]
    );

    let apply = &seen[1];
    assert_eq!(
        apply.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        apply.query.get("fieldManager").map(String::as_str),
        Some("waypoint")
    );
    // istioctl does not force: a field owned by another manager is a conflict, not taken over.
    assert_eq!(apply.query.get("force"), None);
    assert_eq!(
        apply.json(),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {
                "name": "waypoint",
                "namespace": "default",
                "labels": {"istio.io/waypoint-for": "service"},
            },
            "spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        })
    );

    let label = &seen[4];
    assert_eq!(
        label.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        label.json(),
        json!({"metadata": {"labels": {"istio.io/use-waypoint": "waypoint"}}})
    );
}

#[tokio::test]
async fn apply_without_flags_only_applies() {
    let server = ApiServer::start(
        vec![
            expect("GET", NS, 200, "namespace-uses-other.json"),
            expect("PATCH", GW, 200, "gateway-applied.json"),
        ],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, out) = run(&["apply", "--kubeconfig", &kubeconfig]).await;
    assert!(result.is_ok(), "{:?}", result.as_ref().map_err(chain));
    assert_eq!(out, "✅ waypoint default/waypoint applied\n");
    let seen = server.seen();
    let body = seen[1].json();
    assert_eq!(body["metadata"].get("labels"), None, "no --for, no label");
}

#[tokio::test]
async fn enroll_refused_when_namespace_uses_another_waypoint() {
    let server = ApiServer::start(
        vec![expect("GET", NS, 200, "namespace-uses-other.json")],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, out) = run(&["apply", "--kubeconfig", &kubeconfig, "--enroll-namespace"]).await;
    let err = result.expect_err("must refuse");
    assert!(
        matches!(&err, Error::NamespaceUsesOtherWaypoint { current, .. } if current == "reviews-waypoint"),
        "{err:?}"
    );
    assert!(chain(&err).contains("--overwrite"), "{}", chain(&err));
    assert_eq!(out, "");
    // Nothing was applied or labeled.
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn overwrite_replaces_the_namespace_waypoint() {
    let server = ApiServer::start(
        vec![
            expect("GET", NS, 200, "namespace-uses-other.json"),
            expect("PATCH", GW, 200, "gateway-applied.json"),
            expect("PATCH", NS, 200, "namespace-labeled.json"),
        ],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, out) = run(&[
        "apply",
        "--kubeconfig",
        &kubeconfig,
        "--enroll-namespace",
        "--overwrite",
    ])
    .await;
    assert!(result.is_ok(), "{:?}", result.as_ref().map_err(chain));
    // Already ambient: no warning.
    assert_eq!(
        out,
        "✅ waypoint default/waypoint applied\n\
         ✅ namespace default labeled with \"istio.io/use-waypoint: waypoint\"\n"
    );
    let seen = server.seen();
    assert_eq!(
        seen[2].json(),
        json!({"metadata": {"labels": {"istio.io/use-waypoint": "waypoint"}}})
    );
}

#[tokio::test]
async fn wait_times_out_naming_the_last_condition() {
    let server = ApiServer::start(
        vec![
            expect("GET", NS, 200, "namespace-default.json"),
            expect("PATCH", GW, 200, "gateway-applied.json"),
            expect("GET", GW, 200, "gateway-not-programmed.json"),
        ],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, _) = run(&[
        "apply",
        "--kubeconfig",
        &kubeconfig,
        "--wait",
        "--waypoint-timeout",
        "0s",
    ])
    .await;
    let err = result.expect_err("must time out");
    assert!(matches!(err, Error::WaitTimeout { .. }), "{err:?}");
    let text = chain(&err);
    assert!(text.contains("default/waypoint"), "{text}");
    assert!(text.contains("AddressNotAssigned"), "{text}");
    server.seen();
}

#[tokio::test]
async fn gateway_api_crds_missing() {
    let server = ApiServer::start(
        vec![
            expect("GET", NS, 200, "namespace-default.json"),
            expect("PATCH", GW, 404, "status-404-no-resource.json"),
        ],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, _) = run(&["apply", "--kubeconfig", &kubeconfig]).await;
    let err = result.expect_err("must fail");
    assert!(matches!(err, Error::GatewayApiMissing), "{err:?}");
    let text = chain(&err);
    assert!(
        text.contains("the Gateway API CRDs are not installed"),
        "{text}"
    );
    assert!(text.contains("kubectl apply -k"), "{text}");
    server.seen();
}

#[tokio::test]
async fn forbidden_names_verb_and_resource() {
    let server = ApiServer::start(
        vec![
            expect("GET", NS, 200, "namespace-default.json"),
            expect("PATCH", GW, 403, "status-403-patch-gateway.json"),
        ],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, _) = run(&["apply", "--kubeconfig", &kubeconfig]).await;
    let text = chain(&result.expect_err("must fail"));
    assert!(
        text.starts_with(
            "forbidden: cannot patch gateways.gateway.networking.k8s.io \"waypoint\" in namespace \"default\""
        ),
        "{text}"
    );
    assert!(text.contains("User \"dev@example.com\""), "{text}");
    server.seen();
}

#[tokio::test]
async fn namespace_not_found() {
    let server = ApiServer::start(
        vec![expect(
            "GET",
            "/api/v1/namespaces/nope",
            404,
            "status-404-namespace-nope.json",
        )],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, _) = run(&["apply", "--kubeconfig", &kubeconfig, "-n", "nope"]).await;
    let err = result.expect_err("must fail");
    assert_eq!(chain(&err), "namespace nope not found");
    server.seen();
}
