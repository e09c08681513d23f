//! The rules in force, and the task that re-reads the config folder when it changes. A folder
//! that fails to load is reported (file, object, field) and the previous rules keep serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use waypoint_rules::{ObjectRef, Rules};

/// The current rules, shared by every request.
#[derive(Debug, Default)]
pub struct RulesHandle(RwLock<Arc<Rules>>);

impl RulesHandle {
    pub fn new(rules: Rules) -> Self {
        Self(RwLock::new(Arc::new(rules)))
    }

    pub fn snapshot(&self) -> Arc<Rules> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, rules: Rules) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
    }
}

/// What the folder looks like: every file's name, size and modification time.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

/// Re-reads `dir` whenever a file in it changes.
pub async fn watch(dir: PathBuf, gateway: ObjectRef, rules: Arc<RulesHandle>, every: Duration) {
    let mut last = fingerprint(&dir);
    loop {
        tokio::time::sleep(every).await;
        let now = fingerprint(&dir);
        if now == last {
            continue;
        }
        last = now;
        match waypoint_rules::load_dir(&dir, &gateway) {
            Ok(r) => {
                tracing::info!(dir = %dir.display(), "rules changed; now serving the new rules");
                rules.replace(r);
            }
            Err(e) => {
                tracing::error!(error = %e, "rules rejected; the previous rules keep serving")
            }
        }
    }
}
