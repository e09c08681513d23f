//! Shared mode: the agent serves every enrolled pod of its node. For each local workload of
//! the state that names its network namespace (`netns`), the agent enrolls the namespace in
//! the eBPF programs and serves the pod from listeners bound inside it (15001 on 127.0.0.1
//! and `::1`, 15006 and 15008 dual-stack, all carrying the agent's mark); a pod that leaves
//! the state, or whose namespace disappears, is unenrolled and its listeners closed. A pod
//! that cannot be enrolled is reported and skipped; the others keep being served.

use super::ProxyInputs;
use crate::netns::PodNetns;
use crate::orig_src::{self, Installed};
use crate::redirect::{OrigDstLookup, RedirectError, Redirector, netns_cookie};
use crate::state::Workload;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why a pod could not be enrolled; names the pod and the namespace.
#[derive(Debug, thiserror::Error)]
#[error("enrolling pod {pod} (netns {netns}): {what}")]
pub struct EnrollError {
    pub pod: String,
    pub netns: PathBuf,
    pub what: String,
}

struct EnrolledPod {
    netns: Arc<PodNetns>,
    cookie: u64,
    /// What was set up in the namespace to keep clients' addresses, to undo at unenrollment.
    orig_src: Option<Installed>,
    /// Sending on this stops the pod's listeners; it is closed once they and every
    /// connection of the pod have ended.
    stop: watch::Sender<bool>,
    _tasks: JoinSet<()>,
}

/// Enrolls and serves the pods of this node.
pub struct Pods {
    base: Arc<ProxyInputs>,
    redirector: Redirector,
    orig_dst: OrigDstLookup,
    pods: HashMap<String, EnrolledPod>,
    /// Source-keeping set-ups of unenrolled pods waiting for their last connection, by netns
    /// cookie, each with the flag that calls its removal off (enrolling the namespace again
    /// sets it). The removal task holds the other reference until it has run.
    removals: HashMap<u64, (Arc<AtomicBool>, Installed)>,
}

impl Pods {
    pub fn new(base: Arc<ProxyInputs>, mut redirector: Redirector) -> Result<Self, RedirectError> {
        Ok(Self {
            orig_dst: redirector.orig_dst_lookup()?,
            base,
            redirector,
            pods: HashMap::new(),
            removals: HashMap::new(),
        })
    }

