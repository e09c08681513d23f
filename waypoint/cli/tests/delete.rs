//! `waypoint delete` against recorded API server responses.

mod support;

use support::{ApiServer, chain, expect, run};
use waypoint_cli::Error;

const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/bookinfo/gateways";

#[tokio::test]
async fn missing_waypoint_is_an_error_naming_it() {
    let server = ApiServer::start(
        vec![
            expect("GET", GATEWAYS, 200, "gateways-bookinfo.json"),
            expect(
                "DELETE",
                &format!("{GATEWAYS}/waypoint"),
                200,
                "status-delete-success.json",
            ),
            // The warning check: is the namespace still pointed at what was deleted?
            expect(
                "GET",
                "/api/v1/namespaces/bookinfo",
                200,
                "namespace-labeled.json",
            ),
        ],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, out) = run(&[
        "delete",
        "--kubeconfig",
        &kubeconfig,
        "-n",
        "bookinfo",
        "waypoint",
        "ghost",
        // A Gateway of another class is not a waypoint: never deleted.
        "bookinfo-gateway",
    ])
    .await;
    let err = result.expect_err("ghost is missing");
    assert!(matches!(err, Error::WaypointNotFound { .. }), "{err:?}");
    assert_eq!(
        chain(&err),
        "waypoint bookinfo/ghost, bookinfo/bookinfo-gateway not found"
    );
    assert_eq!(
        out,
        "waypoint bookinfo/waypoint deleted\n\
         ⚠️ Warning: namespace bookinfo is still labeled \"istio.io/use-waypoint: waypoint\", a \
         waypoint that no longer exists. Consider running \
         `kubectl label namespace bookinfo istio.io/use-waypoint-`\n"
    );
    let seen = server.seen();
    assert_eq!(seen[1].method, "DELETE");
    assert_eq!(seen[1].path, format!("{GATEWAYS}/waypoint"));
}

#[tokio::test]
async fn all_deletes_only_waypoints() {
    let server = ApiServer::start(
        vec![
            expect("GET", GATEWAYS, 200, "gateways-bookinfo.json"),
            expect(
                "DELETE",
                &format!("{GATEWAYS}/waypoint"),
                200,
                "status-delete-success.json",
            ),
            expect(
                "DELETE",
                &format!("{GATEWAYS}/reviews-waypoint"),
                404,
                "status-404-gateway-ghost.json",
            ),
            expect(
                "GET",
                "/api/v1/namespaces/bookinfo",
                200,
                "namespace-default.json",
            ),
        ],
        Some("bookinfo"),
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, out) = run(&["delete", "--kubeconfig", &kubeconfig, "--all"]).await;
    // reviews-waypoint vanished between the list and the delete: reported, not hidden.
    let err = result.expect_err("one was gone");
    assert!(
        chain(&err).contains("bookinfo/reviews-waypoint not found"),
        "{}",
        chain(&err)
    );
    assert_eq!(out, "waypoint bookinfo/waypoint deleted\n");
    server.seen();
}

#[tokio::test]
async fn default_name_and_crds_missing() {
    let server = ApiServer::start(
        vec![expect("GET", GATEWAYS, 404, "status-404-no-resource.json")],
        Some("bookinfo"),
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, _) = run(&["delete", "--kubeconfig", &kubeconfig]).await;
    assert!(
        matches!(result, Err(Error::GatewayApiMissing)),
        "{result:?}"
    );
    server.seen();
}
