//! TLS towards edgeHub: which certificates the module trusts (a CA file, the security daemon's
//! trust bundle, or the system roots) and which cipher suites it offers (ring's, trimmed on 32-bit
//! ARM to the ones that are cheap there).

use std::sync::Arc;

use crate::config::{Config, Credentials, Trust};

/// The PEM certificates to trust, for a trust choice (the workload's bundle is fetched).
pub async fn trust_pem(config: &Config, trust: &Trust) -> Result<Option<Vec<u8>>, String> {
    match trust {
        Trust::SystemRoots => Ok(None),
        Trust::CaFile(path) => std::fs::read(path)
            .map(Some)
            .map_err(|e| format!("EdgeModuleCACertificateFile: cannot read {}: {e}", path.display())),
        Trust::WorkloadBundle => match &config.credentials {
            Credentials::Workload(w) => {
                w.trust_bundle().await.map(|pem| Some(pem.into_bytes())).map_err(|e| e.to_string())
            }
            Credentials::Key(_) => Err("the trust bundle comes from the workload API, which is not configured".into()),
        },
    }
}

/// The rustls client configuration trusting `pem` (or the system roots), with the ring provider.
pub fn tls_config(pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match pem {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("CA certificates: not PEM: {e}"))?;
            if certs.is_empty() {
                return Err("CA certificates: no PEM certificate found".into());
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("CA certificates: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("no system root certificates found: set EdgeModuleCACertificateFile".into());
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// ring's cipher suites; on 32-bit ARM, which has no AES instructions, only ChaCha20-Poly1305
/// and AES-128-GCM, in that order. Measured on armv7 (docs/performance.md, "TLS cipher suites"):
/// AES-256-GCM, which ring offers first and OpenSSL-based servers prefer, costs the most there.
/// Leaving it out matters more than the order: mosquitto (and OpenSSL servers set to their own
/// preference) choose by the server's order, which puts ChaCha20-Poly1305 before AES-128-GCM.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if cfg!(target_arch = "arm") {
        provider.cipher_suites.retain(|s| is_chacha(s.suite()) || is_aes128(s.suite()));
        provider.cipher_suites.sort_by_key(|s| !is_chacha(s.suite()));
    }
    provider
}

fn is_aes128(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

fn is_chacha(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}
