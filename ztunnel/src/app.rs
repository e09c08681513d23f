//! Wires the agent together: loads everything first (so that a bad setting stops start-up),
//! binds every listener, then serves until SIGTERM and drains.

use crate::admin;
use crate::config::{Config, ProxyMode};
use crate::discovery::local;
use crate::identity::{CertManager, LocalCa};
use crate::metrics::Metrics;
use crate::proxy::pods::Pods;
use crate::proxy::{self, ProxyInputs};
use crate::redirect::{RedirectConfig, Redirector};
use crate::state::StateHandle;
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;

/// A started agent: listeners bound, serving.
pub struct Agent {
    pub inputs: Arc<ProxyInputs>,
    serving: Serving,
}

/// What a serving process (the agent, the waypoint) holds: the drain signal its listeners
/// and connections watch, its readiness, and its tasks.
pub struct Serving {
    drain: tokio::sync::watch::Sender<bool>,
    pub ready: Arc<AtomicBool>,
    pub tasks: Tasks,
}

/// The tasks that serve until drained, by name, so that one ending early can be named.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    /// Runs `task` (called `name` in errors) until it ends or the process drains.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }
}

impl Default for Serving {
    fn default() -> Self {
        Self {
            drain: tokio::sync::watch::channel(false).0,
            ready: Arc::new(AtomicBool::new(false)),
            tasks: Tasks::default(),
        }
    }
}

impl Serving {
    /// A receiver of the drain signal, for a listener or connection to hold until it is done.
    pub fn drain_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Returns on SIGTERM or SIGINT, or with an error as soon as one of the tasks ends: they
    /// all run until drained, so one that ends first has failed (a panic, say), and a
    /// process serving with a piece missing should stop rather than stay ready.
    ///
    /// # Errors
    /// If a task ended, or the signal handler cannot be installed.
    pub async fn until_stopped(&mut self) -> anyhow::Result<()> {
        tokio::select! {
            r = until_signalled() => Ok(r?),
            Some(ended) = self.tasks.set.join_next_with_id() => {
                let id = match &ended {
                    Ok((id, ())) => *id,
                    Err(e) => e.id(),
                };
                let name = self.tasks.names.get(&id).copied().unwrap_or("a serving task");
                Err(match ended {
                    Err(e) if e.is_panic() => anyhow::anyhow!("{name} panicked: {e}"),
                    _ => anyhow::anyhow!("{name} ended unexpectedly"),
                })
            }
        }
    }

    /// Stops accepting and reports not ready, lets open connections finish for up to
    /// `timeout`, then stops what is left.
    pub async fn drain(mut self, timeout: Duration) {
        self.ready.store(false, Ordering::Relaxed);
        let _ = self.drain.send(true);
        tracing::info!(?timeout, "draining");
        // Every open connection holds a drain receiver; all dropped means all done.
        if tokio::time::timeout(timeout, self.drain.closed())
            .await
            .is_err()
        {
            tracing::warn!("drain timed out; closing the remaining connections");
        }
        self.tasks.set.abort_all();
    }
}

/// Returns on SIGTERM or SIGINT.
///
/// # Errors
/// If the SIGTERM handler cannot be installed.
async fn until_signalled() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
    Ok(())
}

impl Agent {
    /// Loads configuration, state and CA, binds all listeners and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Agent> {
        let defaults = local::Defaults {
            trust_domain: cfg.trust_domain.clone(),
            cluster_id: cfg.cluster_id.clone(),
        };
        let state = local::load(&cfg.local_xds_path, &defaults)?;
        let ca = LocalCa::load(&cfg.local_ca_dir).context("LOCAL_CA_DIR")?;
        let certs = Arc::new(CertManager::new(ca, cfg.secret_ttl));
        let state = Arc::new(StateHandle::new(state));
        let metrics = Arc::new(Metrics::new());
        let cfg = Arc::new(cfg);
        let inputs = ProxyInputs::new(cfg.clone(), state.clone(), certs.clone(), metrics.clone());

        // Sign the local identities' certificates now: a CA that cannot sign stops start-up.
        for id in inputs.local_identities(&state.snapshot()) {
            certs
                .get(&id)
                .with_context(|| format!("certificate for {id}"))?;
        }

