//! A batch of any size sealed into TLS records for one `send`.

use std::io::Write as _;

use bytes::{Buf as _, BytesMut};

use super::LinkError;

/// Seals every byte of `plain` into TLS records appended to `sealed` (cleared first), leaving
/// `plain` empty.
///
/// rustls takes at most its buffer limit of plaintext (64 KiB by default) until `write_tls`
/// drains its records; past that, `write` returns 0, which `write_all` reports as `WriteZero`.
/// Writing the whole batch with `write_all` therefore failed every batch over 64 KiB (one 200 KB
/// alert, 300 alerts sent again after a reconnect), the connection was dropped, and the same
/// batch failed again on the next one, for ever. So plaintext goes in as much at a time as rustls
/// takes, and its records are drained into `sealed` after each piece: the whole batch still leaves
/// in one `send`.
pub fn seal(
    session: &mut rustls::ClientConnection,
    plain: &mut BytesMut,
    sealed: &mut Vec<u8>,
) -> Result<(), LinkError> {
    sealed.clear();
    loop {
        while session.wants_write() {
            session.write_tls(sealed)?;
        }
        if plain.is_empty() {
            return Ok(());
        }
        let taken = session.writer().write(plain)?;
        if taken == 0 {
            // Nothing buffered (drained above) and nothing taken: rustls will not take more.
            return Err(LinkError::Tls("the TLS session takes no more data".into()));
        }
        plain.advance(taken);
    }
}

#[cfg(test)]
mod tls_tests {
    use std::io::Read as _;
    use std::sync::Arc;

    use super::*;

    /// A client and a server session for `localhost`, handshake done, in memory.
    fn sessions() -> (rustls::ClientConnection, rustls::ServerConnection) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        while c.is_handshaking() || s.is_handshaking() {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().unwrap();
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        (c, s)
    }

    /// What the server reads of `records`.
    fn open(s: &mut rustls::ServerConnection, mut records: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        while !records.is_empty() {
            s.read_tls(&mut records).unwrap();
            let state = s.process_new_packets().unwrap();
            let at = plain.len();
            plain.resize(at + state.plaintext_bytes_to_read(), 0);
            s.reader().read_exact(&mut plain[at..]).unwrap();
        }
        plain
    }

    /// The bug behind the reconnect storm: rustls refuses plaintext past its 64 KiB buffer limit,
    /// so `write_all` of a whole batch fails. `seal` writes any size, in one buffer of records.
    #[test]
    fn batches_of_any_size_are_sealed_whole() {
        let (mut c, _) = sessions();
        let big = vec![7u8; 300 * 1024];
        let refused = c.writer().write_all(&big).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::WriteZero, "rustls's limit is what broke write_all");
        for size in [0, 1, 4, 16 * 1024, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 250 * 1024, 300 * 1200, 2 << 20] {
            let (mut c, mut s) = sessions();
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut plain = BytesMut::from(&data[..]);
            let mut sealed = Vec::new();
            seal(&mut c, &mut plain, &mut sealed).unwrap();
            assert!(plain.is_empty(), "{size}: everything taken");
            assert!(!c.wants_write(), "{size}: every record drained into the one buffer");
            assert_eq!(open(&mut s, &sealed), data, "{size}: the server reads exactly the batch");
        }
    }
}
