//! Outbound: a connection from a local workload to wherever it dialled. A service VIP is
//! resolved to an endpoint (service port mapped to target port); a destination that speaks
//! HBONE is reached through a tunnel to `<pod IP>:15008`, anything else over plain TCP.

use super::{ProxyInputs, copy, is_own_port, reset};
use crate::hbone::client::{Connect, HboneError, PoolKey};
use crate::metrics::{ConnectionInfo, ConnectionRecord, Direction, Outcome};
use crate::state::{Protocol, Upstream, Workload};
use crate::traceparent::TraceParent;
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// The outbound listener (15001): connections captured with their original destination.
pub async fn serve(
    inputs: Arc<ProxyInputs>,
    listener: tokio::net::TcpListener,
    drain: tokio::sync::watch::Receiver<bool>,
) {
    super::accept_loop("outbound", listener, drain, move |stream, peer, _drain| {
        let inputs = inputs.clone();
        async move {
            match inputs.original_dst(&stream) {
                Some(dst) => proxy(inputs, stream, peer, dst).await,
                None => reset(stream),
            }
        }
    })
    .await
}

/// Where one outbound connection goes.
enum Route {
    Hbone {
        upstream: Upstream,
        /// Boxed: the largest part of the route, by far.
        connect: Box<Connect>,
    },
    Tcp {
        upstream: Option<Upstream>,
        addr: SocketAddr,
    },
}

/// Carries `client` (from `client_addr`, dialling `dst`) to its destination. Shared by every
/// way a connection can be captured.
pub async fn proxy(
    inputs: Arc<ProxyInputs>,
    mut client: TcpStream,
    client_addr: SocketAddr,
    dst: SocketAddr,
) {
    let state = inputs.state.snapshot();
    let Some((src_workload, src_id)) = inputs.source(&state) else {
        tracing::warn!(%client_addr, %dst, "no source workload for outbound connection");
        return reset(client);
    };
    let local_ips: Vec<_> = src_workload
        .as_ref()
        .map(|w| w.workload_ips.clone())
        .unwrap_or_default();
    if is_own_port(dst.port()) && (dst.ip().is_loopback() || local_ips.contains(&dst.ip())) {
        tracing::warn!(%client_addr, %dst, "refusing a connection to the agent's own port");
        return reset(client);
    }
    // A client on loopback is the pod itself (SOCKS5, dedicated mode): name it by its pod IP.
    let origin = match local_ips
        .iter()
        .find(|ip| ip.is_ipv4() == client_addr.is_ipv4())
    {
        Some(ip) if client_addr.ip().is_loopback() => SocketAddr::new(*ip, client_addr.port()),
        _ => client_addr,
    };
    let upstream = state.resolve(&inputs.cfg.network, dst, &inputs.picker);
    if upstream.is_none()
        && let Some(svc) = state.service_by_vip(&inputs.cfg.network, dst.ip())
    {
        // A mesh service with no healthy endpoint for this port is refused, as Istio's
        // ztunnel does: never passed through as plain TCP to its VIP, past mTLS and waypoint.
        tracing::warn!(%client_addr, %dst, service = %svc.hostname, "no healthy endpoint for the service port; refusing");
        return reset(client);
    }
    // A destination behind a waypoint is reached through it, with the original destination
    // (the service VIP) as the authority, so that the waypoint applies its L7 rules. The
    // waypoint's own connections go straight to the destination.
    let waypoint = match &upstream {
        Some(up) => match state.waypoint_for(up, &inputs.picker) {
            Some(Ok(wp))
                if !local_ips
                    .iter()
                    .any(|ip| wp.workload.workload_ips.contains(ip)) =>
            {
                Some(wp)
            }
            Some(Ok(_)) | None => None,
            Some(Err(why)) => {
                // Fail closed: never bypass the waypoint's policy.
                tracing::warn!(%client_addr, %dst, "{why}; refusing");
                return reset(client);
            }
        },
        None => None,
    };
    let trace = TraceParent::new();
    let route = match (waypoint, upstream) {
        (Some(wp), Some(up)) => {
            let authority = if up.service.is_some() { dst } else { up.addr };
            let connect = Connect {
                key: PoolKey::new(src_id.clone(), vec![wp.workload.identity()], wp.addr),
                authority,
                forwarded_for: Some(origin),
                forwarded_host: up.service.as_ref().map(|s| s.hostname.clone()),
                baggage: src_workload.as_deref().map(baggage),
                traceparent: Some(trace),
            };
            let upstream = Upstream {
                workload: wp.workload,
                addr: authority,
                service: up.service,
            };
            Route::Hbone {
                upstream,
                connect: Box::new(connect),
            }
        }
        (_, upstream) => direct(
            &inputs,
            src_workload.as_deref(),
            &src_id,
            origin,
            dst,
            upstream,
            trace,
        ),
    };
    let (upstream, dst_identity, mtls, hbone_addr) = match &route {
        Route::Hbone { upstream, connect } => (
            Some(upstream.clone()),
            Some(upstream.workload.identity()),
            true,
            Some(connect.authority),
        ),
        Route::Tcp { upstream, .. } => (upstream.clone(), None, false, None),
    };
    let info = ConnectionInfo {
        direction: Direction::Outbound,
        src_addr: origin,
        src_workload,
        src_identity: mtls.then(|| src_id.clone()),
        dst_addr: match &route {
            Route::Hbone { connect, .. } => connect.key.dst,
            Route::Tcp { addr, .. } => *addr,
        },
        hbone_addr,
        dst_workload: upstream.as_ref().map(|u| u.workload.clone()),
        dst_service: upstream.as_ref().and_then(|u| u.service.clone()),
        dst_identity,
        mtls,
        trace_id: trace.trace_id(),
    };
    let record = ConnectionRecord::open(inputs.metrics.clone(), info);
    // A copy that fails (either side reset) resets both sides: a client's RST reaches the
    // server as a reset, not as a FIN that would look like a complete request.
    let result = match route {
        Route::Hbone { connect, .. } => match inputs.pool.connect(&connect).await {
            Ok(mut tunnel) => {
                let r = copy::bidirectional(&mut client, &mut tunnel, &record.bytes).await;
                if r.is_err() {
                    tunnel.reset();
                }
                r
            }
            Err(e) => return fail(record, client, &e),
        },
        Route::Tcp { addr, .. } => match inputs.dialer.dial(addr).await {
            Ok(mut up) => {
                let r = copy::bidirectional(&mut client, &mut up, &record.bytes).await;
                if r.is_err() {
                    reset(up);
                }
                r
            }
            Err(e) => {
                record.finish(Outcome::ConnectFailed(format!("connecting to {addr}: {e}")));
                return reset(client);
            }
        },
    };
    match result {
        Ok(()) => record.finish(Outcome::Ok),
        Err(e) => {
            record.finish(Outcome::Failed(e.to_string()));
            reset(client);
        }
    }
}

