//! Keeps one fresh certificate per identity, re-signed at half-life.

use super::{CaError, Identity, LocalCa, WorkloadCert};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Hands out workload certificates. Connections already open keep the certificate they were
/// made with; new handshakes get the renewed one, so renewal drops nothing.
#[derive(Debug)]
pub struct CertManager {
    ca: LocalCa,
    ttl: Duration,
    certs: Mutex<HashMap<Identity, Arc<WorkloadCert>>>,
}

impl CertManager {
    pub fn new(ca: LocalCa, ttl: Duration) -> Self {
        Self {
            ca,
            ttl,
            certs: Mutex::new(HashMap::new()),
        }
    }

    pub fn roots(&self) -> &[rustls::pki_types::CertificateDer<'static>] {
        self.ca.roots()
    }

    /// The current certificate for `id`, signing a new one when none is held or the held one
    /// is past half its life.
    pub fn get(&self, id: &Identity) -> Result<Arc<WorkloadCert>, CaError> {
        let now = SystemTime::now();
        if let Some(c) = self.lock().get(id)
            && c.refresh_at() > now
        {
            return Ok(c.clone());
        }
        let fresh = Arc::new(self.ca.sign(id, self.ttl)?);
        tracing::info!(identity = %id, expires = ?fresh.not_after, "signed workload certificate");
        self.lock().insert(id.clone(), fresh.clone());
        Ok(fresh)
    }

    /// Renews every held certificate that is past half-life; returns the earliest next
    /// renewal time.
    pub fn renew_due(&self) -> Option<SystemTime> {
        let ids: Vec<Identity> = self.lock().keys().cloned().collect();
        for id in &ids {
            if let Err(e) = self.get(id) {
                tracing::error!(identity = %id, error = %e, "certificate renewal failed");
            }
        }
        self.lock().values().map(|c| c.refresh_at()).min()
    }

    /// A snapshot of the held certificates, for `/config_dump`.
    pub fn snapshot(&self) -> Vec<Arc<WorkloadCert>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.identity.cmp(&b.identity));
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Arc<WorkloadCert>>> {
        // A poisoned cache only means a panic elsewhere; the map itself stays consistent.
        self.certs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_life() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::generate(dir.path(), "cluster.local").unwrap();
        let ca = LocalCa::load(dir.path()).unwrap();
        let id = Identity::new("cluster.local", "a", "b");
        // The CA backdates by 60 s, so a 30 s life is past half at once: every get renews.
        let m = CertManager::new(ca, Duration::from_secs(30));
        let first = m.get(&id).unwrap();
        let second = m.get(&id).unwrap();
        assert_ne!(first.chain[0], second.chain[0]);
    }

    #[test]
    fn keeps_a_fresh_certificate() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::generate(dir.path(), "cluster.local").unwrap();
        let ca = LocalCa::load(dir.path()).unwrap();
        let id = Identity::new("cluster.local", "a", "b");
        let m = CertManager::new(ca, Duration::from_secs(24 * 3600));
        assert_eq!(m.get(&id).unwrap().chain[0], m.get(&id).unwrap().chain[0]);
    }
}
