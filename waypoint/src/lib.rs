//! The waypoint: an L7 proxy for a namespace's services. It terminates HBONE with its own
//! SPIFFE identity, applies the HTTP rules users write for Istio and the Gateway API, and
//! carries each request over HBONE to a destination pod. The protocol, TLS and identity code
//! are the node agent's (`ztunnel`): one implementation.
//!
//! # Modules
//! - [`config`]: flags and environment of `waypoint run`.
//! - [`server`]: HBONE in, protocol sniffing; [`tcp`]: non-HTTP tunnels.
//! - [`pipeline`]: one request: authorization, route, faults, filters, retries, timeouts.
//! - [`upstream`]: endpoints, load balancing, outlier detection, circuit breakers, pooled
//!   connections.
//! - [`metrics`]: Istio's request metrics and the access log; [`rules_watch`]: reloads.
#![forbid(unsafe_code)]

pub mod config;
pub mod metrics;
pub mod pipeline;
pub mod rules_watch;
pub mod server;
pub mod tcp;
pub mod upstream;

use anyhow::Context;
use config::Config;
use metrics::Metrics;
use rules_watch::RulesHandle;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use upstream::{Breakers, Connections, EndpointSet};
use ztunnel::app::Serving;
use ztunnel::hbone::client::{Dialer, Pool};
use ztunnel::identity::{CertManager, Identity, LocalCa};
use ztunnel::state::StateHandle;
use ztunnel::tls::ServerConfigs;

/// What every request shares.
pub struct Waypoint {
    pub cfg: Config,
    pub identity: Identity,
    pub state: Arc<StateHandle>,
    pub rules: Arc<RulesHandle>,
    pub metrics: Arc<Metrics>,
    pub connections: Connections,
    pub endpoints: EndpointSet,
    pub breakers: Breakers,
}

/// A started waypoint: listeners bound, serving.
pub struct Running {
    pub waypoint: Arc<Waypoint>,
    serving: Serving,
}

impl Running {
    /// Loads everything (a bad file or setting stops start-up), binds, and serves.
    pub async fn start(cfg: Config) -> anyhow::Result<Running> {
        let defaults = ztunnel::discovery::local::Defaults {
            trust_domain: cfg.trust_domain.clone(),
            cluster_id: cfg.cluster_id.clone(),
        };
        let state = ztunnel::discovery::local::load(&cfg.local_xds_path, &defaults)?;
        let rules = waypoint_rules::load_dir(&cfg.config_dir, &cfg.gateway)?;
        let ca = LocalCa::load(&cfg.local_ca_dir).context("LOCAL_CA_DIR")?;
        let certs = Arc::new(CertManager::new(ca, cfg.secret_ttl));
        let identity = Identity::new(
            &cfg.trust_domain,
            &cfg.workload.namespace,
            &cfg.workload.service_account,
        );
        certs
            .get(&identity)
            .with_context(|| format!("certificate for {identity}"))?;
        // Built now so that a configuration that cannot be made stops start-up.
        let tls = Arc::new(ServerConfigs::default());
        tls.get(&certs, &identity)
            .map_err(anyhow::Error::msg)
            .context("TLS configuration")?;
        let dialer = Dialer {
            mark: None,
            connect_timeout: Some(Duration::from_secs(10)),
            netns: None,
        };
        let hbone = ztunnel::proxy::bind("hbone", cfg.listeners.hbone).await?;
        let admin_l = ztunnel::proxy::bind("admin", cfg.listeners.admin).await?;
        let metrics_l = ztunnel::proxy::bind("metrics", cfg.listeners.metrics).await?;
        let readiness_l = ztunnel::proxy::bind("readiness", cfg.listeners.readiness).await?;

        let metrics = Arc::new(Metrics::new(&cfg.cluster_id));
        let state = Arc::new(StateHandle::new(state));
        let rules = Arc::new(RulesHandle::new(rules));
        let wp = Arc::new(Waypoint {
            connections: Connections::new(
                Pool::new(certs.clone(), dialer.clone()),
                dialer,
                identity.clone(),
            ),
            identity,
            state: state.clone(),
            rules: rules.clone(),
            metrics: metrics.clone(),
            endpoints: EndpointSet::default(),
            breakers: Breakers::default(),
            cfg,
        });
        let mut serving = Serving::default();
        let drain_rx = serving.drain_signal();
        let ready = serving.ready.clone();
        let tasks = &mut serving.tasks;
        tasks.spawn(
            "HBONE listener",
            serve_hbone(wp.clone(), certs.clone(), tls, hbone, drain_rx.clone()),
        );
        let m = metrics.clone();
        tasks.spawn(
            "metrics server",
            ztunnel::admin::serve(
                "metrics",
                metrics_l,
                drain_rx.clone(),
                ztunnel::admin::metrics_handler(move || m.encode()),
            ),
        );
        tasks.spawn(
            "readiness server",
            ztunnel::admin::serve(
                "readiness",
                readiness_l,
                drain_rx.clone(),
                ztunnel::admin::readiness_handler(ready.clone()),
            ),
        );
        tasks.spawn(
            "admin server",
            ztunnel::admin::serve(
                "admin",
                admin_l,
                drain_rx.clone(),
                admin_handler(wp.clone()),
            ),
        );
        tasks.spawn(
            "local config watch",
            ztunnel::discovery::local::watch(
                wp.cfg.local_xds_path.clone(),
                defaults,
                state,
                wp.cfg.reload_interval,
            ),
        );
        tasks.spawn(
            "rules watch",
            rules_watch::watch(
                wp.cfg.config_dir.clone(),
                wp.cfg.gateway.clone(),
                rules,
                wp.cfg.reload_interval,
            ),
        );
        tasks.spawn(
            "certificate renewal",
            ztunnel::app::renew_certificates(certs),
        );
        tasks.spawn("memory trim", ztunnel::memory::trim_periodically());
        ready.store(true, Ordering::Relaxed);
        tracing::info!(identity = %wp.identity, gateway = %wp.cfg.gateway, "waypoint ready");
        Ok(Running {
            waypoint: wp,
            serving,
        })
    }

