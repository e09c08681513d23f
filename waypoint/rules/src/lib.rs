//! The waypoint's L7 rules, read from a folder of Kubernetes YAML into one [`Rules`] model
//! that the proxy enforces.
//!
//! # Sources
//!
//! - Gateway API `HTTPRoute` attached to a Service or to this waypoint's Gateway;
//! - Istio `VirtualService`, `DestinationRule` and `AuthorizationPolicy` (with `targetRefs`);
//! - Gateway API `ReferenceGrant`, for HTTPRoute backends in other namespaces.
//!
//! Every field we do not enforce is refused by name: a rule is never silently weakened. Each
//! source's module documents what it accepts, ignores (fields with no effect on a waypoint)
//! and refuses.
//! Other kinds (Service, Gateway, Deployment...) are skipped.
//!
//! # Use
//!
//! [`load_dir`] at start-up (and on change); then per request [`Rules::route`] and
//! [`Rules::authorize`].
//!
//! # Errors
//!
//! [`RulesError`] names the file and line, the object (`kind namespace/name`) and the field
//! path (`spec.rules[0].matches[1].path.value`).
#![forbid(unsafe_code)]

mod authorization;
mod authorize;
mod build;
mod destinationrule;
mod duration;
mod error;
mod fields;
mod httproute;
mod load;
mod matching;
pub mod model;
mod referencegrant;
mod virtualservice;

#[cfg(test)]
mod tests;

pub use authorize::{Denied, DenyReason};
pub use error::{Conflict, InvalidField, RulesError};
pub use load::{load_dir, load_str};
pub use model::*;
