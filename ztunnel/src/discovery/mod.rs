//! Sources of state. Today: Istio's local YAML file (`LOCAL_XDS_PATH`).

pub mod local;
