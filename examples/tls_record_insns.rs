//! What rustls alone costs per TLS record, for `tools/arm-insn-count` to count on armv7: an
//! in-memory client (the module's ring provider, offering one cipher suite) and server, their
//! handshake done, then N records of SIZE bytes sealed by the client and opened by the server.
//! A run of N less a run of 0 is N records' cost, the handshake cancelling;
//! `scripts/arm-tls-record-insns.sh` prints the table (issue 21: how low TLS can go per message).
//!
//!     tls_record_insns SUITE SIZE N [both|seal|aead]
//!
//! SUITE: `TLS13_CHACHA20_POLY1305_SHA256` or `TLS13_AES_128_GCM_SHA256`, or a TLS 1.2 suite
//! such as `TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256` (any suite the module offers on the
//! target, by its rustls name). `both` (the default) seals and opens every record; `seal` only
//! seals, the records dropped unread, so `both` less `seal` is what opening costs; `aead` is the
//! suite's cipher alone (ring's AEAD sealing and opening a TLS 1.3 record's plaintext, its header
//! as the associated data): the part of a record no record layer can save.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConnection, ServerConnection};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tls_record_insns SUITE SIZE N [both|seal|aead]";
    let (Some(suite), Some(size), Some(n)) = (
        args.get(1),
        args.get(2).and_then(|v| v.parse::<usize>().ok()),
        args.get(3).and_then(|v| v.parse::<usize>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let open = match args.get(4).map_or("both", String::as_str) {
        "both" => true,
        "seal" => false,
        "aead" => {
            println!("{}", aead(suite, size, n));
            return;
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let (mut c, mut s) = pair(suite);
    let negotiated = c.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
    assert_eq!(negotiated.as_deref(), Some(suite.as_str()), "the suite offered is the one negotiated");
    let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let (mut sealed, mut opened) = (Vec::new(), vec![0u8; size.max(1)]);
    let mut total = 0;
    for _ in 0..n {
        seal(&mut c, &plain, &mut sealed);
        total += sealed.len();
        if open {
            total += open_all(&mut s, &sealed, &mut opened);
        }
    }
    println!("{total}");
}

/// `plain` as one record, into `sealed` (cleared first).
fn seal(c: &mut ClientConnection, plain: &[u8], sealed: &mut Vec<u8>) {
    c.writer().write_all(plain).unwrap();
    sealed.clear();
    while c.wants_write() {
        c.write_tls(sealed).unwrap();
    }
}

/// The plaintext bytes the server reads from `sealed`, into `buf`.
fn open_all(s: &mut ServerConnection, mut sealed: &[u8], buf: &mut [u8]) -> usize {
    let mut got = 0;
    while !sealed.is_empty() {
        s.read_tls(&mut sealed).unwrap();
        let k = s.process_new_packets().unwrap().plaintext_bytes_to_read();
        s.reader().read_exact(&mut buf[..k]).unwrap();
        got += k;
    }
    got
}

/// N records of `size` bytes (and the content type byte) sealed and opened with ring's AEAD
/// for `suite`, a fresh nonce each, the 5-byte record header as associated data.
fn aead(suite: &str, size: usize, n: usize) -> usize {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, CHACHA20_POLY1305};
    let algorithm = if suite.contains("CHACHA20") { &CHACHA20_POLY1305 } else { &AES_128_GCM };
    let key = LessSafeKey::new(UnboundKey::new(algorithm, &[7u8; 32][..algorithm.key_len()]).unwrap());
    let plain: Vec<u8> = (0..=size).map(|i| (i % 251) as u8).collect();
    let mut record = Vec::with_capacity(plain.len() + 16);
    let mut total = 0;
    for i in 0..n as u64 {
        let header = [23, 3, 3, 0, 0];
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        record.clear();
        record.extend_from_slice(&plain);
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut record).unwrap();
        total += key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut record).unwrap().len();
    }
    total
}

/// A client offering only `suite` (the module's provider otherwise) and a server for
/// `localhost`, handshake done and the server's session tickets read.
fn pair(suite: &str) -> (ClientConnection, ServerConnection) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
        .unwrap();
    let mut provider = edgefilter::tls::crypto_provider();
    provider.cipher_suites.retain(|s| format!("{:?}", s.suite()) == suite);
    if provider.cipher_suites.is_empty() {
        eprintln!("tls_record_insns: the module offers no suite {suite} on this target");
        std::process::exit(2);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    while c.is_handshaking() || s.is_handshaking() || s.wants_write() {
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
