//! Loading the kubeconfig the way kubectl and istioctl do, and the client built from it.

use std::path::{Path, PathBuf};

use kube::Api;
use kube::api::{DynamicObject, ListParams};
use kube::config::{Config, KubeConfigOptions, Kubeconfig, KubeconfigError};

use crate::args::ClusterArgs;
use crate::error::{Error, Op, Resource};
use crate::gateway::{api_resource, is_waypoint};

/// A client for one cluster, with the namespace the command works in.
#[derive(Clone)]
pub struct Session {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
    /// The API server's URL, for errors that say which server could not be reached.
    pub server: String,
}

impl Session {
    /// The waypoints (Gateways of class istio-waypoint) of `namespace`, or of every namespace
    /// with `None`, among the Gateways `params` selects.
    ///
    /// # Errors
    /// The list's error, classified ([`Error::GatewayApiMissing`], [`Error::Forbidden`], ...).
    pub async fn waypoints(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
    ) -> Result<Vec<DynamicObject>, Error> {
        let resource = api_resource();
        let gateways: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let op = Op {
            verb: "list",
            resource: Resource::Gateways,
            namespace,
            name: None,
        };
        let list = gateways
            .list(params)
            .await
            .map_err(|e| op.classify(&self.server, e))?;
        Ok(list.items.into_iter().filter(is_waypoint).collect())
    }
}

/// Loads the kubeconfig named by `args` (or `$KUBECONFIG`, `~/.kube/config`, in-cluster) and
/// makes a client; nothing is sent to the server yet.
///
/// # Errors
/// [`Error::KubeconfigNotFound`], [`Error::NoKubeconfig`] (saying where it looked),
/// [`Error::Kubeconfig`] for one that cannot be used, [`Error::Client`].
pub async fn connect(args: &ClusterArgs) -> Result<Session, Error> {
    let config = load_config(args).await?;
    let server = config.cluster_url.to_string();
    let server = server.trim_end_matches('/').to_owned();
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|source| Error::Client {
        server: server.clone(),
        source,
    })?;
    Ok(Session {
        client,
        namespace,
        server,
    })
}

async fn load_config(args: &ClusterArgs) -> Result<Config, Error> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        cluster: None,
        user: None,
    };
    if let Some(path) = &args.kubeconfig {
        let kubeconfig = Kubeconfig::read_from(path).map_err(|e| match e {
            KubeconfigError::ReadConfig(io, _) if io.kind() == std::io::ErrorKind::NotFound => {
                Error::KubeconfigNotFound(path.clone())
            }
            source => Error::Kubeconfig {
                path: path.display().to_string(),
                source,
            },
        })?;
        return Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|source| Error::Kubeconfig {
                path: path.display().to_string(),
                source,
            });
    }
    let looked = default_locations();
    match Config::from_kubeconfig(&options).await {
        Ok(config) => Ok(config),
        // Only an absent kubeconfig lets the in-cluster service account stand in, as client-go.
        Err(err) if is_absent(&err) => {
            if args.context.is_none() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                Config::incluster().map_err(|_| Error::NoKubeconfig { looked })
            } else {
                Err(Error::NoKubeconfig { looked })
            }
        }
        Err(source) => Err(Error::Kubeconfig {
            path: looked,
            source,
        }),
    }
}

fn is_absent(err: &KubeconfigError) -> bool {
    match err {
        KubeconfigError::FindPath => true,
        KubeconfigError::ReadConfig(io, _) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Where kube (like client-go) looks: every file in `$KUBECONFIG`, else `~/.kube/config`.
fn default_locations() -> String {
    match std::env::var_os("KUBECONFIG") {
        Some(value) if !value.is_empty() => {
            format!("$KUBECONFIG ({})", value.to_string_lossy())
        }
        _ => {
            let home: Option<PathBuf> = std::env::var_os("HOME").map(PathBuf::from);
            let path = home.map_or_else(
                || Path::new("~/.kube/config").to_path_buf(),
                |h| h.join(".kube").join("config"),
            );
            format!("{} ($KUBECONFIG unset)", path.display())
        }
    }
}
