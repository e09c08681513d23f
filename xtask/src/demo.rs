//! The local demo: two nodes and five pods as network namespaces, a node agent per node in
//! shared mode, eBPF redirection of the enrolled pods, unmodified `curl` and plain HTTP servers
//! in the pods, HBONE mTLS between the agents, a waypoint for the `reviews` service (header
//! routing, a weighted split, an L7 deny), and a summary read back from the agents' and the
//! waypoint's metrics and logs and from tcpdump between the nodes.

use mesh_tests::cluster::Cluster;
use mesh_tests::probe::{Capture, HttpServer};
use std::collections::BTreeMap;
use std::time::Duration;

/// The waypoint's rules, as a user would `kubectl apply` them.
const WAYPOINT_RULES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
  rules:
  - matches: [{headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: reviews-v2, port: 80}]
  - backendRefs:
    - {name: reviews-v1, port: 80, weight: 80}
    - {name: reviews-v2, port: 80, weight: 20}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

const REVIEWS_VIP: &str = "10.96.0.50";

/// `reviews` (behind the waypoint) with the server pod as v1 and the `v2` pod, and one
/// service per version.
fn services(c: &Cluster) -> String {
    let ep = |pod: &str| {
        format!("{pod}: {{workloadUid: \"Kubernetes//v1/Pod/default/{pod}\", port: {{80: 8080}}}}")
    };
    let svc = |name: &str, vip: &str, eps: &[&str], waypoint: Option<std::net::Ipv4Addr>| {
        let eps: Vec<String> = eps.iter().map(|p| ep(p)).collect();
        let wp = waypoint.map_or(String::new(), |ip| {
            format!("  waypoint: {{destination: \"/{ip}\", hboneMtlsPort: 15008}}\n")
        });
        format!(
            "- name: {name}\n  namespace: default\n  hostname: {name}.default.svc.cluster.local\n  vips: [\"/{vip}\"]\n  ports: {{80: 8080}}\n  endpoints: {{{}}}\n{wp}",
            eps.join(", ")
        )
    };
    let wp = Some(c.pod("waypoint").ip);
    format!(
        "services:\n{}{}{}",
        svc("reviews", REVIEWS_VIP, &["server", "v2"], wp),
        svc("reviews-v1", "10.96.0.51", &["server"], None),
        svc("reviews-v2", "10.96.0.52", &["v2"], None),
    )
}

/// The waypoint's requests by destination, status and flags, from its `/metrics`.
fn print_requests(metrics: &str) {
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        let l = labels(line);
        let get = |k: &str| l.get(k).cloned().unwrap_or_default();
        println!(
            "    {} -> {} ({}) via {}: status {}, flags {}: {} requests",
            get("source_principal"),
            get("destination_workload"),
            get("destination_principal"),
            get("destination_service"),
            get("response_code"),
            get("response_flags"),
            line.rsplit(' ').next().unwrap_or("?"),
        );
    }
}

const DENY_9090: &str = "policies:\n- name: deny-9090\n  namespace: default\n  scope: Namespace\n  action: Deny\n  rules:\n  - - - destinationPorts: [9090]\n";

/// The labels of one exposition line.
fn labels(line: &str) -> BTreeMap<String, String> {
    let Some(inner) = line.split_once('{').and_then(|(_, r)| r.rsplit_once('}')) else {
        return BTreeMap::new();
    };
    inner
        .0
        .split("\",")
        .filter_map(|kv| kv.split_once("=\""))
        .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
        .collect()
}

fn print_connections(title: &str, metrics: &str) {
    println!("  {title}");
    let value = |name: &str, set: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(set))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // One line per closed-connection series: its labels carry how the connections ended.
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_closed_total{"))
    {
        let Some(set) = line
            .split_once('{')
            .and_then(|(_, r)| r.rsplit_once('}'))
            .map(|(s, _)| format!("{{{s}}}"))
        else {
            continue;
        };
        let l = labels(line);
        let get = |k: &str| l.get(k).cloned().unwrap_or_default();
        println!(
            "    {} ({}) -> {} ({}) via service {}, {}, flags {}: {} closed, {} request bytes, {} response bytes",
            get("source_workload"),
            get("source_principal"),
            get("destination_workload"),
            get("destination_principal"),
            get("destination_service"),
            get("connection_security_policy"),
            get("response_flags"),
            line.rsplit(' ').next().unwrap_or("?"),
            value("istio_tcp_received_bytes_total", &set),
            value("istio_tcp_sent_bytes_total", &set),
        );
    }
}