/// The route to a destination without a waypoint: HBONE to the pod when it speaks HBONE,
/// plain TCP otherwise.
fn direct(
    inputs: &ProxyInputs,
    src_workload: Option<&Workload>,
    src_id: &crate::identity::Identity,
    origin: SocketAddr,
    dst: SocketAddr,
    upstream: Option<Upstream>,
    trace: TraceParent,
) -> Route {
    match upstream {
        Some(up) if up.workload.protocol == Protocol::HBONE => {
            let mut expected = vec![up.workload.identity()];
            if let Some(svc) = &up.service {
                expected.extend(svc.subject_alt_names.iter().filter_map(|s| s.parse().ok()));
            }
            let hbone = SocketAddr::new(up.addr.ip(), inputs.cfg.hbone_port);
            let connect = Connect {
                key: PoolKey::new(src_id.clone(), expected, hbone),
                authority: up.addr,
                forwarded_for: Some(origin),
                forwarded_host: up.service.as_ref().map(|s| s.hostname.clone()),
                baggage: src_workload.map(baggage),
                traceparent: Some(trace),
            };
            Route::Hbone {
                upstream: up,
                connect: Box::new(connect),
            }
        }
        Some(up) => Route::Tcp {
            addr: up.addr,
            upstream: Some(up),
        },
        None => Route::Tcp {
            upstream: None,
            addr: dst,
        },
    }
}

/// Istio's `baggage` header: who the source is, for the peer's telemetry.
fn baggage(w: &Workload) -> String {
    format!(
        "k8s.cluster.name={},k8s.namespace.name={},k8s.{}.name={},service.name={},service.version={}",
        w.cluster_id,
        w.namespace,
        w.workload_type,
        w.display_name(),
        if w.canonical_name.is_empty() {
            w.display_name()
        } else {
            &w.canonical_name
        },
        if w.canonical_revision.is_empty() {
            "latest"
        } else {
            &w.canonical_revision
        },
    )
}

/// Records why the tunnel could not be opened and resets the client.
fn fail(record: ConnectionRecord, client: TcpStream, e: &HboneError) {
    let outcome = match e {
        HboneError::Status { status, .. } if *status == StatusCode::UNAUTHORIZED => {
            Outcome::Denied(e.to_string())
        }
        _ => Outcome::ConnectFailed(e.to_string()),
    };
    record.finish(outcome);
    reset(client);
}
