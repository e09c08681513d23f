//! The local demo: two pods as network namespaces, each with its node agent (dedicated
//! mode), an unmodified `curl` in one and a plain HTTP server in the other, HBONE mTLS
//! between them, and a summary read back from the agents' metrics, admin page and logs.

use mesh_tests::probe::{Capture, HttpServer};
use mesh_tests::topology::SERVICE_HOST;
use mesh_tests::{NetNs, Topology};
use std::collections::BTreeMap;
use std::time::Duration;

const DENY_9090: &str = "policies:\n- name: deny-9090\n  namespace: default\n  scope: Namespace\n  action: Deny\n  rules:\n  - - - destinationPorts: [9090]\n";

/// Runs curl in `ns` through the agent's SOCKS5 listener: (exit code, output).
fn curl(ns: &NetNs, socks_flag: &str, url: &str) -> anyhow::Result<(i32, String)> {
    let out = ns
        .command("curl")
        .args(["-sS", "--max-time", "5", socks_flag, "127.0.0.1:15080", url])
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text.trim().to_owned()))
}

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
            "    {} -> {} via service {} ({}, flags {}): {} closed, {} request bytes, {} response bytes",
            get("source_principal"),
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
        "\n== demo: two pods in two network namespaces, a node agent each, HBONE mTLS between =="
    );
    let t = Topology::with_binaries(&bins)?;
    t.write_config(DENY_9090)?;
    let _web = HttpServer::start(&t.server.ns, t.server.addr(8080))?;
    let _denied = HttpServer::start(&t.server.ns, t.server.addr(9090))?;
    let server_agent = t.start_agent(&t.server, &t.ca_dir)?;
    let client_agent = t.start_agent(&t.client, &t.ca_dir)?;
    println!(
        "pods: client {} (netns {}), server {} (netns {}); service {SERVICE_HOST} -> server:8080",
        t.client.ip,
        t.client.ns.name(),
        t.server.ip,
        t.server.ns.name()
    );
    let capture = Capture::start(&t.client.ns, &t.link.a_name, &t.dir)?;

    let requests = [
        ("--socks5", format!("http://{}/pod-ip", t.server.addr(8080))),
        (
            "--socks5-hostname",
            format!("http://{SERVICE_HOST}/service"),
        ),
        ("--socks5", format!("http://{}/denied", t.server.addr(9090))),
    ];
    println!("\nrequests (unmodified curl in the client pod, through the agent's SOCKS5 port):");
    for (flag, url) in &requests {
        let (code, out) = curl(&t.client.ns, flag, url)?;
        println!("  curl {flag} {url}\n    exit {code}: {out}");
    }
    // Let the close records land before reading metrics.
    std::thread::sleep(Duration::from_millis(300));
    let (packets, raw) = capture.finish()?;

    println!("\nwhat the agents report:");
    print_connections(
        "client's agent (reporter=source):",
        &client_agent.metrics(&t.client)?,
    );
    print_connections(
        "server's agent (reporter=destination):",
        &server_agent.metrics(&t.server)?,
    );

    println!("\ncertificates held (from /config_dump):");
    for (name, agent, pod) in [
        ("client", &client_agent, &t.client),
        ("server", &server_agent, &t.server),
    ] {
        let dump = agent.config_dump(pod)?;
        for line in dump
            .lines()
            .filter(|l| l.contains("\"identity\"") || l.contains("\"notAfter\""))
        {
            println!("  {name}: {}", line.trim().trim_end_matches(','));
        }
        if let Some(l) = dump.lines().find(|l| l.contains("hboneConnections")) {
            println!(
                "  {name}: outbound HBONE connections in its pool: {}",
                l.trim().trim_end_matches(',')
            );
        }
    }

    let on_15008 = packets.iter().filter(|p| p.contains(".15008")).count();
    println!(
        "\non the wire between the pods: {} TCP packets, {} of them to or from port 15008; response text in clear: {}",
        packets.len(),
        on_15008,
        if mesh_tests::probe::contains(&raw, b"hello from") {
            "YES (bad)"
        } else {
            "never"
        }
    );
    println!("\naccess log of the server's agent:");
    for line in server_agent.log().lines().filter(|l| l.contains("access")) {
        println!("  {line}");
    }
    println!("\ndemo done; cleaning up namespaces, processes and files");
    Ok(())
}
