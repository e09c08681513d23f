//! End-to-end, shared mode: two nodes with an agent each, pods as namespaces on the nodes,
//! eBPF redirection attached to a child cgroup made for the test, and unmodified `curl` in
//! the pods. What is asserted is what users see: bytes, addresses, packets, metrics.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

use mesh_tests::cluster::Cluster;
use mesh_tests::probe::{Capture, HttpServer};
use mesh_tests::topology::metric;
use mesh_tests::{bin_dir, eventually};
use std::time::Duration;

/// client (enrolled) and other (not enrolled) on node 1, server (enrolled) on node 2.
fn cluster() -> Cluster {
    Cluster::new(
        &bin_dir(),
        &[
            ("client", 0, true),
            ("other", 0, false),
            ("server", 1, true),
        ],
    )
    .unwrap()
}

#[test]
fn curl_between_enrolled_pods_is_captured_and_carried_over_hbone() {
    let c = cluster();
    let (client, server) = (c.pod("client"), c.pod("server"));
    let _web = HttpServer::start(&server.ns, server.addr(8080)).unwrap();
    let a1 = c.start_agent(0).unwrap();
    let a2 = c.start_agent(1).unwrap();
    let capture = Capture::start(&c.nodes[0].ns, &c.node_link, &c.dir).unwrap();

    let url = format!("http://{}/hello", server.addr(8080));
    let (code, body, err) = c
        .curl(client, &["-w", "\n%{remote_ip}:%{remote_port}", &url])
        .unwrap();
    assert_eq!(
        code,
        0,
        "curl failed: {err}\n{}\n{}",
        a1.process.log(),
        a2.process.log()
    );
    let (text, peer) = body.rsplit_once('\n').unwrap();
    assert!(
        text.starts_with(&format!(
            "hello from {}: you asked for /hello",
            server.addr(8080)
        )),
        "{text}"
    );
    // getpeername() in the client gives the address it dialled, not the agent's listener.
    assert_eq!(peer, server.addr(8080).to_string());

    let (packets, raw) = capture.finish().unwrap();
    assert!(!packets.is_empty(), "nothing crossed between the nodes");
    for p in &packets {
        assert!(
            p.contains(".15008"),
            "a packet between the nodes not on port 15008: {p}"
        );
    }
    assert!(
        !mesh_tests::probe::contains(&raw, b"hello from"),
        "the response crossed in clear"
    );

    eventually(
        Duration::from_secs(5),
        "the client's principal in node 2's metrics",
        || {
            let m = a2.metrics(&c.nodes[1]).ok()?;
            metric(
                &m,
                "istio_tcp_connections_opened_total",
                &[
                    r#"reporter="destination""#,
                    &format!(r#"source_principal="{}""#, client.identity()),
                    &format!(r#"destination_principal="{}""#, server.identity()),
                ],
            )
        },
    );
}

#[test]
fn unenrolled_pods_reach_and_are_reached_and_pods_reach_themselves() {
    let c = cluster();
    let (client, other, server) = (c.pod("client"), c.pod("other"), c.pod("server"));
    let _web = HttpServer::start(&server.ns, server.addr(8080)).unwrap();
    let _other_web = HttpServer::start(&other.ns, other.addr(8080)).unwrap();
    let _a1 = c.start_agent(0).unwrap();
    let a2 = c.start_agent(1).unwrap();

    // Not enrolled -> enrolled: arrives in plaintext, steered by sk_lookup to the agent's
    // inbound port in the server pod, which connects to the app.
    let (code, body, err) = c
        .curl(
            other,
            &[&format!("http://{}/from-other", server.addr(8080))],
        )
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("you asked for /from-other"), "{body}");
    eventually(
        Duration::from_secs(5),
        "a plaintext inbound record on node 2",
        || {
            let m = a2.metrics(&c.nodes[1]).ok()?;
            metric(
                &m,
                "istio_tcp_connections_opened_total",
                &[
                    r#"reporter="destination""#,
                    r#"connection_security_policy="unknown""#,
                ],
            )
        },
    );

    // Enrolled -> not enrolled: plain TCP from the client pod, the server sees the pod's IP.
    let (code, body, err) = c
        .curl(
            client,
            &[&format!("http://{}/from-client", other.addr(8080))],
        )
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(body.contains(&format!("from {}:", client.ip)), "{body}");

    // A pod reaches itself through its own IP.
    let (code, body, err) = c
        .curl(server, &[&format!("http://{}/self", server.addr(8080))])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("you asked for /self"), "{body}");
}

#[test]
fn a_pod_whose_namespace_is_missing_is_reported_and_the_others_are_served() {
    let c = cluster();
    let (client, server) = (c.pod("client"), c.pod("server"));
    let _web = HttpServer::start(&server.ns, server.addr(8080)).unwrap();
    let extra = "- uid: Kubernetes//v1/Pod/default/ghost\n  name: ghost\n  namespace: default\n  serviceAccount: ghost\n  workloadIps: [\"10.20.1.99\"]\n  protocol: HBONE\n  node: node-1\n  netns: /run/netns/does-not-exist\n";
    // Appended to the workloads list (the last section written).
    c.write_config(extra).unwrap();
    let a1 = c.start_agent(0).unwrap();
    let _a2 = c.start_agent(1).unwrap();
    eventually(
        Duration::from_secs(5),
        "the error naming the missing namespace",
        || {
            a1.process
                .log()
                .contains("/run/netns/does-not-exist")
                .then_some(())
        },
    );
    let (code, _, err) = c
        .curl(client, &[&format!("http://{}/still", server.addr(8080))])
        .unwrap();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_restarted_agent_serves_again_within_a_second() {
    let c = cluster();
    let (client, server) = (c.pod("client"), c.pod("server"));
    let _web = HttpServer::start(&server.ns, server.addr(8080)).unwrap();
    let a1 = c.start_agent(0).unwrap();
    let _a2 = c.start_agent(1).unwrap();
    let url = format!("http://{}/", server.addr(8080));
    assert_eq!(c.curl(client, &[&url]).unwrap().0, 0);

    a1.process.stop(Duration::from_secs(5));
    drop(a1);
    let started = std::time::Instant::now();
    let _a1 = c.start_agent(0).unwrap();
    assert_eq!(c.curl(client, &[&url]).unwrap().0, 0);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}
