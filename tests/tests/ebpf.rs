//! End-to-end, shared mode: two nodes with an agent each, pods as namespaces on the nodes,
//! eBPF redirection attached to a child cgroup made for the test, and unmodified `curl` in
//! the pods. What is asserted is what users see: bytes, addresses, packets, metrics.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

use mesh_tests::cluster::{
    AttachedProgram, Cluster, ClusterPod, NodeAgent, bpftool, cgroup_programs, map_entries,
    sk_lookup_links,
};
use mesh_tests::probe::{Capture, HttpServer};
use mesh_tests::topology::metric;
use mesh_tests::{bin_dir, eventually};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

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

/// An HTTP server on the server pod's 8080, both node agents, and the server's URL.
fn serving(c: &Cluster) -> (HttpServer, NodeAgent, NodeAgent, String) {
    let server = c.pod("server");
    let web = HttpServer::start(&server.ns, server.addr(8080)).unwrap();
    let a1 = c.start_agent(0).unwrap();
    let a2 = c.start_agent(1).unwrap();
    (web, a1, a2, format!("http://{}/", server.addr(8080)))
}

/// Serves `addr` in the server pod, starts both agents, and curls `path` there from the client
/// pod with tcpdump between the nodes; checks what crossed ([`carried_over_hbone`]). Returns
/// the app's answer, the peer `getpeername()` gave curl, and the packets seen.
fn curl_across_the_nodes(
    c: &Cluster,
    addr: SocketAddr,
    path: &str,
) -> (String, SocketAddr, Vec<String>) {
    let (client, server) = (c.pod("client"), c.pod("server"));
    let _web = HttpServer::start(&server.ns, addr).unwrap();
    let a1 = c.start_agent(0).unwrap();
    let a2 = c.start_agent(1).unwrap();
    let capture = Capture::start(&c.nodes[0].ns, &c.node_link, &c.dir).unwrap();
    let url = format!("http://{addr}{path}");
    let (code, body, err) = c
        .curl(client, &["-g", "-w", "\n%{remote_ip} %{remote_port}", &url])
        .unwrap();
    assert_eq!(
        code,
        0,
        "curl failed: {err}\n{}\n{}",
        a1.process.log(),
        a2.process.log()
    );
    let (text, peer) = body.rsplit_once('\n').unwrap();
    let (ip, port) = peer.split_once(' ').unwrap();
    let peer = SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap());
    let packets = carried_over_hbone(c, capture, &a2, client, server);
    (text.to_owned(), peer, packets)
}

#[test]
fn curl_between_enrolled_pods_is_captured_and_carried_over_hbone() {
    let c = cluster();
    let (client, server) = (c.pod("client"), c.pod("server"));
    let (text, peer, packets) = curl_across_the_nodes(&c, server.addr(8080), "/hello");
    assert!(
        text.starts_with(&format!(
            "hello from {}: you asked for /hello",
            server.addr(8080)
        )),
        "{text}"
    );
    // getpeername() in the client gives the address it dialled, not the agent's listener.
    assert_eq!(peer, server.addr(8080));
    // The app sees the client pod's address, not its own, as with Istio.
    assert!(text.contains(&format!(", from {}:", client.ip)), "{text}");
    assert!(!packets.is_empty(), "nothing crossed between the nodes");
}

#[test]
fn ipv6_between_enrolled_pods_is_captured_and_carried_over_hbone() {
    let c = cluster();
    let (client, server) = (c.pod("client"), c.pod("server"));
    let (text, peer, packets) = curl_across_the_nodes(&c, server.addr6(8080), "/v6");
    // The app sees the client pod's IPv6 address; the client, the address it dialled.
    assert!(
        text.starts_with(&format!(
            "hello from {}: you asked for /v6, from [{}]:",
            server.addr6(8080),
            client.ip6
        )),
        "{text}"
    );
    assert_eq!(peer, server.addr6(8080));
    assert!(
        packets.iter().any(|p| p.contains("IP6")),
        "no IPv6 crossed between the nodes: {packets:?}"
    );
}

