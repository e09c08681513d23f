//! Protocol tests in one process over loopback: two agents (dedicated mode) on their own
//! 127.x addresses, a plain TCP server behind the destination, and clients that speak SOCKS5
//! or raw HBONE. What is asserted is what a peer sees: bytes, status codes, refusals.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ztunnel::app::Agent;
use ztunnel::config::{Config, Listeners, ProxyMode, WorkloadInfo};
use ztunnel::hbone::client::{Connect, Dialer, HboneError, Pool, PoolKey};
use ztunnel::identity::{CertManager, Identity, LocalCa};

struct Net {
    /// 127.<n>.0.x: one /24 of loopback per test, so tests run in parallel.
    n: u8,
    dir: tempfile::TempDir,
}

impl Net {
    fn new(n: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::generate(&dir.path().join("ca"), "cluster.local").unwrap();
        Net { n, dir }
    }
    fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.n, 0, host))
    }
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }
    fn xds(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }
    /// Client `client` at .2, server `server` at .3, both HBONE, plus extra YAML.
    fn write_xds(&self, policies: &str) {
        let yaml = format!(
            r#"workloads:
- uid: client
  name: client
  namespace: default
  serviceAccount: client
  workloadIps: ["{c}"]
  protocol: HBONE
  node: node1
- uid: server
  name: server
  namespace: default
  serviceAccount: server
  workloadIps: ["{s}"]
  protocol: HBONE
  node: node2
  services:
    "default/echo.default.svc.cluster.local":
      80: 8080
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: ["/{vip}"]
  ports:
    80: 8080
{policies}
"#,
            c = self.ip(2),
            s = self.ip(3),
            vip = self.ip(100),
        );
        write_atomically(&self.xds(), &yaml);
    }

    fn config(&self, host: u8, name: &str, ca: &Path) -> Config {
        let ip = self.ip(host);
        let at = |p| SocketAddr::new(ip, p);
        Config {
            local_xds_path: self.xds(),
            proxy_mode: ProxyMode::Dedicated,
            workload_info: Some(WorkloadInfo {
                namespace: "default".into(),
                name: name.into(),
                service_account: name.into(),
            }),
            node_name: String::new(),
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            network: String::new(),
            packet_mark: None,
            worker_threads: 1,
            enable_orig_src: false,
            local_ca_dir: ca.to_owned(),
            secret_ttl: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(1),
            listeners: Listeners {
                outbound: at(15001),
                inbound_plaintext: at(15006),
                hbone: at(15008),
                socks5: Some(at(15080)),
                admin: at(15000),
                metrics: at(15020),
                readiness: at(15021),
            },
            hbone_port: 15008,
            reload_interval: Duration::from_millis(50),
            cgroup: ztunnel::config::cgroup_v2_root(),
            ebpf_log_level: 0,
            bpf_pin_dir: None,
            ebpf_object: None,
        }
    }

    async fn agents(&self) -> (Agent, Agent) {
        let a = Agent::start(self.config(2, "client", &self.ca()))
            .await
            .unwrap();
        let b = Agent::start(self.config(3, "server", &self.ca()))
            .await
            .unwrap();
        (a, b)
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// An echo server on `addr`.
async fn echo(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

/// Opens a SOCKS5 CONNECT to `dst` through `proxy`.
async fn socks5(proxy: SocketAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await?;
    assert_eq!(b, [5, 0]);
    let IpAddr::V4(ip) = dst.ip() else {
        panic!("v4 only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&dst.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    assert_eq!(reply[1], 0, "SOCKS5 reply");
    Ok(s)
}

/// Sends `payload` and reads everything echoed back.
async fn round_trip(mut s: TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(payload).await?;
        w.shutdown().await
    };
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back);
    let (wr, rd) = tokio::join!(write, read);
    wr?;
    rd?;
    Ok(back)
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A client pool holding certificates of `ca` for `id`.
fn pool(ca: &Path) -> Pool {
    let certs = Arc::new(CertManager::new(
        LocalCa::load(ca).unwrap(),
        Duration::from_secs(3600),
    ));
    Pool::new(certs, Dialer::default())
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

#[tokio::test]
async fn socks5_through_hbone_arrives_byte_exact_and_is_counted() {
    let net = Net::new(61);
    net.write_xds("");
    echo(SocketAddr::new(net.ip(3), 8080)).await;
    let (_a, _b) = net.agents().await;

    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let s = socks5(
        SocketAddr::new(net.ip(2), 15080),
        SocketAddr::new(net.ip(3), 8080),
    )
    .await
    .unwrap();
    assert_eq!(round_trip(s, &payload).await.unwrap(), payload);

    // Through the service VIP: port 80 maps to the endpoint's 8080.
    let s = socks5(
        SocketAddr::new(net.ip(2), 15080),
        SocketAddr::new(net.ip(100), 80),
    )
    .await
    .unwrap();
    assert_eq!(round_trip(s, b"via the VIP").await.unwrap(), b"via the VIP");

    let metrics = http_get(SocketAddr::new(net.ip(3), 15020), "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_received_bytes_total{")
                && l.contains(r#"reporter="destination""#)
                && l.contains(r#"source_principal="spiffe://cluster.local/ns/default/sa/client""#)
                && l.contains(
                    r#"destination_principal="spiffe://cluster.local/ns/default/sa/server""#,
                )
                && l.contains(r#"connection_security_policy="mutual_tls""#)
        })
        .unwrap_or_else(|| panic!("no destination series with the client's principal:\n{metrics}"));
    let bytes: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(bytes, payload.len() as u64 + "via the VIP".len() as u64);

    let dump = http_get(SocketAddr::new(net.ip(2), 15000), "/config_dump").await;
    assert!(
        dump.contains("spiffe://cluster.local/ns/default/sa/client"),
        "{dump}"
    );
    let ready = http_get(SocketAddr::new(net.ip(2), 15021), "/healthz/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
}

#[tokio::test]
async fn connect_answers_carry_istio_status_codes() {
    let net = Net::new(62);
    net.write_xds(
        r#"policies:
- name: deny-9090
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - destinationPorts: [9090]
"#,
    );
    echo(SocketAddr::new(net.ip(3), 8080)).await;
    echo(SocketAddr::new(net.ip(3), 9090)).await;
    let (_a, b) = net.agents().await;
    let pool = pool(&net.ca());
    let hbone = SocketAddr::new(net.ip(3), 15008);
    let status = |authority: SocketAddr| {
        let pool = pool.clone();
        async move {
            let c = Connect {
                key: PoolKey::new(id("client"), vec![id("server")], hbone),
                authority,
                forwarded_for: None,
                forwarded_host: None,
                baggage: None,
                traceparent: None,
            };
            match pool.connect(&c).await {
                Ok(_) => 200,
                Err(HboneError::Status { status, .. }) => status.as_u16(),
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
    };
    assert_eq!(status(SocketAddr::new(net.ip(3), 8080)).await, 200);
    // Not a local workload of that agent.
    assert_eq!(status(SocketAddr::new(net.ip(2), 8080)).await, 400);
    // Denied by policy.
    assert_eq!(status(SocketAddr::new(net.ip(3), 9090)).await, 401);
    // Nothing listens there.
    assert_eq!(status(SocketAddr::new(net.ip(3), 7070)).await, 503);
    // All of that over one pooled connection.
    assert_eq!(pool.connections(), 1);
    // The server agent goes away (GOAWAY): the connection leaves the pool at once, not at the
    // key's next use.
    b.drain(Duration::from_secs(1)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.connections() != 0 || pool.pooled() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection stayed pooled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_request_that_is_not_connect_gets_400() {
    let net = Net::new(63);
    net.write_xds("");
    let (_a, _b) = net.agents().await;
    let certs = CertManager::new(LocalCa::load(&net.ca()).unwrap(), Duration::from_secs(3600));
    let cert = certs.get(&id("client")).unwrap();
    let tls = ztunnel::tls::client_config(&cert, certs.roots(), vec![id("server")]).unwrap();
    let tcp = TcpStream::connect(SocketAddr::new(net.ip(3), 15008))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(net.ip(3).into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}:8080/", net.ip(3)))
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 400);
}

#[tokio::test]
async fn a_client_certificate_from_a_foreign_ca_is_refused() {
    let net = Net::new(64);
    net.write_xds("");
    let (_a, _b) = net.agents().await;
    // Same trust domain, same identity, different CA: only the chain tells them apart.
    let foreign = net.dir.path().join("foreign");
    LocalCa::generate(&foreign, "cluster.local").unwrap();
    let foreign_certs =
        CertManager::new(LocalCa::load(&foreign).unwrap(), Duration::from_secs(3600));
    let real_certs = CertManager::new(LocalCa::load(&net.ca()).unwrap(), Duration::from_secs(3600));
    let cert = foreign_certs.get(&id("client")).unwrap();
    // Trust the real root, so that only the server's check of our certificate can fail.
    let tls = ztunnel::tls::client_config(&cert, real_certs.roots(), vec![id("server")]).unwrap();
    let tcp = TcpStream::connect(SocketAddr::new(net.ip(3), 15008))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(net.ip(3).into());
    let result = async {
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await?;
        let (mut h2, conn) = h2::client::handshake(tls)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = http::Request::connect(format!("{}:8080", net.ip(3)))
            .body(())
            .unwrap();
        let (resp, _) = h2.send_request(req, false).map_err(std::io::Error::other)?;
        resp.await.map_err(std::io::Error::other)
    }
    .await;
    let err = result.expect_err("the server must refuse a foreign client certificate");
    assert!(
        format!("{err:?}").contains("UnknownCA") || format!("{err:?}").contains("alert"),
        "{err:?}"
    );

    // And the other way: a client trusting only the foreign CA refuses our server.
    let pool = Pool::new(Arc::new(foreign_certs), Dialer::default());
    let c = Connect {
        key: PoolKey::new(
            id("client"),
            vec![id("server")],
            SocketAddr::new(net.ip(3), 15008),
        ),
        authority: SocketAddr::new(net.ip(3), 8080),
        forwarded_for: None,
        forwarded_host: None,
        baggage: None,
        traceparent: None,
    };
    assert!(matches!(
        pool.connect(&c).await,
        Err(HboneError::Tls { .. })
    ));
}

#[tokio::test]
async fn the_client_refuses_a_server_with_an_unexpected_identity() {
    let net = Net::new(65);
    net.write_xds("");
    let (_a, _b) = net.agents().await;
    let pool = pool(&net.ca());
    let c = Connect {
        key: PoolKey::new(
            id("client"),
            vec![id("someone-else")],
            SocketAddr::new(net.ip(3), 15008),
        ),
        authority: SocketAddr::new(net.ip(3), 8080),
        forwarded_for: None,
        forwarded_host: None,
        baggage: None,
        traceparent: None,
    };
    match pool.connect(&c).await {
        Err(HboneError::Tls { source, .. }) => {
            assert!(
                source
                    .to_string()
                    .contains("spiffe://cluster.local/ns/default/sa/server"),
                "{source}"
            )
        }
        Ok(_) => panic!("connected to the wrong identity"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn a_policy_added_to_the_file_closes_open_connections_and_refuses_new_ones() {
    let net = Net::new(66);
    net.write_xds("");
    echo(SocketAddr::new(net.ip(3), 8080)).await;
    let (_a, _b) = net.agents().await;
    let socks = SocketAddr::new(net.ip(2), 15080);
    let dst = SocketAddr::new(net.ip(3), 8080);
    let mut open = socks5(socks, dst).await.unwrap();
    open.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    open.read_exact(&mut b).await.unwrap();

    net.write_xds(
        r#"policies:
- name: deny-client
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - principals: [{Exact: cluster.local/ns/default/sa/client}]
"#,
    );
    // The open connection is cut once the agent has re-read the file.
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
    assert!(
        cut.is_ok(),
        "open connection was not closed after the policy change"
    );
    // And a new one is refused.
    let s = socks5(socks, dst).await.unwrap();
    assert!(
        round_trip(s, b"x")
            .await
            .map(|v| v.is_empty())
            .unwrap_or(true)
    );
}

#[tokio::test]
async fn certificate_renewal_keeps_open_connections_and_serves_new_ones() {
    let net = Net::new(67);
    net.write_xds("");
    echo(SocketAddr::new(net.ip(3), 8080)).await;
    // A 1 s lifetime: every certificate is past half-life at once and expired a second later.
    let mut ca = net.config(2, "client", &net.ca());
    ca.secret_ttl = Duration::from_secs(1);
    let mut cb = net.config(3, "server", &net.ca());
    cb.secret_ttl = Duration::from_secs(1);
    let a = Agent::start(ca).await.unwrap();
    let _b = Agent::start(cb).await.unwrap();
    let socks = SocketAddr::new(net.ip(2), 15080);
    let dst = SocketAddr::new(net.ip(3), 8080);

    let mut open = socks5(socks, dst).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut b = [0u8; 6];
    open.read_exact(&mut b).await.unwrap();
    let first = a.inputs.certs.snapshot()[0].not_after;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The connection made with the old certificate still carries bytes...
    open.write_all(b"after!").await.unwrap();
    open.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"after!");
    // ...and a new connection gets through on renewed certificates.
    let s = socks5(socks, dst).await.unwrap();
    assert_eq!(round_trip(s, b"renewed").await.unwrap(), b"renewed");
    assert!(
        a.inputs.certs.snapshot()[0].not_after > first,
        "the certificate was not renewed"
    );
}
