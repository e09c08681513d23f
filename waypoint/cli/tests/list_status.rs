//! `waypoint list` and `waypoint status` against recorded API server responses.

mod support;

use support::{ApiServer, chain, expect, run};
use waypoint_cli::Error;

#[tokio::test]
async fn list_all_namespaces_table() {
    let server = ApiServer::start(
        vec![expect(
            "GET",
            "/apis/gateway.networking.k8s.io/v1/gateways",
            200,
            "gateways-all-namespaces.json",
        )],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, out) = run(&["list", "--kubeconfig", &kubeconfig, "-A"]).await;
    assert!(result.is_ok(), "{:?}", result.as_ref().map_err(chain));
    assert_eq!(
        out,
        "\
NAMESPACE     NAME                 REVISION     TRAFFIC TYPE     PROGRAMMED
bookinfo      reviews-waypoint     canary       workload         False
bookinfo      waypoint             default      service          True
default       waypoint             default      service          True
"
    );
    server.seen();
}

#[tokio::test]
async fn list_uses_the_context_namespace() {
    let server = ApiServer::start(
        vec![expect(
            "GET",
            "/apis/gateway.networking.k8s.io/v1/namespaces/bookinfo/gateways",
            200,
            "gateways-bookinfo.json",
        )],
        Some("bookinfo"),
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, out) = run(&["list", "--kubeconfig", &kubeconfig]).await;
    assert!(result.is_ok(), "{:?}", result.as_ref().map_err(chain));
    assert_eq!(
        out,
        "\
NAME                 REVISION     TRAFFIC TYPE     PROGRAMMED
reviews-waypoint     canary       workload         False
waypoint             default      service          True
"
    );
    server.seen();
}

#[tokio::test]
async fn list_crds_missing_plain_text_404() {
    let mut missing = expect(
        "GET",
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways",
        404,
        "status-404-no-resource.json",
    );
    // Older API servers and proxies answer an unserved path in plain text.
    missing.body = "404 page not found\n".into();
    let server = ApiServer::start(vec![missing], None).await;
    let kubeconfig = server.kubeconfig();
    let (result, _) = run(&["list", "--kubeconfig", &kubeconfig]).await;
    assert!(
        matches!(result, Err(Error::GatewayApiMissing)),
        "{result:?}"
    );
    server.seen();
}

#[tokio::test]
async fn status_prints_every_condition() {
    let server = ApiServer::start(
        vec![expect(
            "GET",
            "/apis/gateway.networking.k8s.io/v1/namespaces/bookinfo/gateways",
            200,
            "gateways-bookinfo.json",
        )],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, out) = run(&["status", "--kubeconfig", &kubeconfig, "-n", "bookinfo"]).await;
    assert!(result.is_ok(), "{:?}", result.as_ref().map_err(chain));
    assert_eq!(
        out,
        "\
NAME                 STATUS     TYPE           REASON                 MESSAGE
reviews-waypoint     True       Accepted       Accepted               Resource accepted
reviews-waypoint     False      Programmed     AddressNotAssigned     Assigned to service(s) reviews-waypoint.bookinfo.svc.cluster.local:15008, but failed to assign to all requested addresses: address pending for hostname \"reviews-waypoint.bookinfo.svc.cluster.local\"
waypoint             True       Accepted       Accepted               Resource accepted
waypoint             True       Programmed     Programmed             Resource programmed, assigned to service(s) waypoint.bookinfo.svc.cluster.local:15008
"
    );
    server.seen();
}

#[tokio::test]
async fn status_of_one_waypoint_and_of_a_missing_one() {
    let server = ApiServer::start(
        vec![
            expect(
                "GET",
                "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/waypoint",
                200,
                "gateway-programmed.json",
            ),
            expect(
                "GET",
                "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/ghost",
                404,
                "status-404-gateway-ghost.json",
            ),
        ],
        None,
    )
    .await;
    let kubeconfig = server.kubeconfig();
    let (result, out) = run(&["status", "--kubeconfig", &kubeconfig, "--name", "waypoint"]).await;
    assert!(result.is_ok(), "{:?}", result.as_ref().map_err(chain));
    assert_eq!(
        out,
        "\
NAME         STATUS     TYPE           REASON         MESSAGE
waypoint     True       Accepted       Accepted       Resource accepted
waypoint     True       Programmed     Programmed     Resource programmed, assigned to service(s) waypoint.default.svc.cluster.local:15008
"
    );
    let (result, _) = run(&["status", "--kubeconfig", &kubeconfig, "--name", "ghost"]).await;
    let err = result.expect_err("ghost is missing");
    assert_eq!(chain(&err), "waypoint default/ghost not found");
    server.seen();
}
