//! `waypoint generate`: the Gateway as the YAML `istioctl waypoint generate` prints.

use serde_json::Value;

use crate::error::Error;
use crate::gateway::Waypoint;

/// The waypoint's Gateway as YAML, keys sorted as Go's `sigs.k8s.io/yaml` sorts them, so that
/// the output is istioctl's byte for byte.
///
/// # Errors
/// [`Error::Yaml`] (not expected: every value is a string or a number).
pub fn generate(waypoint: &Waypoint) -> Result<String, Error> {
    serde_yaml::to_string(&sorted(&waypoint.gateway())).map_err(Error::Yaml)
}

/// Whatever map type serde_json was built with, the YAML gets its keys in sorted order.
fn sorted(value: &Value) -> serde_yaml::Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_yaml::Mapping::new();
            for key in keys {
                if let Some(v) = map.get(key) {
                    out.insert(serde_yaml::Value::String(key.clone()), sorted(v));
                }
            }
            serde_yaml::Value::Mapping(out)
        }
        Value::Array(items) => serde_yaml::Value::Sequence(items.iter().map(sorted).collect()),
        Value::String(s) => serde_yaml::Value::String(s.clone()),
        Value::Number(n) => match n.as_u64() {
            Some(u) => serde_yaml::Value::Number(u.into()),
            None => serde_yaml::Value::String(n.to_string()),
        },
        Value::Bool(b) => serde_yaml::Value::Bool(*b),
        Value::Null => serde_yaml::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::TrafficType;

    #[test]
    fn as_istioctl_prints_it() {
        let waypoint = Waypoint {
            name: "waypoint".into(),
            namespace: Some("default".into()),
            traffic_type: Some(TrafficType::Service),
            revision: None,
        };
        let expected = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  labels:
    istio.io/waypoint-for: service
  name: waypoint
  namespace: default
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
";
        assert_eq!(generate(&waypoint).ok().as_deref(), Some(expected));
    }

    #[test]
    fn no_labels_no_namespace_unless_given() {
        let waypoint = Waypoint {
            name: "123".into(),
            namespace: None,
            traffic_type: None,
            revision: None,
        };
        let yaml = generate(&waypoint).unwrap_or_default();
        assert!(!yaml.contains("labels"), "{yaml}");
        assert!(!yaml.contains("namespace"), "{yaml}");
        // A numeric-looking name stays a string.
        assert!(yaml.contains("name: '123'"), "{yaml}");
    }
}
