//! End-to-end: two agents (dedicated mode, started with Istio's environment variables) in two
//! network namespaces, real traffic between them, checked from the outside: bytes, packets on
//! the wire, metrics, access logs.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

use mesh_tests::probe::{self, Capture, EchoServer};
use mesh_tests::topology::metric;
use mesh_tests::{Topology, eventually};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

const SOCKS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15080);

/// A payload that is easy to find in a capture if it ever travels in clear.
fn payload(len: usize) -> Vec<u8> {
    b"MESH-PLAINTEXT-CANARY-"
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// Stops `capture` and checks that every packet was to or from `server_ip` port 15008 and that
/// the payload never showed in clear; returns how many packets there were.
fn only_hbone_on_the_wire(capture: Capture, server_ip: &str) -> usize {
    let (packets, raw) = capture.finish().unwrap();
    let hbone = format!("{server_ip}.15008");
    for p in &packets {
        assert!(p.contains(&hbone), "a packet not to or from {hbone}: {p}");
    }
    assert!(
        !probe::contains(&raw, b"MESH-PLAINTEXT-CANARY"),
        "the payload appeared in clear on the wire"
    );
    packets.len()
}

#[test]
fn socks5_request_arrives_byte_exact_over_mtls_only() {
    let t = Topology::new().unwrap();
    let _echo = EchoServer::start(&t.server.ns, t.server.addr(8080)).unwrap();
    // Two workers each (the default on a machine of 4 CPUs or more): the second connection
    // is handed to the other worker and rides that worker's own HBONE connection.
    let workers = [("ZTUNNEL_WORKER_THREADS", "2")];
    let _server_agent = t.start_agent_with(&t.server, &t.ca_dir, &workers).unwrap();
    let _client_agent = t.start_agent_with(&t.client, &t.ca_dir, &workers).unwrap();
    let capture = Capture::start(&t.client.ns, &t.link.a_name, &t.dir).unwrap();

    let small = payload(1000);
    let s = probe::socks5(&t.client.ns, SOCKS, t.server.addr(8080)).unwrap();
    assert_eq!(probe::round_trip(s, &small).unwrap(), small);

    let big = payload(64 << 20);
    let s = probe::socks5(&t.client.ns, SOCKS, t.server.addr(8080)).unwrap();
    let back = probe::round_trip(s, &big).unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "64 MiB did not come back byte-exact");

    let packets = only_hbone_on_the_wire(capture, &t.server.ip.to_string());
    assert!(packets > 100, "captured only {packets} packets");

    let m = _server_agent.metrics(&t.server).unwrap();
    let received = metric(
        &m,
        "istio_tcp_received_bytes_total",
        &[
            r#"reporter="destination""#,
            r#"source_principal="spiffe://cluster.local/ns/default/sa/client""#,
            r#"destination_principal="spiffe://cluster.local/ns/default/sa/server""#,
            r#"connection_security_policy="mutual_tls""#,
        ],
    )
    .unwrap_or_else(|| panic!("no series naming the client's principal:\n{m}"));
    assert_eq!(received as usize, small.len() + big.len());
    let opened = metric(
        &m,
        "istio_tcp_connections_opened_total",
        &[r#"reporter="destination""#],
    );
    assert_eq!(opened, Some(2.0));
}

/// Through SOCKS5 to `dial`, served at `listen` in the server pod: the bytes come back, the
/// wire between the pods carries only HBONE to `wire_ip`, and the destination counts the
/// bytes under the client's principal.
fn carried_over_hbone(
    listen: fn(&Topology) -> SocketAddr,
    dial: fn(&Topology) -> SocketAddr,
    wire_ip: fn(&Topology) -> std::net::IpAddr,
) {
    let t = Topology::new().unwrap();
    let _echo = EchoServer::start(&t.server.ns, listen(&t)).unwrap();
    let server_agent = t.start_agent(&t.server, &t.ca_dir).unwrap();
    let _client_agent = t.start_agent(&t.client, &t.ca_dir).unwrap();
    let capture = Capture::start(&t.client.ns, &t.link.a_name, &t.dir).unwrap();

    let data = payload(100_000);
    let s = probe::socks5(&t.client.ns, SOCKS, dial(&t)).unwrap();
    assert_eq!(probe::round_trip(s, &data).unwrap(), data);

    let packets = only_hbone_on_the_wire(capture, &wire_ip(&t).to_string());
    assert!(packets > 0, "nothing captured between the pods");
    let m = server_agent.metrics(&t.server).unwrap();
    let received = metric(
        &m,
        "istio_tcp_received_bytes_total",
        &[
            r#"reporter="destination""#,
            r#"source_principal="spiffe://cluster.local/ns/default/sa/client""#,
        ],
    )
    .unwrap_or_else(|| panic!("no series naming the client's principal:\n{m}"));
    assert_eq!(received as usize, data.len());
}

#[test]
fn ipv6_is_carried_over_hbone_to_the_pods_ipv6_address_as_istio_listens_dual_stack() {
    carried_over_hbone(
        |t| t.server.addr6(8080),
        |t| t.server.addr6(8080),
        |t| t.server.ip6.into(),
    );
}

#[test]
fn an_ipv4_mapped_ipv6_destination_is_the_ipv4_workload_and_goes_over_hbone() {
    // `::ffff:a.b.c.d`, as a dual-stack client names an IPv4 peer.
    carried_over_hbone(
        |t| t.server.addr(8080),
        |t| SocketAddr::new(t.server.ip.to_ipv6_mapped().into(), 8080),
        |t| t.server.ip.into(),
    );
}

#[test]
fn plaintext_to_the_hbone_port_is_refused() {
    let t = Topology::new().unwrap();
    let _echo = EchoServer::start(&t.server.ns, t.server.addr(8080)).unwrap();
    let agent = t.start_agent(&t.server, &t.ca_dir).unwrap();
    let mut s = t
        .client
        .ns
        .run(|| std::net::TcpStream::connect(t.server.addr(15008)))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!(
        "CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        t.server.addr(8080),
        t.server.addr(8080)
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP"),
        "plaintext got an HTTP answer: {answer:?}"
    );
    // Either nothing or a TLS alert record (content type 21).
    assert!(
        answer.is_empty() || answer[0] == 21,
        "unexpected answer: {answer:?}"
    );
    eventually(
        Duration::from_secs(5),
        "the refusal in the agent's log",
        || agent.log().contains("TLS handshake from").then_some(()),
    );
}

#[test]
fn a_client_certificate_from_a_foreign_ca_is_refused() {
    let t = Topology::new().unwrap();
    let _echo = EchoServer::start(&t.server.ns, t.server.addr(8080)).unwrap();
    let server_agent = t.start_agent(&t.server, &t.ca_dir).unwrap();
    // The client's CA folder: a foreign signing CA, but a trust bundle that also holds the
    // real root, so the client accepts the server and only the server's check can refuse.
    let foreign = t.dir.join("foreign-ca");
    let status = std::process::Command::new(&t.ztunnel)
        .arg("create-ca")
        .arg(&foreign)
        .status()
        .unwrap();
    assert!(status.success());
    let mut bundle = std::fs::read_to_string(foreign.join("root-cert.pem")).unwrap();
    bundle.push_str(&std::fs::read_to_string(t.ca_dir.join("root-cert.pem")).unwrap());
    std::fs::write(foreign.join("root-cert.pem"), bundle).unwrap();
    let _client_agent = t.start_agent(&t.client, &foreign).unwrap();

    let s = probe::socks5(&t.client.ns, SOCKS, t.server.addr(8080)).unwrap();
    let r = probe::round_trip(s, b"hello");
    assert!(
        r.as_ref().map(|b| b.is_empty()).unwrap_or(true),
        "bytes crossed with a foreign certificate: {r:?}"
    );
    eventually(
        Duration::from_secs(5),
        "the refusal in the server's log",
        || {
            let log = server_agent.log();
            (log.contains("TLS handshake from") && log.contains("invalid peer certificate"))
                .then_some(())
        },
    );
    let m = server_agent.metrics(&t.server).unwrap();
    assert_eq!(
        metric(
            &m,
            "istio_tcp_connections_opened_total",
            &[r#"reporter="destination""#]
        ),
        None,
        "a connection was opened with a foreign certificate"
    );
}

#[test]
fn a_deny_policy_on_a_port_resets_the_client_and_logs_401() {
    let t = Topology::new().unwrap();
    t.write_config(
        "policies:\n- name: deny-9090\n  namespace: default\n  scope: Namespace\n  action: Deny\n  rules:\n  - - - destinationPorts: [9090]\n",
    )
    .unwrap();
    let _allowed = EchoServer::start(&t.server.ns, t.server.addr(8080)).unwrap();
    let _denied = EchoServer::start(&t.server.ns, t.server.addr(9090)).unwrap();
    let server_agent = t.start_agent(&t.server, &t.ca_dir).unwrap();
    let _client_agent = t.start_agent(&t.client, &t.ca_dir).unwrap();

    let s = probe::socks5(&t.client.ns, SOCKS, t.server.addr(8080)).unwrap();
    assert_eq!(probe::round_trip(s, b"allowed").unwrap(), b"allowed");
    // Through the service VIP: port 80 is mapped to the endpoint's 8080, which is allowed.
    let vip = SocketAddr::from((mesh_tests::topology::SERVICE_VIP, 80));
    let s = probe::socks5(&t.client.ns, SOCKS, vip).unwrap();
    assert_eq!(probe::round_trip(s, b"via VIP").unwrap(), b"via VIP");

    let mut s = probe::socks5(&t.client.ns, SOCKS, t.server.addr(9090)).unwrap();
    // The reset may arrive before the write: the write then reports it, and a read after
    // that would only see the end of the stream.
    let mut buf = [0u8; 16];
    let err = match s.write_all(b"denied") {
        Err(e) => e,
        Ok(()) => s
            .read(&mut buf)
            .expect_err("a denied connection must be reset, not answered"),
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");

    eventually(
        Duration::from_secs(5),
        "401 in the destination's access log",
        || {
            server_agent
                .log()
                .lines()
                .find(|l| l.contains("access") && l.contains("401") && l.contains(":9090"))
                .map(|_| ())
        },
    );
    let m = server_agent.metrics(&t.server).unwrap();
    assert!(
        metric(
            &m,
            "istio_tcp_connections_closed_total",
            &[r#"response_flags="DENY""#]
        )
        .is_some(),
        "{m}"
    );
}

/// A service port with no endpoint behind it is refused by the client's agent: the
/// connection is reset, never passed through in plaintext to the VIP.
#[test]
fn a_service_port_without_endpoints_is_refused_not_passed_through() {
    let t = Topology::new().unwrap();
    t.write_config("").unwrap();
    let _server_agent = t.start_agent(&t.server, &t.ca_dir).unwrap();
    let client_agent = t.start_agent(&t.client, &t.ca_dir).unwrap();
    // The service maps only port 80.
    let vip = SocketAddr::from((mesh_tests::topology::SERVICE_VIP, 81));
    let mut s = probe::socks5(&t.client.ns, SOCKS, vip).unwrap();
    // The reset may come before the write: then the write reports it, and the read sees EOF.
    let wrote = s.write_all(b"hello");
    let mut buf = [0u8; 16];
    match (wrote, s.read(&mut buf)) {
        (Err(e), _) | (Ok(()), Err(e)) => assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "{e}"
        ),
        (Ok(()), Ok(0)) => panic!("closed, not reset"),
        (Ok(()), Ok(n)) => panic!("answered with {n} bytes"),
    }
    eventually(
        Duration::from_secs(5),
        "the refusal in the client agent's log",
        || {
            client_agent
                .log()
                .lines()
                .find(|l| l.contains("no healthy endpoint") && l.contains(&vip.to_string()))
                .map(|_| ())
        },
    );
}

/// As Istio's ztunnel reports it: the service the client dialled (sent along as
/// `forwarded: host=`), and for a client that dialled the pod, the service on that port.
#[test]
fn the_destinations_metrics_name_the_service() {
    let t = Topology::new().unwrap();
    let _echo = EchoServer::start(&t.server.ns, t.server.addr(8080)).unwrap();
    let server_agent = t.start_agent(&t.server, &t.ca_dir).unwrap();
    let _client_agent = t.start_agent(&t.client, &t.ca_dir).unwrap();
    let vip = SocketAddr::from((mesh_tests::topology::SERVICE_VIP, 80));
    for (dst, data) in [(vip, payload(300)), (t.server.addr(8080), payload(500))] {
        let s = probe::socks5(&t.client.ns, SOCKS, dst).unwrap();
        assert_eq!(probe::round_trip(s, &data).unwrap(), data);
    }
    let service = format!(
        r#"destination_service="{}""#,
        mesh_tests::topology::SERVICE_HOST
    );
    eventually(
        Duration::from_secs(5),
        "800 bytes counted for the service",
        || {
            let m = server_agent.metrics(&t.server).ok()?;
            let labels = [r#"reporter="destination""#, service.as_str()];
            (metric(&m, "istio_tcp_received_bytes_total", &labels) == Some(800.0)).then_some(())
        },
    );
}

/// The `trace_id` of the one access-log line of `direction` (outbound or inbound) for a
/// connection to `dst`, once it is written.
fn logged_trace_id(log: &str, direction: &str, dst: SocketAddr) -> Option<String> {
    let line = log.lines().find(|l| {
        l.contains("connection complete")
            && l.contains(&format!("direction=\"{direction}\""))
            && l.contains(&dst.to_string())
    })?;
    let id = line.split_once("trace_id=")?.1.split_whitespace().next()?;
    Some(id.trim_matches('"').to_owned())
}

#[test]
fn both_agents_log_a_connection_under_the_trace_id_sent_as_traceparent() {
    let t = Topology::new().unwrap();
    let _echo = EchoServer::start(&t.server.ns, t.server.addr(8080)).unwrap();
    let server_agent = t.start_agent(&t.server, &t.ca_dir).unwrap();
    let client_agent = t.start_agent(&t.client, &t.ca_dir).unwrap();
    let dst = t.server.addr(8080);
    let s = probe::socks5(&t.client.ns, SOCKS, dst).unwrap();
    assert_eq!(probe::round_trip(s, b"traced").unwrap(), b"traced");

    let (sent, adopted) = eventually(
        Duration::from_secs(5),
        "the connection in both access logs",
        || {
            let sent = logged_trace_id(&client_agent.log(), "outbound", dst)?;
            let adopted = logged_trace_id(&server_agent.log(), "inbound", dst)?;
            Some((sent, adopted))
        },
    );
    assert_eq!(sent.len(), 32, "not a W3C trace id: {sent}");
    assert!(sent.bytes().all(|c| c.is_ascii_hexdigit()), "{sent}");
    assert_eq!(
        sent, adopted,
        "the destination did not adopt the client's trace"
    );
}

#[test]
fn a_bad_config_file_stops_start_up_with_file_and_line() {
    let t = Topology::new().unwrap();
    let bad = t.dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "workloads:\n- name: a\n  namespace: default\n  workloadIPs: [\"10.0.0.1\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(&t.ztunnel)
        .env("LOCAL_XDS_PATH", &bad)
        .env("PROXY_MODE", "dedicated")
        .env("PROXY_WORKLOAD_INFO", "default/a/a")
        .env("LOCAL_CA_DIR", &t.ca_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(
        err.contains("line 4") && err.contains("workloadIPs"),
        "{err}"
    );
}

#[test]
fn sigterm_drains_open_connections_then_exits() {
    let t = Topology::new().unwrap();
    let _echo = EchoServer::start(&t.server.ns, t.server.addr(8080)).unwrap();
    let _server_agent = t.start_agent(&t.server, &t.ca_dir).unwrap();
    let client_agent = t.start_agent(&t.client, &t.ca_dir).unwrap();
    let mut open = probe::socks5(&t.client.ns, SOCKS, t.server.addr(8080)).unwrap();
    open.write_all(b"one").unwrap();
    let mut b = [0u8; 3];
    open.read_exact(&mut b).unwrap();

    client_agent.process.signal(libc::SIGTERM);
    // Draining: no new connections, but the open one still carries bytes.
    eventually(
        Duration::from_secs(5),
        "the SOCKS5 listener to close",
        || {
            probe::socks5(&t.client.ns, SOCKS, t.server.addr(8080))
                .is_err()
                .then_some(())
        },
    );
    open.write_all(b"two").unwrap();
    open.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"two");
    drop(open);
    let status = client_agent
        .process
        .wait(Duration::from_secs(10))
        .expect("agent did not exit after draining");
    assert!(status.success(), "{status:?}");
}

#[test]
fn bytes_show_in_the_metrics_while_the_connection_is_open() {
    let t = Topology::new().unwrap();
    let _echo = EchoServer::start(&t.server.ns, t.server.addr(8080)).unwrap();
    let server_agent = t.start_agent(&t.server, &t.ca_dir).unwrap();
    let _client_agent = t.start_agent(&t.client, &t.ca_dir).unwrap();
    let mut s = probe::socks5(&t.client.ns, SOCKS, t.server.addr(8080)).unwrap();
    let sent = payload(5000);
    s.write_all(&sent).unwrap();
    let mut back = vec![0; sent.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, sent);

    // The connection is still open, and Istio's byte counters already hold its bytes.
    let series = [
        r#"reporter="destination""#,
        r#"source_principal="spiffe://cluster.local/ns/default/sa/client""#,
    ];
    let m = eventually(
        Duration::from_secs(5),
        "the open connection's bytes",
        || {
            let m = server_agent.metrics(&t.server).ok()?;
            let received = metric(&m, "istio_tcp_received_bytes_total", &series)?;
            let sent = metric(&m, "istio_tcp_sent_bytes_total", &series)?;
            (received == 5000.0 && sent == 5000.0).then_some(m)
        },
    );
    assert_eq!(
        metric(&m, "istio_tcp_connections_closed_total", &series),
        None,
        "{m}"
    );
    drop(s);
}