        let l = &cfg.listeners;
        let mut serving = Serving::default();
        let drain_rx = serving.drain_signal();
        let ready = serving.ready.clone();
        let tasks = &mut serving.tasks;
        let (ebpf_log_level, ebpf_log_level_rx) = tokio::sync::watch::channel(cfg.ebpf_log_level);
        match cfg.proxy_mode {
            ProxyMode::Dedicated => {
                // One workload: the data listeners live in this (the pod's) namespace.
                let outbound = proxy::bind("outbound", l.outbound).await?;
                let plaintext = proxy::bind("inbound plaintext", l.inbound_plaintext).await?;
                let hbone = proxy::bind("hbone", l.hbone).await?;
                let socks5 = match l.socks5 {
                    Some(a) => Some(proxy::bind("socks5", a).await?),
                    None => None,
                };
                tasks.spawn(
                    "outbound listener",
                    proxy::outbound::serve(inputs.clone(), outbound, drain_rx.clone()),
                );
                tasks.spawn(
                    "inbound plaintext listener",
                    proxy::inbound_passthrough::serve(inputs.clone(), plaintext, drain_rx.clone()),
                );
                tasks.spawn(
                    "HBONE listener",
                    proxy::inbound::serve(inputs.clone(), hbone, drain_rx.clone()),
                );
                if let Some(s) = socks5 {
                    tasks.spawn(
                        "SOCKS5 listener",
                        proxy::socks5::serve(inputs.clone(), s, drain_rx.clone()),
                    );
                }
            }
            ProxyMode::Shared => {
                // Every enrolled pod of the node: eBPF steers their traffic to listeners
                // inside each pod's namespace.
                let redirector = Redirector::load(&RedirectConfig {
                    cgroup: cfg.cgroup.clone(),
                    mark: cfg.packet_mark.unwrap_or(mesh_common::DEFAULT_PACKET_MARK),
                    log_level: cfg.ebpf_log_level,
                    pin_dir: cfg.bpf_pin_dir.clone(),
                    object: cfg.ebpf_object.clone(),
                })
                .with_context(|| {
                    let object = cfg.ebpf_object.as_ref().map_or_else(
                        || "built in".to_owned(),
                        |o| format!("EBPF_OBJECT {}", o.display()),
                    );
                    format!("loading the eBPF redirection programs ({object})")
                })?;
                let pods =
                    Pods::new(inputs.clone(), redirector).context("reading the eBPF maps")?;
                tasks.spawn(
                    "pod enrollment",
                    pods.run(drain_rx.clone(), ebpf_log_level_rx),
                );
            }
        }
        let admin_l = proxy::bind("admin", l.admin).await?;
        let metrics_l = proxy::bind("metrics", l.metrics).await?;
        let readiness_l = proxy::bind("readiness", l.readiness).await?;
        tasks.spawn(
            "admin server",
            admin::serve(
                "admin",
                admin_l,
                drain_rx.clone(),
                admin::admin_handler(
                    inputs.clone(),
                    (cfg.proxy_mode == ProxyMode::Shared).then_some(ebpf_log_level),
                ),
            ),
        );
        tasks.spawn(
            "metrics server",
            admin::serve(
                "metrics",
                metrics_l,
                drain_rx.clone(),
                admin::metrics_handler(move || metrics.encode()),
            ),
        );
        tasks.spawn(
            "readiness server",
            admin::serve(
                "readiness",
                readiness_l,
                drain_rx.clone(),
                admin::readiness_handler(ready.clone()),
            ),
        );
        tasks.spawn(
            "local config watch",
            local::watch(
                cfg.local_xds_path.clone(),
                defaults,
                state,
                cfg.reload_interval,
            ),
        );
        tasks.spawn("certificate renewal", renew_certificates(certs));
        tasks.spawn("memory trim", crate::memory::trim_periodically());
        ready.store(true, Ordering::Relaxed);
        tracing::info!(
            mode = ?cfg.proxy_mode,
            node = %cfg.node_name,
            workload = ?cfg.workload_info,
            "ztunnel ready"
        );
        Ok(Agent { inputs, serving })
    }

    /// See [`Serving::until_stopped`].
    ///
    /// # Errors
    /// If one of the agent's tasks ended.
    pub async fn until_stopped(&mut self) -> anyhow::Result<()> {
        self.serving.until_stopped().await
    }

    /// Stops accepting, lets open connections finish for up to `timeout`, then returns.
    pub async fn drain(self, timeout: Duration) {
        self.serving.drain(timeout).await;
    }
}

/// Re-signs certificates at half-life, ahead of need.
pub async fn renew_certificates(certs: Arc<CertManager>) {
    loop {
        let next = certs.renew_due();
        // Due already (or soon): check again in a second; nothing held: in a minute.
        let wait = next
            .map(|t| {
                t.duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
            })
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A serving task that panics or returns stops the process, and is named.
    #[tokio::test]
    async fn a_serving_task_that_ends_stops_serving_and_is_named() {
        let mut serving = Serving::default();
        serving.tasks.spawn("forever", std::future::pending());
        serving
            .tasks
            .spawn("config watch", async { panic!("bad state") });
        let e = serving.until_stopped().await.unwrap_err().to_string();
        assert!(e.starts_with("config watch panicked"), "{e}");

        let mut serving = Serving::default();
        serving.tasks.spawn("listener", async {});
        let e = serving.until_stopped().await.unwrap_err().to_string();
        assert_eq!(e, "listener ended unexpectedly");
    }
}
