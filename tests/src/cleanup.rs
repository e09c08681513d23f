//! A process-wide list of clean-up actions, so that a Ctrl-C handler can undo what the
//! guards would have undone on drop.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

type Action = Box<dyn FnOnce() + Send>;

static ACTIONS: Mutex<BTreeMap<u64, Action>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Registered clean-up; runs its action on drop unless already run by [`run_all`].
pub struct Registration(u64);

/// Registers `action`; it runs when the returned value is dropped or [`run_all`] is called.
pub fn register(action: impl FnOnce() + Send + 'static) -> Registration {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    ACTIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, Box::new(action));
    Registration(id)
}

impl Drop for Registration {
    fn drop(&mut self) {
        let action = ACTIONS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
        if let Some(a) = action {
            a();
        }
    }
}

/// Runs every pending action, newest first (processes before the namespaces they run in).
pub fn run_all() {
    loop {
        let next = ACTIONS.lock().unwrap_or_else(|p| p.into_inner()).pop_last();
        match next {
            Some((_, a)) => a(),
            None => return,
        }
    }
}
