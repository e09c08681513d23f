//! `waypoint generate` checked against the Gateway API's own schema for
//! `gateway.networking.k8s.io/v1` `Gateway` (see `tests/schema/README.md` for where it comes
//! from), validated as `kubectl apply --validate=strict` would: unknown fields rejected.

use serde_json::{Value, json};
use waypoint_cli::{TrafficType, Waypoint, generate};

/// The vendored schema with every object that lists its properties closed to others, as the API
/// server's strict field validation treats a structural CRD schema.
fn validator() -> jsonschema::Validator {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/schema/gateway.networking.k8s.io_v1_gateway.json"
    );
    let text = std::fs::read_to_string(file).expect("schema");
    let mut schema: Value = serde_json::from_str(&text).expect("schema JSON");
    close_objects(&mut schema);
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, v) in map.iter_mut() {
                // `properties` holds names, not schemas: recurse into each schema under it.
                if key == "properties" {
                    if let Value::Object(props) = v {
                        props.values_mut().for_each(close_objects);
                    }
                } else {
                    close_objects(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

fn errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn generated(traffic_type: Option<TrafficType>, namespace: Option<&str>) -> Value {
    let waypoint = Waypoint {
        name: "waypoint".into(),
        namespace: namespace.map(str::to_owned),
        traffic_type,
        revision: Some("canary".into()),
    };
    let yaml = generate(&waypoint).expect("generate");
    serde_yaml::from_str(&yaml).expect("generate prints YAML")
}

#[test]
fn every_generated_variant_is_a_valid_gateway() {
    let validator = validator();
    let kinds = [
        None,
        Some(TrafficType::Service),
        Some(TrafficType::Workload),
        Some(TrafficType::All),
        Some(TrafficType::None),
    ];
    for traffic in kinds {
        for ns in [None, Some("default")] {
            let doc = generated(traffic, ns);
            assert_eq!(errors(&validator, &doc), Vec::<String>::new(), "{doc}");
        }
    }
}

/// A mistake made in a generated Gateway.
type Breaks = fn(&mut Value);

/// The check has teeth: each of these small mistakes in the output is rejected.
#[test]
fn the_schema_rejects_what_a_wrong_generate_would_print() {
    let validator = validator();
    let good = generated(Some(TrafficType::Service), Some("default"));
    let broken: [(&str, Breaks); 9] = [
        ("protocol not a protocol name", |d| {
            d["spec"]["listeners"][0]["protocol"] = json!("HB ONE")
        }),
        ("port out of range", |d| {
            d["spec"]["listeners"][0]["port"] = json!(150080)
        }),
        ("port as a string", |d| {
            d["spec"]["listeners"][0]["port"] = json!("15008")
        }),
        ("no gatewayClassName", |d| {
            d["spec"]
                .as_object_mut()
                .map(|s| s.remove("gatewayClassName"));
        }),
        ("no listeners", |d| d["spec"]["listeners"] = json!([])),
        ("listener without a protocol", |d| {
            d["spec"]["listeners"][0]
                .as_object_mut()
                .map(|l| l.remove("protocol"));
        }),
        ("unknown spec field", |d| d["spec"]["listener"] = json!([])),
        ("unknown metadata field", |d| {
            d["metadata"]["label"] = json!({})
        }),
        ("wrong apiVersion", |d| {
            d["apiVersion"] = json!("gateway.networking.k8s.io/v1beta2")
        }),
    ];
    for (what, breaks) in broken {
        let mut doc = good.clone();
        breaks(&mut doc);
        assert!(
            !errors(&validator, &doc).is_empty(),
            "schema accepted a Gateway with {what}: {doc}"
        );
    }
}
