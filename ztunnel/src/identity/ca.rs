//! A local certificate authority in Istio's plug-in CA layout.
//!
//! The folder holds `ca-cert.pem` (the signing certificate), `ca-key.pem` (its key),
//! `root-cert.pem` (the trust anchor) and `cert-chain.pem` (from the signing certificate up to
//! the root). Workload certificates are ECDSA P-256 with the SPIFFE URI as their only SAN.

use super::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// Errors of the local CA; each names the file or the identity concerned.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file of the CA folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file of the CA folder does not hold what it should.
    #[error("{path}: {what}")]
    BadFile { path: PathBuf, what: String },
    /// Signing a certificate failed.
    #[error("signing a certificate for {subject}: {source}")]
    Sign {
        subject: String,
        source: rcgen::Error,
    },
}

/// A signed workload certificate with its key and the chain up to (not including) the root.
#[derive(Debug)]
pub struct WorkloadCert {
    pub identity: Identity,
    /// Leaf first, then the intermediates of the CA's `cert-chain.pem` (the root excluded).
    pub chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCert {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// When the certificate has lived half its life and should be replaced.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }
}

/// The signing half of Istio's plug-in CA, loaded from a folder.
pub struct LocalCa {
    issuer: rcgen::Certificate,
    issuer_key: KeyPair,
    /// `cert-chain.pem` without the root: appended to every workload chain.
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("roots", &self.roots.len())
            .finish()
    }
}

fn read(dir: &Path, name: &str) -> Result<(PathBuf, String), CaError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok((path, s)),
        Err(source) => Err(CaError::Io { path, source }),
    }
}

fn certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| CaError::BadFile {
        path: path.to_owned(),
        what: format!("not PEM certificates: {e}"),
    })?;
    if certs.is_empty() {
        return Err(CaError::BadFile {
            path: path.to_owned(),
            what: "expected at least one PEM certificate, found none".into(),
        });
    }
    Ok(certs)
}

/// The CA's signing key from PEM: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`, as in
/// Istio's `samples/certs`) or SEC1 (`EC PRIVATE KEY`, as `openssl ecparam` writes). The
/// signer takes PKCS#8 only, so the other two are wrapped into it.
fn issuer_key(pem: &str) -> Result<KeyPair, String> {
    let expected = "expected a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)";
    let der =
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("{expected}: {e}"))?;
    let candidates = match &der {
        PrivateKeyDer::Pkcs8(k) => vec![k.secret_pkcs8_der().to_vec()],
        PrivateKeyDer::Pkcs1(k) => vec![pkcs8::wrap(pkcs8::RSA_ALGORITHM, k.secret_pkcs1_der())],
        // SEC1 does not always name its curve: try the ones a CA key may be on.
        PrivateKeyDer::Sec1(k) => [pkcs8::EC_P256_ALGORITHM, pkcs8::EC_P384_ALGORITHM]
            .iter()
            .map(|alg| pkcs8::wrap(alg, k.secret_sec1_der()))
            .collect(),
        _ => Vec::new(),
    };
    let mut last = format!("{expected}: unsupported key format");
    for pkcs8 in candidates {
        match KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8)) {
            Ok(key) => return Ok(key),
            Err(e) => last = format!("{expected}: {e}"),
        }
    }
    Err(last)
}

/// Just enough DER to put a PKCS#1 or SEC1 key into a PKCS#8 `PrivateKeyInfo` (RFC 5208).
mod pkcs8 {
    /// `AlgorithmIdentifier` contents: rsaEncryption, NULL parameters.
    pub const RSA_ALGORITHM: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    /// id-ecPublicKey on prime256v1.
    pub const EC_P256_ALGORITHM: &[u8] = &[
        0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
        0x3d, 0x03, 0x01, 0x07,
    ];
    /// id-ecPublicKey on secp384r1.
    pub const EC_P384_ALGORITHM: &[u8] = &[
        0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00,
        0x22,
    ];

    /// `PrivateKeyInfo { version 0, algorithm, privateKey OCTET STRING (key) }`.
    pub fn wrap(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
        let mut body = vec![0x02, 0x01, 0x00];
        tlv(&mut body, 0x30, algorithm);
        tlv(&mut body, 0x04, key);
        let mut out = Vec::with_capacity(body.len() + 6);
        tlv(&mut out, 0x30, &body);
        out
    }

    fn tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
        out.push(tag);
        let len = value.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(value);
    }
}

impl LocalCa {
    /// Loads the CA from `dir`; every file must be present and well formed.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let (cert_path, cert_pem) = read(dir, CA_CERT)?;
        let (key_path, key_pem) = read(dir, CA_KEY)?;
        let (root_path, root_pem) = read(dir, ROOT_CERT)?;
        let (chain_path, chain_pem) = read(dir, CERT_CHAIN)?;