    /// Keeps the enrolled pods in line with the state until `drain` fires; also notices
    /// namespaces that disappear.
    /// `log_level` switches the programs' diagnostics at run time.
    pub async fn run(
        mut self,
        mut drain: watch::Receiver<bool>,
        mut log_level: watch::Receiver<u32>,
    ) {
        let mut changes = self.base.state.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        self = self.reconciled().await;
        self.remove_stale();
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tick.tick() => {}
                _ = drain.changed() => break,
                Ok(()) = log_level.changed() => {
                    let level = *log_level.borrow_and_update();
                    match self.redirector.set_log_level(level) {
                        Ok(()) => tracing::info!(level, "eBPF log level set"),
                        Err(e) => tracing::error!(error = %e, "setting the eBPF log level"),
                    }
                }
            }
            self = self.reconciled().await;
            if self.redirector.has_inherited() {
                self.remove_stale();
            }
        }
        // Draining: stop accepting in every pod, then wait for the pods' open connections
        // (each holds a receiver of its pod's channel). The agent's drain timeout bounds this,
        // since `drain` is held until we return.
        let pods: Vec<EnrolledPod> = self.pods.drain().map(|(_, p)| p).collect();
        for pod in &pods {
            let _ = pod.stop.send(true);
        }
        for pod in &pods {
            pod.stop.closed().await;
        }
    }

    /// [`Self::reconcile`] on a blocking thread: loading and verifying a pod's program takes
    /// milliseconds (tens when the object needs the kernel's BTF parsed), and the control
    /// thread meanwhile keeps accepting.
    async fn reconciled(mut self) -> Self {
        match tokio::task::spawn_blocking(move || {
            self.reconcile();
            self
        })
        .await
        {
            Ok(this) => this,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Removes the namespaces an earlier agent left enrolled and this one did not enroll
    /// again, but not those of pods it still serves whose enrollment failed this time: they
    /// stay captured (refused, not bypassed) until an attempt succeeds or the pod goes.
    fn remove_stale(&mut self) {
        let keep = self.wanted_cookies();
        if let Err(e) = self.redirector.remove_stale(&keep) {
            tracing::error!(error = %e, "removing stale enrolled namespaces");
        }
    }

    /// The netns cookies of the pods this agent should serve whose namespaces exist.
    fn wanted_cookies(&self) -> std::collections::HashSet<u64> {
        let state = self.base.state.snapshot();
        state
            .workloads()
            .filter(|w| w.node == self.base.cfg.node_name)
            .filter_map(|w| {
                let netns = PodNetns::open(w.netns.as_ref()?).ok()?;
                netns_cookie(&netns.file).ok()
            })
            .collect()
    }

    /// Enrolls new pods and unenrolls those gone.
    fn reconcile(&mut self) {
        let state = self.base.state.snapshot();
        let wanted: HashMap<String, Arc<Workload>> = state
            .workloads()
            .filter(|w| w.node == self.base.cfg.node_name && w.netns.is_some())
            .map(|w| (w.uid.clone(), w.clone()))
            .collect();
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, pod)| {
                let same_ns = wanted
                    .get(*uid)
                    .and_then(|w| w.netns.as_ref())
                    .is_some_and(|p| *p == pod.netns.path);
                if same_ns && !pod.netns.still_exists() {
                    tracing::error!(pod = %uid, netns = %pod.netns.path.display(), "network namespace disappeared; unenrolling the pod");
                }
                !same_ns || !pod.netns.still_exists()
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            if let Some(pod) = self.pods.remove(&uid) {
                let _ = pod.stop.send(true);
                if let Err(e) = self.redirector.unenroll(pod.cookie) {
                    tracing::error!(pod = %uid, error = %e, "unenrolling");
                }
                if let Some(installed) = pod.orig_src {
                    let called_off = Arc::new(AtomicBool::new(false));
                    self.removals
                        .insert(pod.cookie, (called_off.clone(), installed));
                    remove_when_closed(uid.clone(), pod.stop, pod.netns, installed, called_off);
                }
                tracing::info!(pod = %uid, "pod unenrolled");
            }
        }
        for (uid, w) in wanted {
            if self.pods.contains_key(&uid) {
                continue;
            }
            match self.enroll(&w) {
                Ok(pod) => {
                    tracing::info!(pod = %uid, netns = %pod.netns.path.display(), cookie = pod.cookie, "pod enrolled");
                    self.pods.insert(uid, pod);
                }
                // Reported once per state change or tick; the other pods keep being served.
                Err(e) => tracing::error!(error = %e, "pod not enrolled"),
            }
        }
    }

    fn enroll(&mut self, w: &Workload) -> Result<EnrolledPod, EnrollError> {
        let path = w.netns.clone().unwrap_or_default();
        let err = |what: String| EnrollError {
            pod: format!("{}/{}", w.namespace, w.name),
            netns: path.clone(),
            what,
        };
        let netns = PodNetns::open(&path).map_err(|e| err(format!("opening: {e}")))?;
        let cookie =
            netns_cookie(&netns.file).map_err(|e| err(format!("reading the cookie: {e}")))?;
        let mark = self.base.cfg.packet_mark;
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let listen = |name: &str, addr| {
            netns
                .listen(addr, mark)
                .map_err(|e| err(format!("binding the {name} listener on {addr}: {e}")))
        };
        let outbound = listen(
            "outbound",
            SocketAddr::from((Ipv4Addr::LOCALHOST, mesh_common::OUTBOUND_PORT)),
        )?;
        // Where `mesh_connect6` sends native IPv6. Without it (a namespace without IPv6) the
        // pod's IPv6 connections are refused, never let past the mesh.
        let outbound6 = netns
            .listen(
                SocketAddr::from((Ipv6Addr::LOCALHOST, mesh_common::OUTBOUND_PORT)),
                mark,
            )
            .inspect_err(|e| {
                tracing::warn!(pod = %w.uid, error = %e, "no IPv6 outbound listener: the pod's IPv6 connections will be refused");
            })
            .ok();
        // Dual-stack, so that IPv6 inbound is captured too rather than refused by sk_lookup;
        // IPv4 only where the namespace has no IPv6.
        let dual_stack = |name: &str, port| {
            netns
                .listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), mark)
                .or_else(|e| {
                    tracing::warn!(pod = %w.uid, error = %e, "no IPv6 {name} listener: IPv6 connections to the pod will be refused");
                    listen(name, any(port))
                })
        };
        let plaintext = dual_stack("inbound plaintext", mesh_common::INBOUND_PLAINTEXT_PORT)?;
        let hbone = dual_stack("hbone", mesh_common::HBONE_PORT)?;
        self.redirector
            .enroll(cookie, &netns.file, &plaintext)
            .map_err(|e| err(e.to_string()))?;
        let tokio_listener = |l: std::net::TcpListener| {
            tokio::net::TcpListener::from_std(l).map_err(|e| err(e.to_string()))
        };
        let (outbound, outbound6, plaintext, hbone) = (
            tokio_listener(outbound)?,
            outbound6.map(tokio_listener).transpose()?,
            tokio_listener(plaintext)?,
            tokio_listener(hbone)?,
        );
        let orig_src = self.keep_sources(w, &netns, cookie);
        let inputs = self.base.for_pod(
            &w.uid,
            netns.clone(),
            (cookie, self.orig_dst.clone()),
            orig_src,
        );
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for outbound in std::iter::once(outbound).chain(outbound6) {
            tasks.spawn(super::outbound::serve(
                inputs.clone(),
                outbound,
                stopped.clone(),
            ));
        }
        tasks.spawn(super::inbound_passthrough::serve(
            inputs.clone(),
            plaintext,
            stopped.clone(),
        ));
        tasks.spawn(super::inbound::serve(inputs, hbone, stopped));
        Ok(EnrolledPod {
            netns,
            cookie,
            orig_src,
            stop,
            _tasks: tasks,
        })
    }

    /// Sets up the pod's namespace so that its app sees clients' own addresses, when
    /// `ENABLE_ORIG_SRC` is on. A namespace that cannot be set up is reported and served
    /// anyway, its app then seeing the pod's own address as the source.
    fn keep_sources(&mut self, w: &Workload, netns: &PodNetns, cookie: u64) -> Option<Installed> {
        // Those whose task has run are done with.
        self.removals
            .retain(|_, (called_off, _)| Arc::strong_count(called_off) > 1);
        let earlier = self.removals.remove(&cookie).map(|(called_off, earlier)| {
            called_off.store(true, Ordering::SeqCst);
            earlier
        });
        if !self.base.cfg.enable_orig_src {
            return None;
        }
        let installed = orig_src::install(&netns.file)
            .inspect_err(|e| {
                tracing::warn!(pod = %w.uid, error = %e, "clients' addresses not kept: the app sees connections from the pod's own address");
            })
            .ok()?;
        Some(match earlier {
            Some(earlier) => installed.taking_over(earlier),
            None => installed,
        })
    }
}

/// Undoes a pod's source-keeping set-up once its last connection has ended (each holds a
/// receiver of `stop`): until then the app's replies on those connections must still come
/// back to the agent, never leave by the pod's default route.
fn remove_when_closed(
    uid: String,
    stop: watch::Sender<bool>,
    netns: Arc<PodNetns>,
    installed: Installed,
    called_off: Arc<AtomicBool>,
) {
    tokio::runtime::Handle::current().spawn(async move {
        stop.closed().await;
        // `called_off` is dropped when this has run, which tells `keep_sources` so.
        let removed = tokio::task::spawn_blocking(move || {
            if netns.still_exists() {
                orig_src::remove(&netns.file, installed, &called_off)
            } else {
                Ok(())
            }
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = removed {
            tracing::error!(pod = %uid, error = %e, "removing the rule that keeps clients' addresses");
        }
    });
}
