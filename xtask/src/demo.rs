//! The local demo: two nodes and three pods as network namespaces, a node agent per node in
//! shared mode, eBPF redirection of the enrolled pods, unmodified `curl` and plain HTTP servers
//! in the pods, HBONE mTLS between the agents, and a summary read back from the agents'
//! metrics and logs and from tcpdump between the nodes.

use mesh_tests::cluster::Cluster;
use mesh_tests::probe::{Capture, HttpServer};
use std::collections::BTreeMap;
use std::time::Duration;

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
        "\n== demo: two nodes, three pods, eBPF redirection, HBONE mTLS between the node agents =="
    );
    let c = Cluster::new(
        &bins,
        &[
            ("client", 0, true),
            ("legacy", 0, false),
            ("server", 1, true),
        ],
    )?;
    c.write_config(DENY_9090)?;
    let (client, legacy, server) = (c.pod("client"), c.pod("legacy"), c.pod("server"));
    let _web = HttpServer::start(&server.ns, server.addr(8080))?;
    let _denied = HttpServer::start(&server.ns, server.addr(9090))?;
    let _legacy_web = HttpServer::start(&legacy.ns, legacy.addr(8080))?;
    let agents = [c.start_agent(0)?, c.start_agent(1)?];
    for p in &c.pods {
        println!(
            "  {:<8} {:<12} on {}  {}",
            p.name,
            p.ip,
            c.nodes[p.node].name,
            if p.enrolled {
                "enrolled (istio.io/dataplane-mode=ambient)"
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
            "enrolled -> enrolled: captured, HBONE across the nodes",
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
        let (code, out, err) =
            c.curl(from, &["-w", "  [peer %{remote_ip}:%{remote_port}]", &url])?;
        println!(
            "  {what}\n    {} $ curl {url}\n    exit {code}: {}{}",
            from.name,
            out.trim(),
            err.trim()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let (packets, raw) = capture.finish()?;

    println!("\nwhat the agents report (from /metrics):");
    for (i, a) in agents.iter().enumerate() {
        print_connections(
            &format!("{} agent:", c.nodes[i].name),
            &a.metrics(&c.nodes[i])?,
        );
    }
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
    println!("\ndemo done; cleaning up namespaces, cgroup, programs, processes and files");
    Ok(())
}