pub fn run() -> anyhow::Result<()> {
    let bins = crate::build(true)?;
    println!(
        "\n== demo: two nodes, five pods, eBPF redirection, HBONE mTLS between the node agents, a waypoint =="
    );
    let c = Cluster::new(
        &bins,
        &[
            ("client", 0, true),
            ("legacy", 0, false),
            ("server", 1, true),
            ("waypoint", 0, false),
            ("v2", 1, true),
        ],
    )?;
    c.write_config_with(&["waypoint"], &format!("{DENY_9090}{}", services(&c)))?;
    let rules = c.dir.join("waypoint-rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(rules.join("reviews.yaml"), WAYPOINT_RULES)?;
    let (client, legacy, server) = (c.pod("client"), c.pod("legacy"), c.pod("server"));
    let _web = HttpServer::start(&server.ns, server.addr(8080))?;
    let _web6 = HttpServer::start(&server.ns, server.addr6(8080))?;
    let _denied = HttpServer::start(&server.ns, server.addr(9090))?;
    let _legacy_web = HttpServer::start(&legacy.ns, legacy.addr(8080))?;
    let v2 = c.pod("v2");
    let _v2_web = HttpServer::start(&v2.ns, v2.addr(8080))?;
    let agents = [c.start_agent(0)?, c.start_agent(1)?];
    let waypoint = c.start_waypoint(c.pod("waypoint"), &rules)?;
    for p in &c.pods {
        println!(
            "  {:<8} {:<12} {:<16} on {}  {}",
            p.name,
            p.ip,
            p.ip6,
            c.nodes[p.node].name,
            if p.enrolled {
                "enrolled (istio.io/dataplane-mode=ambient)"
            } else if p.name == "waypoint" {
                "the waypoint of service reviews (speaks HBONE itself)"
            } else {
                "not enrolled"
            }
        );
    }
    println!(
        "  eBPF programs attached to cgroup {}",
        c.cgroup.path.display()
    );
    let capture = Capture::start(&c.nodes[0].ns, &c.node_link, &c.dir)?;

    let requests = [
        (
            client,
            server.addr(8080),
            "enrolled -> enrolled: captured, HBONE across the nodes; the app sees the client pod's address",
        ),
        (
            client,
            server.addr6(8080),
            "enrolled -> enrolled over IPv6: captured by connect6, HBONE across the nodes",
        ),
        (
            client,
            server.addr(9090),
            "enrolled -> enrolled, port denied by policy",
        ),
        (
            legacy,
            server.addr(8080),
            "not enrolled -> enrolled: plaintext, captured on arrival",
        ),
        (
            client,
            legacy.addr(8080),
            "enrolled -> not enrolled: plain TCP from the pod",
        ),
        (
            server,
            server.addr(8080),
            "a pod to itself through its own IP",
        ),
    ];
    println!("\nrequests (unmodified curl inside the pods; -w shows getpeername()):");
    for (from, to, what) in requests {
        let url = format!("http://{to}/from-{}", from.name);
        let (code, out, err) = c.curl(
            from,
            &[
                "-g",
                "-w",
                "  [peer %{remote_ip} port %{remote_port}]",
                &url,
            ],
        )?;
        println!(
            "  {what}\n    {} $ curl {url}\n    exit {code}: {}{}",
            from.name,
            out.trim().replace('\n', ""),
            err.trim()
        );
    }
    println!(
        "\nthrough the waypoint (service reviews at {REVIEWS_VIP}:80; HTTPRoute: x-version: v2 -> v2, else 80/20 v1/v2; DENY /admin*):"
    );
    let url = format!("http://{REVIEWS_VIP}/reviews");
    for (args, shown, what) in [
        (
            vec!["-H", "x-version: v2"],
            "-H 'x-version: v2' ",
            "header x-version: v2",
        ),
        (vec![], "", "no header: the 80/20 split"),
        (vec![], "", "no header: the 80/20 split"),
        (vec![], "", "no header: the 80/20 split"),
        (vec![], "", "no header: the 80/20 split"),
    ] {
        let mut all = args.clone();
        all.extend(["-w", " [HTTP %{http_code}]", &url]);
        let (_, out, err) = c.curl(client, &all)?;
        println!(
            "  {what}\n    client $ curl {shown}{url}\n    {}{}",
            out.trim().replace('\n', ""),
            err.trim()
        );
    }
    let url = format!("http://{REVIEWS_VIP}/admin/users");
    let (_, out, err) = c.curl(client, &["-w", " [HTTP %{http_code}]", &url])?;
    println!(
        "  a path the L7 policy denies\n    client $ curl {url}\n    {}{}",
        out.trim(),
        err.trim()
    );
    std::thread::sleep(Duration::from_millis(300));
    let (packets, raw) = capture.finish()?;

    println!("\nwhat the agents report (from /metrics):");
    for (i, a) in agents.iter().enumerate() {
        print_connections(
            &format!("{} agent:", c.nodes[i].name),
            &a.metrics(&c.nodes[i])?,
        );
    }
    println!("  waypoint (reporter=\"waypoint\"):");
    print_requests(&Cluster::metrics_in(&c.pod("waypoint").ns)?);
    let on_15008 = packets.iter().filter(|p| p.contains(".15008")).count();
    let seen = |text: &[u8]| {
        if mesh_tests::probe::contains(&raw, text) {
            "yes"
        } else {
            "no"
        }
    };
    println!(
        "\nbetween the nodes (tcpdump): {} TCP packets, {} of them HBONE on port 15008",
        packets.len(),
        on_15008
    );
    println!(
        "  enrolled client's request or response in clear: {} (must be no)",
        seen(b"asked for /from-client")
    );
    println!(
        "  unenrolled pod's request in clear: {} (plaintext by design: it is not in the mesh)",
        seen(b"asked for /from-legacy")
    );
    for (i, a) in agents.iter().enumerate() {
        println!("\n{} agent log (enrollment and access):", c.nodes[i].name);
        for line in a
            .process
            .log()
            .lines()
            .filter(|l| l.contains("access") || l.contains("enrolled") || l.contains("eBPF"))
        {
            println!("  {line}");
        }
    }
    println!("\nwaypoint access log:");
    for line in waypoint.log().lines().filter(|l| l.contains("access")) {
        println!("  {line}");
    }
    println!("\ndemo done; cleaning up namespaces, cgroup, programs, processes and files");
    Ok(())
}
