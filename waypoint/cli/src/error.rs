//! The commands' errors, each naming its cause, and the one place that classifies what the
//! Kubernetes client returned.

use std::path::PathBuf;
use std::time::Duration;

use kube::core::Status;

/// How to install the Gateway API CRDs, as Istio's ambient guide says.
pub const INSTALL_GATEWAY_API: &str =
    "kubectl apply -k \"github.com/kubernetes-sigs/gateway-api/config/crd?ref=v1.4.0\"";

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The waypoint's name is not one Kubernetes or Istio accepts.
    #[error("invalid name provided for waypoint: {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No kubeconfig was given or found, and this is not a pod with a service account.
    #[error("no kubeconfig found: looked at {looked}, and no in-cluster service account")]
    NoKubeconfig {
        /// The places looked at.
        looked: String,
    },
    /// A kubeconfig was found but cannot be used (unreadable, malformed, unknown context).
    #[error("cannot use kubeconfig {path}")]
    Kubeconfig {
        /// Where it was read from.
        path: String,
        /// What was wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The named kubeconfig file does not exist.
    #[error("kubeconfig {0} not found")]
    KubeconfigNotFound(PathBuf),
    /// The client could not be built from the configuration (TLS material, proxy).
    #[error("cannot make a Kubernetes client for {server}")]
    Client {
        /// The API server's URL.
        server: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Connecting to the API server failed: refused, timed out, TLS.
    #[error(
        "cannot reach the Kubernetes API server at {server} (is the cluster running and the kubeconfig current?)"
    )]
    Unreachable {
        /// The API server's URL, from the kubeconfig.
        server: String,
        /// The transport error.
        #[source]
        source: kube::Error,
    },
    /// The server does not serve `gateway.networking.k8s.io/v1` gateways.
    #[error(
        "the Gateway API CRDs are not installed (the server does not serve gateways.gateway.networking.k8s.io/v1): {INSTALL_GATEWAY_API}"
    )]
    GatewayApiMissing,
    /// The namespace does not exist.
    #[error("namespace {0} not found")]
    NamespaceNotFound(String),
    /// These waypoints do not exist in the namespace (the others named were deleted).
    #[error("waypoint {} not found", qualified(namespace, names))]
    WaypointNotFound {
        /// Their namespace.
        namespace: String,
        /// The names not found.
        names: Vec<String>,
    },
    /// The namespace is enrolled with another waypoint and `--overwrite` was not given.
    #[error(
        "namespace ({namespace}) already has an enrolled Waypoint ({current}); consider adding the `--overwrite` flag to your apply command"
    )]
    NamespaceUsesOtherWaypoint {
        /// The namespace.
        namespace: String,
        /// The waypoint it uses now.
        current: String,
    },
    /// RBAC refused the request.
    #[error("forbidden: cannot {verb} {resource}{target}: {message}")]
    Forbidden {
        /// The API verb (get, list, patch, delete).
        verb: &'static str,
        /// The resource, e.g. `gateways.gateway.networking.k8s.io`.
        resource: &'static str,
        /// ` "name" in namespace "ns"`, or empty.
        target: String,
        /// The server's message (names the user).
        message: String,
    },
    /// `--wait` ran out of time.
    #[error("timed out after {timeout:?} while waiting for waypoint {namespace}/{name} to be programmed{}", last.as_deref().map(|l| format!(" (last: {l})")).unwrap_or_default())]
    WaitTimeout {
        /// The waypoint's namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The limit.
        timeout: Duration,
        /// Its Programmed condition when last seen, if any.
        last: Option<String>,
    },
    /// Any other refusal by the API server.
    #[error("cannot {verb} {resource}{target}: {} ({})", status.message, status.code)]
    Api {
        /// The API verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// ` "name" in namespace "ns"`, or empty.
        target: String,
        /// What the server returned.
        status: Box<Status>,
    },
    /// Any other client error (a response that does not parse, for example).
    #[error("cannot {verb} {resource}{target}")]
    Request {
        /// The API verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// ` "name" in namespace "ns"`, or empty.
        target: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The YAML could not be written.
    #[error("cannot write the Gateway as YAML")]
    Yaml(#[source] serde_yaml::Error),
    /// Writing to the output failed.
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

fn qualified(namespace: &str, names: &[String]) -> String {
    let all: Vec<String> = names.iter().map(|n| format!("{namespace}/{n}")).collect();
    all.join(", ")
}

/// The kinds of object the commands touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    Gateways,
    Namespaces,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Resource::Gateways => "gateways.gateway.networking.k8s.io",
            Resource::Namespaces => "namespaces",
        }
    }
}

/// One API call, described well enough to explain its failure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Op<'a> {
    pub verb: &'static str,
    pub resource: Resource,
    /// The namespace, for namespaced calls; `None` for cluster scope or all namespaces.
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl Op<'_> {
    fn target(&self) -> String {
        let mut target = String::new();
        if let Some(name) = self.name {
            target.push_str(&format!(" {name:?}"));
        }
        if let Some(namespace) = self.namespace {
            target.push_str(&format!(" in namespace {namespace:?}"));
        }
        target
    }

    /// Turns what the client returned into the error that names the cause.
    pub(crate) fn classify(&self, server: &str, err: kube::Error) -> Error {
        let status = match err {
            kube::Error::Api(status) => status,
            err @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => {
                return Error::Unreachable {
                    server: server.to_owned(),
                    source: err,
                };
            }
            source => {
                return Error::Request {
                    verb: self.verb,
                    resource: self.resource.as_str(),
                    target: self.target(),
                    source,
                };
            }
        };
        // A named object's 404 carries its name and kind in `details`; the 404 for a path the
        // server does not serve (an API group without its CRDs) has neither, or is plain text.
        let (missing_name, missing_kind) = status
            .details
            .as_ref()
            .map_or(("", ""), |d| (d.name.as_str(), d.kind.as_str()));
        match status.code {
            404 if missing_kind == "namespaces" && !missing_name.is_empty() => {
                Error::NamespaceNotFound(missing_name.to_owned())
            }
            404 if self.resource == Resource::Namespaces => {
                Error::NamespaceNotFound(self.name.unwrap_or_default().to_owned())
            }
            404 if missing_name.is_empty() => Error::GatewayApiMissing,
            404 => Error::WaypointNotFound {
                namespace: self.namespace.unwrap_or_default().to_owned(),
                names: vec![missing_name.to_owned()],
            },
            403 => Error::Forbidden {
                verb: self.verb,
                resource: self.resource.as_str(),
                target: self.target(),
                message: status.message,
            },
            _ => Error::Api {
                verb: self.verb,
                resource: self.resource.as_str(),
                target: self.target(),
                status,
            },
        }
    }
}