        let issuer_key = issuer_key(&key_pem).map_err(|what| CaError::BadFile {
            path: key_path.clone(),
            what,
        })?;
        let params =
            CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| CaError::BadFile {
                path: cert_path.clone(),
                what: format!("expected a PEM CA certificate: {e}"),
            })?;
        let ca_der = certs(&cert_path, &cert_pem)?.remove(0);
        // Re-creating the issuer from its parameters and key gives the same subject and key
        // identifier, which is all that signing needs.
        let issuer = params
            .self_signed(&issuer_key)
            .map_err(|e| CaError::BadFile {
                path: key_path.clone(),
                what: format!("key does not fit {}: {e}", cert_path.display()),
            })?;
        let roots = certs(&root_path, &root_pem)?;
        let chain = certs(&chain_path, &chain_pem)?;
        if chain.first() != Some(&ca_der) {
            return Err(CaError::BadFile {
                path: chain_path,
                what: format!("expected to start with {CA_CERT}"),
            });
        }
        let intermediates = chain.into_iter().filter(|c| !roots.contains(c)).collect();
        Ok(Self {
            issuer,
            issuer_key,
            intermediates,
            roots,
        })
    }

    /// The trust bundle: the root certificates of `root-cert.pem`.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Signs a fresh ECDSA P-256 certificate for `identity`, valid for `ttl`.
    pub fn sign(&self, identity: &Identity, ttl: Duration) -> Result<WorkloadCert, CaError> {
        let subject = identity.to_string();
        let sign_err = |source| CaError::Sign {
            subject: subject.clone(),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let now = SystemTime::now();
        // A minute of slack for clocks that differ between nodes.
        let not_before = now - Duration::from_secs(60);
        let not_after = now + ttl;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(subject.clone().try_into().map_err(sign_err)?)];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer, &self.issuer_key)
            .map_err(sign_err)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(WorkloadCert {
            identity: identity.clone(),
            chain,
            key_pkcs8: key.serialize_der(),
            not_before,
            not_after,
        })
    }

    /// Writes a new self-signed root CA for `trust_domain` in the plug-in layout to `dir`
    /// (created if missing). For demos and tests; production CAs come from the operator.
    pub fn generate(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let subject = format!("root CA for {trust_domain}");
        let sign_err = |source| CaError::Sign {
            subject: subject.clone(),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        // A distinct name per CA, so that a certificate from another CA reads "unknown
        // issuer" rather than "bad signature".
        let nonce = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        dn.push(DnType::CommonName, format!("mesh root CA {nonce:x}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let cert = params.self_signed(&key).map_err(sign_err)?;
        let pem = cert.pem();
        for (name, body) in [
            (CA_CERT, pem.as_str()),
            (ROOT_CERT, pem.as_str()),
            (CERT_CHAIN, pem.as_str()),
            (CA_KEY, key.serialize_pem().as_str()),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, body).map_err(io(&path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_a_spiffe_certificate_that_chains_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::generate(dir.path(), "cluster.local").unwrap();
        let ca = LocalCa::load(dir.path()).unwrap();
        let id = Identity::new("cluster.local", "ns1", "sa1");
        let cert = ca.sign(&id, Duration::from_secs(3600)).unwrap();
        assert_eq!(cert.chain.len(), 1, "a root CA adds no intermediates");
        let ids = crate::tls::identities_of(&cert.chain[0]).unwrap();
        assert_eq!(ids, vec![id]);
        assert!(cert.refresh_at() > SystemTime::now());
    }

    /// Istio's sample CA keys are PKCS#1 RSA; `openssl ecparam` writes SEC1. A CA folder
    /// with either signs workload certificates that chain to its root.
    #[test]
    fn a_ca_key_in_pkcs1_or_sec1_form_signs() {
        for key_pem in [
            include_str!("testdata/rsa-pkcs1-key.pem"),
            include_str!("testdata/ec-sec1-key.pem"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let key = issuer_key(key_pem).unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let root = params.self_signed(&key).unwrap().pem();
            for name in [CA_CERT, ROOT_CERT, CERT_CHAIN] {
                std::fs::write(dir.path().join(name), &root).unwrap();
            }
            std::fs::write(dir.path().join(CA_KEY), key_pem).unwrap();
            let ca = LocalCa::load(dir.path()).unwrap();
            let id = Identity::new("cluster.local", "ns1", "sa1");
            let cert = ca.sign(&id, Duration::from_secs(3600)).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.roots()[0].clone()).unwrap();
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                crate::tls::provider(),
            )
            .build()
            .unwrap()
            .verify_client_cert(
                &cert.chain[0],
                &cert.chain[1..],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::generate(dir.path(), "cluster.local").unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let err = LocalCa::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ca-key.pem"), "{err}");
    }

    #[test]
    fn a_bad_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::generate(dir.path(), "cluster.local").unwrap();
        std::fs::write(dir.path().join(CA_KEY), "not a key").unwrap();
        let err = LocalCa::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("ca-key.pem") && err.contains("private key"),
            "{err}"
        );
    }
}