/// Checks what `capture` (between the nodes) saw: every packet on 15008, the response never in
/// clear; and that node 2's agent names the client's and the server's principals. Returns the
/// packets.
fn carried_over_hbone(
    c: &Cluster,
    capture: Capture,
    a2: &NodeAgent,
    client: &ClusterPod,
    server: &ClusterPod,
) -> Vec<String> {
    let (packets, raw) = capture.finish().unwrap();
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
    packets
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
    assert!(body.contains(&format!(", from {}:", other.ip)), "{body}");
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
    assert!(body.contains(&format!(", from {}:", server.ip)), "{body}");
}

/// What the agent set up in a pod's namespace to keep clients' addresses: the IPv4 and IPv6
/// rules, the local route of table 133 and `tcp_fwmark_accept`, as `ip` and `/proc` show them.
fn orig_src_setup(ns: &mesh_tests::NetNs) -> (String, String, String, String) {
    let run = |args: &[&str]| {
        let out = ns.command(args[0]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    (
        run(&["ip", "-4", "rule"]),
        run(&["ip", "-6", "rule"]),
        run(&["ip", "-4", "route", "show", "table", "133"]),
        run(&["cat", "/proc/sys/net/ipv4/tcp_fwmark_accept"]),
    )
}

#[test]
fn a_pods_namespace_is_set_up_to_keep_clients_addresses_and_unenrolling_undoes_it_after_its_connections()
 {
    let c = cluster();
    let (other, server) = (c.pod("other"), c.pod("server"));
    let (_web, _a1, a2, url) = serving(&c);
    let (rule4, rule6, route, accept) = orig_src_setup(&server.ns);
    assert!(rule4.contains("fwmark 0x111 lookup 133"), "{rule4}");
    assert!(rule6.contains("fwmark 0x111 lookup 133"), "{rule6}");
    assert!(route.contains("local default dev lo"), "{route}");
    assert_eq!(accept, "1");

    // A restarted agent finds its set-up in place and adds nothing twice.
    a2.process.stop(Duration::from_secs(5));
    drop(a2);
    let a2 = c.start_agent(1).unwrap();
    let (rule4, rule6, _, _) = orig_src_setup(&server.ns);
    assert_eq!(rule4.matches("lookup 133").count(), 1, "{rule4}");
    assert_eq!(rule6.matches("lookup 133").count(), 1, "{rule6}");

    // A connection from the unenrolled pod, steered to the agent, open across the unenrolment.
    let mut open = other
        .ns
        .run(|| std::net::TcpStream::connect(server.addr(8080)))
        .unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    unenroll(&c, server);
    eventually(Duration::from_secs(5), "the server pod unenrolled", || {
        a2.process.log().contains("pod unenrolled").then_some(())
    });
    // The open connection still needs the rule: the app's reply comes back through it.
    assert!(orig_src_setup(&server.ns).0.contains("lookup 133"));
    use std::io::{Read, Write};
    open.write_all(b"GET /still-open HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    open.read_to_string(&mut reply).unwrap();
    assert!(
        reply.contains(&format!("/still-open, from {}:", other.ip)),
        "{reply}"
    );
    drop(open);
    let (rule4, rule6, route, accept) = eventually(
        Duration::from_secs(5),
        "the server pod's namespace restored",
        || {
            let now = orig_src_setup(&server.ns);
            (!now.0.contains("lookup 133")).then_some(now)
        },
    );
    assert!(
        !rule6.contains("lookup 133"),
        "{rule6}\n{}",
        a2.process.log()
    );
    assert!(!rule4.contains("lookup 133") && route.is_empty(), "{route}");
    assert_eq!(accept, "0");

    // Not captured any more: the unenrolled client reaches the app directly.
    let (code, body, err) = c.curl(other, &[&url]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(body.contains(&format!(", from {}:", other.ip)), "{body}");
}

/// Unenrolls `pod` by writing its entry without `netns` (`Cluster::write_config` enrolls it
/// again).
fn unenroll(c: &Cluster, pod: &ClusterPod) {
    let path = c.config_path();
    let config = std::fs::read_to_string(&path).unwrap();
    let line = format!("  netns: {}\n", pod.ns.path().display());
    assert!(config.contains(&line));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, config.replace(&line, "")).unwrap();
    std::fs::rename(tmp, &path).unwrap();
}

#[test]
fn a_pod_enrolled_again_before_its_connections_end_keeps_its_set_up() {
    let c = cluster();
    let (other, server) = (c.pod("other"), c.pod("server"));
    let (_web, _a1, a2, url) = serving(&c);
    let open = other
        .ns
        .run(|| std::net::TcpStream::connect(server.addr(8080)))
        .unwrap();
    unenroll(&c, server);
    eventually(Duration::from_secs(5), "the server pod unenrolled", || {
        a2.process.log().contains("pod unenrolled").then_some(())
    });
    c.write_config("").unwrap();
    eventually(
        Duration::from_secs(5),
        "the server pod enrolled again",
        || (a2.process.log().matches("pod enrolled").count() >= 2).then_some(()),
    );
    // The first enrollment's last connection ends: its removal, called off, must not undo
    // the second enrollment's set-up (it would have run well within this wait).
    drop(open);
    std::thread::sleep(Duration::from_secs(1));
    let (rule4, _, route, accept) = orig_src_setup(&server.ns);
    assert!(
        rule4.contains("lookup 133") && route.contains("local default dev lo"),
        "{rule4}\n{route}\n{}",
        a2.process.log()
    );
    assert_eq!(accept, "1");
    let (code, body, err) = c.curl(other, &[&url]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(body.contains(&format!(", from {}:", other.ip)), "{body}");
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
    let client = c.pod("client");
    let (_web, a1, _a2, url) = serving(&c);
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

/// The six cgroup programs, one of each kind, as `bpftool cgroup show` names their attach
/// types.
const CGROUP_PROGRAMS: [(&str, &str); 6] = [
    ("cgroup_inet4_connect", "mesh_connect4"),
    ("cgroup_inet6_connect", "mesh_connect6"),
    ("cgroup_inet4_getpeername", "mesh_getpeername4"),
    ("cgroup_inet6_getpeername", "mesh_getpeername6"),
    ("cgroup_getsockopt", "mesh_getsockopt"),
    ("cgroup_sock_ops", "mesh_sockops"),
];

/// Asserts that `programs` holds each cgroup program `copies` times (once per agent).
fn assert_each_kind(programs: &[AttachedProgram], copies: usize) {
    for (attach_type, name) in CGROUP_PROGRAMS {
        let n = programs
            .iter()
            .filter(|p| p.attach_type == attach_type && p.name.starts_with(name))
            .count();
        assert_eq!(n, copies, "{name} ({attach_type}) in {programs:#?}");
    }
    assert_eq!(
        programs.len(),
        copies * CGROUP_PROGRAMS.len(),
        "{programs:#?}"
    );
}

#[test]
fn a_killed_agent_leaves_the_redirection_pinned_and_its_successor_takes_it_over() {
    // One agent: the server is not enrolled, so client -> server goes through node 1's agent
    // only, and the test cgroup holds exactly one copy of each program.
    let c = Cluster::new(&bin_dir(), &[("client", 0, true), ("server", 1, false)]).unwrap();
    let (client, server) = (c.pod("client"), c.pod("server"));
    let _web = HttpServer::start(&server.ns, server.addr(8080)).unwrap();
    let _client_web = HttpServer::start(&client.ns, client.addr(8080)).unwrap();
    let a1 = c.start_agent(0).unwrap();
    let url = format!("http://{}/", server.addr(8080));
    let inbound_url = format!("http://{}/", client.addr(8080));
    let (code, _, err) = c.curl(client, &[&url]).unwrap();
    assert_eq!(code, 0, "{err}\n{}", a1.process.log());
    let (code, _, err) = c.curl(server, &[&inbound_url]).unwrap();
    assert_eq!(
        code,
        0,
        "inbound through the agent: {err}\n{}",
        a1.process.log()
    );
    let before = cgroup_programs(&c.cgroup.path).unwrap();
    assert_each_kind(&before, 1);
    assert_eq!(sk_lookup_links(&client.ns).unwrap(), 1);

    // kill -9: no chance to clean up.
    a1.process.signal(libc::SIGKILL);
    assert!(a1.process.wait(Duration::from_secs(5)).is_some());
    drop(a1);
    let pins = c.pin_dir(0);
    for (_, name) in CGROUP_PROGRAMS {
        assert!(
            pins.join("links").join(name).exists(),
            "link {name} not pinned"
        );
    }
    for map in [
        "ENROLLED",
        "ORIG_DST_BY_COOKIE",
        "ORIG_DST_BY_TUPLE",
        "CONFIG",
    ] {
        assert!(pins.join("maps").join(map).exists(), "map {map} not pinned");
    }
    assert_eq!(
        std::fs::read_link(pins.join("cgroup")).unwrap(),
        c.cgroup.path,
        "the cgroup record"
    );
    // The same programs stay attached, and still capture: with no agent to answer, the
    // client's connection is refused instead of going around the mesh.
    assert_eq!(cgroup_programs(&c.cgroup.path).unwrap(), before);
    let (code, _, err) = c.curl(client, &[&url]).unwrap();
    assert_eq!(
        code, 7,
        "curl should fail to connect while the agent is down: {err}"
    );
    // Inbound fails closed too: the pod's sk_lookup copy stays (pinned), and with the agent's
    // listener gone it refuses connections rather than let them reach the pod uncaptured.
    assert_eq!(sk_lookup_links(&client.ns).unwrap(), 1);
    let (code, _, err) = c.curl(server, &[&inbound_url]).unwrap();
    assert_eq!(
        code, 7,
        "inbound to an enrolled pod should be refused while the agent is down: {err}"
    );
    // A namespace enrolled by the dead agent whose pod went away meanwhile.
    let enrolled = pins.join("maps").join("ENROLLED");
    let stale: u64 = 0x0dea_dbee_f000_0001;
    let key: Vec<String> = stale
        .to_ne_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut args = vec![
        "map",
        "update",
        "pinned",
        enrolled.to_str().unwrap(),
        "key",
        "hex",
    ];
    args.extend(key.iter().map(String::as_str));
    args.extend(["value", "hex", "00", "00", "00", "00"]);
    bpftool(&args).unwrap();
    assert_eq!(map_entries(&enrolled).unwrap().0, 2);

    let started = Instant::now();
    let a1 = c.start_agent(0).unwrap();
    let (code, _, err) = c.curl(client, &[&url]).unwrap();
    let took = started.elapsed();
    assert_eq!(code, 0, "{err}\n{}", a1.process.log());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let (code, _, err) = c.curl(server, &[&inbound_url]).unwrap();
    assert_eq!(
        code,
        0,
        "inbound after the restart: {err}\n{}",
        a1.process.log()
    );

    // The new agent took the pinned links over: still one program of each kind, now its own.
    let after = cgroup_programs(&c.cgroup.path).unwrap();
    assert_each_kind(&after, 1);
    let old_ids: Vec<u32> = before.iter().map(|p| p.id).collect();
    assert!(
        after.iter().all(|p| !old_ids.contains(&p.id)),
        "the old programs still run: before {before:#?}, after {after:#?}"
    );
    // The old sk_lookup copy was replaced, not joined.
    assert_eq!(sk_lookup_links(&client.ns).unwrap(), 1);
    // The stale namespace is gone from ENROLLED; the client's stays.
    eventually(Duration::from_secs(2), "the stale cookie removed", || {
        a1.process
            .log()
            .contains(&format!("cookie={stale}"))
            .then_some(())
    });
    let (n, dump) = map_entries(&enrolled).unwrap();
    assert_eq!(n, 1, "{dump}");
}

#[test]
fn uninstall_removes_everything_the_agents_attached_and_pinned() {
    let c = cluster();
    let client = c.pod("client");
    let (_web, a1, a2, url) = serving(&c);
    assert_eq!(c.curl(client, &[&url]).unwrap().0, 0);
    // Both agents attach to the test cgroup.
    let programs = cgroup_programs(&c.cgroup.path).unwrap();
    assert_each_kind(&programs, 2);

    // Not under a running agent.
    let (ok, _, err) = c.uninstall(0).unwrap();
    assert!(!ok && err.contains("running agent"), "{err}");
    assert_eq!(cgroup_programs(&c.cgroup.path).unwrap(), programs);

    // A clean stop leaves the redirection in place too.
    a1.process.stop(Duration::from_secs(5));
    a2.process.stop(Duration::from_secs(5));
    drop((a1, a2));
    assert_eq!(cgroup_programs(&c.cgroup.path).unwrap(), programs);

    for i in 0..2 {
        let (ok, out, err) = c.uninstall(i).unwrap();
        assert!(ok, "uninstall {i}: {err}");
        for (_, name) in CGROUP_PROGRAMS {
            assert!(out.contains(&format!("detached {name} ")), "{name}:\n{out}");
        }
        assert!(out.contains("removed map ENROLLED"), "{out}");
        assert!(
            out.contains("detached mesh_sk_lookup from the network namespace"),
            "{out}"
        );
        assert!(out.contains("removed the pin folder"), "{out}");
        assert!(!c.pin_dir(i).exists());
    }
    assert_eq!(cgroup_programs(&c.cgroup.path).unwrap(), vec![]);
    for pod in ["client", "server"] {
        assert_eq!(sk_lookup_links(&c.pod(pod).ns).unwrap(), 0, "{pod}");
    }
    // The programs themselves are gone from the kernel.
    for p in &programs {
        eventually(
            Duration::from_secs(2),
            &format!("program {} unloaded", p.id),
            || {
                bpftool(&["prog", "show", "id", &p.id.to_string()])
                    .is_err()
                    .then_some(())
            },
        );
    }
    // Nothing captures any more: the client reaches the server directly.
    let (code, body, err) = c.curl(client, &[&url]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(body.contains(&format!("from {}:", client.ip)), "{body}");

    // Again: nothing left, and that is fine.
    for i in 0..2 {
        let (ok, out, err) = c.uninstall(i).unwrap();
        assert!(ok, "{err}");
        assert!(out.contains("nothing to remove"), "{out}");
    }
}

#[test]
fn a_pod_namespace_deleted_while_enrolled_is_reported_and_the_others_are_served() {
    let c = Cluster::new(
        &bin_dir(),
        &[
            ("client", 0, true),
            ("doomed", 0, true),
            ("server", 1, true),
        ],
    )
    .unwrap();
    let (client, doomed) = (c.pod("client"), c.pod("doomed"));
    let (_web, a1, _a2, url) = serving(&c);
    assert_eq!(c.curl(client, &[&url]).unwrap().0, 0);
    let enrolled = c.pin_dir(0).join("maps").join("ENROLLED");
    assert_eq!(map_entries(&enrolled).unwrap().0, 2);

    let path = doomed.ns.path().display().to_string();
    let out = std::process::Command::new("ip")
        .args(["netns", "del", doomed.ns.name()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(5),
        "an error naming the deleted namespace",
        || {
            a1.process
                .log()
                .lines()
                .any(|l| l.contains("ERROR") && l.contains(&path))
                .then_some(())
        },
    );
    let (code, _, err) = c.curl(client, &[&url]).unwrap();
    assert_eq!(code, 0, "{err}\n{}", a1.process.log());
    eventually(Duration::from_secs(2), "the namespace unenrolled", || {
        (map_entries(&enrolled).ok()?.0 == 1).then_some(())
    });
    assert!(a1.process.exited().is_none(), "{}", a1.process.log());
}

/// Runs node 1's agent with `EBPF_OBJECT=object`, expecting it to exit within 20 s: its exit
/// status and stderr.
fn run_agent_with_object(c: &Cluster, object: &Path) -> (std::process::ExitStatus, String) {
    let mut cmd = c.agent_command(0);
    cmd.env("EBPF_OBJECT", object)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status =
        mesh_tests::eventually_opt(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = reader.join().unwrap();
    let status = status.unwrap_or_else(|| panic!("the agent kept running:\n{stderr}"));
    (status, stderr)
}

#[test]
fn a_corrupt_ebpf_object_stops_the_agent_and_is_named() {
    let c = Cluster::new(&bin_dir(), &[("client", 0, true)]).unwrap();
    let corrupt = c.dir.join("corrupt-mesh-redirect.o");
    std::fs::write(&corrupt, b"\x7fELF, or so it says\n").unwrap();
    let (status, stderr) = run_agent_with_object(&c, &corrupt);
    assert!(!status.success(), "{status:?}\n{stderr}");
    assert!(
        stderr.contains(&corrupt.display().to_string()),
        "stderr does not name the file:\n{stderr}"
    );
    // Nothing was attached or pinned.
    assert_eq!(cgroup_programs(&c.cgroup.path).unwrap(), vec![]);
    assert!(!c.pin_dir(0).exists());
}

#[test]
fn a_program_the_verifier_refuses_stops_the_agent_with_the_verifier_log() {
    let c = Cluster::new(&bin_dir(), &[("client", 0, true)]).unwrap();
    // The object build.rs made (`<target>/ebpf/...`), with `mesh_sockops`'s first
    // instruction, `rX = r1` (saving the context), turned into `rX = r2`: R2 is not
    // initialised at entry, which the verifier refuses.
    let built = bin_dir()
        .parent()
        .unwrap()
        .join("ebpf/bpfel-unknown-none/release/mesh-redirect");
    let mut object = std::fs::read(&built)
        .unwrap_or_else(|e| panic!("the built eBPF object {}: {e}", built.display()));
    let (offset, _) = elf_section(&object, "sockops").expect("no sockops section");
    let insn = &mut object[offset..offset + 8];
    assert_eq!(
        (insn[0], insn[1] >> 4),
        (0xbf, 1),
        "mesh_sockops no longer starts with `rX = r1`; update this test: {insn:02x?}"
    );
    insn[1] = (insn[1] & 0x0f) | 0x20;
    let broken = c.dir.join("refused-by-the-verifier.o");
    std::fs::write(&broken, &object).unwrap();

    let (status, stderr) = run_agent_with_object(&c, &broken);
    assert!(!status.success(), "{status:?}\n{stderr}");
    // The program, the reason, and the verifier's log.
    assert!(stderr.contains("program mesh_sockops"), "{stderr}");
    assert!(stderr.contains("verifier log"), "{stderr}");
    assert!(stderr.contains("R2 !read_ok"), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert_eq!(cgroup_programs(&c.cgroup.path).unwrap(), vec![]);
}

/// The file offset and size of the section `name` of the ELF64 little-endian file `elf`.
fn elf_section(elf: &[u8], name: &str) -> Option<(usize, usize)> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 24);
    (0..shnum).find_map(|i| {
        let h = header(i);
        let start = strtab + u32_at(h);
        let end = start + elf[start..].iter().position(|&b| b == 0)?;
        (&elf[start..end] == name.as_bytes()).then(|| (u64_at(h + 24), u64_at(h + 32)))
    })
}

#[test]
fn ebpf_diagnostics_are_off_by_default_and_switch_on_at_run_time() {
    let c = cluster();
    let client = c.pod("client");
    let (_web, a1, _a2, url) = serving(&c);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], 15000));

    assert_eq!(c.curl(client, &[&url]).unwrap().0, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !a1.process.log().contains("mesh_redirect"),
        "eBPF records while off:\n{}",
        a1.process.log()
    );

    let (status, body) =
        mesh_tests::probe::http_get(&c.nodes[0].ns, admin, "/ebpf/log_level?level=4").unwrap();
    assert_eq!((status, body.trim()), (200, "ebpf log level 4"));
    assert_eq!(c.curl(client, &[&url]).unwrap().0, 0);
    eventually(
        Duration::from_secs(5),
        "the programs' records in the agent's log",
        || a1.process.log().contains("mesh_redirect").then_some(()),
    );

    let (status, _) =
        mesh_tests::probe::http_get(&c.nodes[0].ns, admin, "/ebpf/log_level?level=9").unwrap();
    assert_eq!(status, 400);
}