    /// See [`Serving::until_stopped`].
    ///
    /// # Errors
    /// If one of the waypoint's tasks ended.
    pub async fn until_stopped(&mut self) -> anyhow::Result<()> {
        self.serving.until_stopped().await
    }

    /// Stops accepting, lets open tunnels finish for up to `timeout`.
    pub async fn drain(self, timeout: Duration) {
        self.serving.drain(timeout).await;
    }
}

/// HBONE on 15008: every CONNECT stream handed to [`server::handle_stream`].
async fn serve_hbone(
    wp: Arc<Waypoint>,
    certs: Arc<CertManager>,
    tls: Arc<ServerConfigs>,
    listener: tokio::net::TcpListener,
    drain: tokio::sync::watch::Receiver<bool>,
) {
    ztunnel::proxy::accept_loop("hbone", listener, drain, move |stream, peer, drain| {
        let (wp, certs, tls) = (wp.clone(), certs.clone(), tls.clone());
        async move {
            let td = &wp.identity.trust_domain;
            let tls = match tls.get(&certs, &wp.identity) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "no certificate to serve HBONE with");
                    return;
                }
            };
            let handler = {
                let wp = wp.clone();
                move |incoming| server::handle_stream(wp.clone(), incoming)
            };
            if let Err(e) = ztunnel::hbone::server::serve(stream, tls, td, drain, handler).await {
                tracing::warn!(%peer, error = %e, "HBONE connection failed");
            }
        }
    })
    .await
}

/// `/config_dump`: the rules in force, by service.
fn admin_handler(wp: Arc<Waypoint>) -> ztunnel::admin::Handler {
    Arc::new(move |req| match req.uri().path() {
        "/config_dump" => {
            let rules = wp.rules.snapshot();
            let routes: serde_json::Map<String, serde_json::Value> = rules
                .routes
                .iter()
                .map(|(svc, entries)| {
                    let names: Vec<&str> = entries.iter().map(|e| e.rule.name.as_str()).collect();
                    (svc.to_string(), serde_json::json!(names))
                })
                .collect();
            let body = serde_json::json!({
                "identity": wp.identity.to_string(),
                "gateway": wp.cfg.gateway.to_string(),
                "routes": routes,
                "gatewayRoutes": rules.gateway_routes.iter().map(|e| e.rule.name.clone()).collect::<Vec<_>>(),
                "destinationRules": rules.traffic.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
                "authorizationPolicies": rules.authz.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect::<Vec<_>>(),
            });
            ztunnel::admin::respond(
                http::StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&body).unwrap_or_default(),
            )
        }
        _ => ztunnel::admin::respond(http::StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}

/// What unit tests share.
#[cfg(test)]
mod testing {
    use std::sync::Arc;
    use ztunnel::state::Workload;

    /// The one workload of a local-file `workloads:` list.
    pub fn workload(yaml: &str) -> Arc<Workload> {
        let defaults = ztunnel::discovery::local::Defaults {
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
        };
        let state =
            ztunnel::discovery::local::parse(std::path::Path::new("t.yaml"), yaml, &defaults)
                .expect("a test workload parses");
        state.workloads().next().expect("one workload").clone()
    }
}
