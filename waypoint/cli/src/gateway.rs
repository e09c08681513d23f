//! The waypoint Gateway: how it is built, and what is read back from one.

use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use crate::args::{TrafficType, WaypointArgs};
use crate::error::Error;

/// The GatewayClass istiod deploys waypoints for.
pub const GATEWAY_CLASS: &str = "istio-waypoint";
/// Label: the traffic a waypoint handles.
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// Label: the waypoint a namespace (or service, or pod) uses.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Label: the Istio revision.
pub const REVISION: &str = "istio.io/rev";
/// Label: ambient enrollment.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

/// `gateway.networking.k8s.io/v1` `Gateway`, without a CRD crate.
pub(crate) fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"),
        "gateways",
    )
}

/// What a waypoint Gateway says; [`Waypoint::gateway`] turns it into the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waypoint {
    /// The Gateway's name.
    pub name: String,
    /// Its namespace; `None` leaves it out (as `istioctl waypoint generate` without `-n`).
    pub namespace: Option<String>,
    /// `istio.io/waypoint-for`, when given.
    pub traffic_type: Option<TrafficType>,
    /// `istio.io/rev`, when given.
    pub revision: Option<String>,
}

impl Waypoint {
    /// Checks the name as istioctl does (`none` is reserved) and as the API server will
    /// (a DNS-1123 subdomain, here also a label value so that `use-waypoint` can name it).
    ///
    /// # Errors
    /// [`Error::InvalidName`].
    pub fn from_args(args: &WaypointArgs, namespace: Option<String>) -> Result<Self, Error> {
        // An empty name means the default, as in istioctl.
        let name = if args.name.is_empty() {
            "waypoint".to_owned()
        } else {
            args.name.clone()
        };
        check_name(&name)?;
        Ok(Waypoint {
            name,
            namespace,
            traffic_type: args.traffic_type,
            revision: args.revision.clone(),
        })
    }

    /// The Gateway object, keys as Kubernetes spells them.
    pub fn gateway(&self) -> Value {
        let mut metadata = serde_json::Map::new();
        metadata.insert("name".into(), json!(self.name));
        if let Some(namespace) = &self.namespace {
            metadata.insert("namespace".into(), json!(namespace));
        }
        let mut labels = serde_json::Map::new();
        if let Some(traffic) = self.traffic_type {
            labels.insert(WAYPOINT_FOR.into(), json!(traffic.as_str()));
        }
        if let Some(revision) = &self.revision {
            labels.insert(REVISION.into(), json!(revision));
        }
        if !labels.is_empty() {
            metadata.insert("labels".into(), Value::Object(labels));
        }
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": metadata,
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        })
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    let invalid = |why| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            why,
        })
    };
    if name == "none" {
        return invalid("'none' is a reserved value");
    }
    if name.len() > 63 {
        return invalid("longer than 63 characters");
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok_chars || !ok_ends {
        return invalid(
            "must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
        );
    }
    Ok(())
}

/// A status condition as the Gateway reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Condition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// `status.conditions`, in the order the controller wrote them.
pub(crate) fn conditions(gw: &DynamicObject) -> Vec<Condition> {
    let text = |c: &Value, key: &str| c.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    gw.data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|all| {
            all.iter()
                .map(|c| Condition {
                    type_: text(c, "type"),
                    status: text(c, "status"),
                    reason: text(c, "reason"),
                    message: text(c, "message"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `Programmed` condition, if the controller has written one.
pub(crate) fn programmed(gw: &DynamicObject) -> Option<Condition> {
    conditions(gw).into_iter().find(|c| c.type_ == "Programmed")
}

/// Whether a Gateway is a waypoint (of class istio-waypoint).
pub(crate) fn is_waypoint(gw: &DynamicObject) -> bool {
    gw.data
        .pointer("/spec/gatewayClassName")
        .and_then(Value::as_str)
        == Some(GATEWAY_CLASS)
}

/// A label of the Gateway, if set.
pub(crate) fn label<'a>(gw: &'a DynamicObject, key: &str) -> Option<&'a str> {
    gw.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str) -> WaypointArgs {
        WaypointArgs {
            name: name.to_owned(),
            traffic_type: None,
            revision: None,
        }
    }

    #[test]
    fn names_checked() {
        assert!(Waypoint::from_args(&args("none"), None).is_err());
        assert!(Waypoint::from_args(&args("Way"), None).is_err());
        assert!(Waypoint::from_args(&args("-a"), None).is_err());
        assert!(Waypoint::from_args(&args(&"a".repeat(64)), None).is_err());
        let default = Waypoint::from_args(&args(""), None);
        assert_eq!(default.map(|w| w.name).ok().as_deref(), Some("waypoint"));
        assert!(Waypoint::from_args(&args("reviews-v1.waypoint"), None).is_ok());
    }
}
