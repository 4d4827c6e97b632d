//! `config`'s tests: handshakes between the rustls configurations each side of the edge
//! builds (no sockets), on certificates the dev PKI makes; above `dev` for the same reason
//! as `load`'s.

use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::server::ServerConfig;
use rustls::version::TLS12;
use rustls::RootCertStore;

use crate::tls::config::*;
use crate::tls::dev::{self, DevNames, DevPki, DevRole, CLIENT_NAME};
use crate::tls::error::TlsError;
use crate::tls::load::CertifiedKeyMaterial;
use crate::tls::load::{load_cert, load_roots};
use rustls::pki_types::ServerName;
use rustls::{
    CertificateError, ClientConnection, ConnectionCommon, Error, HandshakeKind, ProtocolVersion,
    ServerConnection,
};
use std::io::{Read, Write};

fn names() -> DevNames {
    DevNames {
        external: vec!["sip.example.test".into(), "127.0.0.1".into()],
        internal: vec!["edge-int.example.test".into()],
        director: vec!["director.example.test".into()],
    }
}

fn new_pki() -> (tempfile::TempDir, DevPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = dev::generate(dir.path(), &names()).unwrap();
    (dir, pki)
}

fn material(pki: &DevPki, role: DevRole) -> CertifiedKeyMaterial {
    load_cert(&pki.source(role), None, role).unwrap()
}

fn roots(pki: &DevPki) -> RootCertStore {
    load_roots(&pki.ca_source(), None).unwrap()
}

#[derive(Debug)]
enum Failed {
    Client(Error),
    Server(Error),
}

/// Moves bytes both ways until neither side has anything to say, surfacing the first
/// side that fails. No sockets.
fn pump(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), Failed> {
    for _ in 0..32 {
        let to_server = deliver(c, s).map_err(Failed::Server)?;
        let to_client = deliver(s, c).map_err(Failed::Client)?;
        if !to_server && !to_client {
            return Ok(());
        }
    }
    panic!("handshake did not settle");
}

/// Everything `from` has to send, read and processed by `to`: whether there was anything,
/// or `to`'s error.
fn deliver<A, B>(
    from: &mut ConnectionCommon<A>,
    to: &mut ConnectionCommon<B>,
) -> Result<bool, Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = buf.as_slice();
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets()?;
    }
    Ok(!buf.is_empty())
}

fn connect(
    ccfg: &Arc<ClientConfig>,
    scfg: &Arc<ServerConfig>,
    name: &str,
) -> (ClientConnection, ServerConnection, Result<(), Failed>) {
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let mut c = ClientConnection::new(ccfg.clone(), server_name).unwrap();
    let mut s = ServerConnection::new(scfg.clone()).unwrap();
    let r = pump(&mut c, &mut s);
    (c, s, r)
}

/// Sends a line client → server through the TLS session and reads it back.
fn exchange(c: &mut ClientConnection, s: &mut ServerConnection) {
    let msg = b"OPTIONS sip:edge SIP/2.0\r\n\r\n";
    c.writer().write_all(msg).unwrap();
    pump(c, s).unwrap();
    let mut got = vec![0; msg.len()];
    s.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, msg);
}

#[test]
fn external_serves_clients_trusting_the_dev_ca() {
    let (_d, pki) = new_pki();
    let scfg = external_server_config(material(&pki, DevRole::External), None).unwrap();
    let ccfg = client_config_trusting(roots(&pki), None).unwrap();

    let (mut c, mut s, r) = connect(&ccfg, &scfg, "sip.example.test");
    r.unwrap();
    assert_eq!(c.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    exchange(&mut c, &mut s);
    // No client certificate on this side, and the server's SANs are what the client sees.
    assert_eq!(peer_identity(&s), None);
    let id = peer_identity(&c).unwrap();
    assert_eq!(id.dns_names, vec!["sip.example.test".to_owned()]);
    assert!(id.has_dns_name("SIP.example.test"));

    // An IP SAN verifies too (the loopback default dials 127.0.0.1).
    connect(&ccfg, &scfg, "127.0.0.1").2.unwrap();

    // A name the certificate does not carry is refused by the client.
    let r = connect(&ccfg, &scfg, "other.example.test").2;
    assert!(
        matches!(
            r,
            Err(Failed::Client(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )))
        ),
        "{r:?}"
    );
}

#[test]
fn external_speaks_tls12_and_resumes_both_versions() {
    let (_d, pki) = new_pki();
    let scfg = external_server_config(material(&pki, DevRole::External), None).unwrap();

    // TLS 1.3: tickets.
    let ccfg = client_config_trusting(roots(&pki), None).unwrap();
    let (_, _, r) = connect(&ccfg, &scfg, "sip.example.test");
    r.unwrap();
    let (c, _, r) = connect(&ccfg, &scfg, "sip.example.test");
    r.unwrap();
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));

    // TLS 1.2 only client.
    let tls12 = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&TLS12])
            .unwrap()
            .with_root_certificates(roots(&pki))
            .with_no_client_auth(),
    );
    let (mut c, mut s, r) = connect(&tls12, &scfg, "sip.example.test");
    r.unwrap();
    assert_eq!(c.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
    exchange(&mut c, &mut s);
    let (c, _, r) = connect(&tls12, &scfg, "sip.example.test");
    r.unwrap();
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[test]
fn internal_requires_a_client_certificate_from_the_ca() {
    let (_d, pki) = new_pki();
    let scfg = internal_server_config(material(&pki, DevRole::Internal), roots(&pki)).unwrap();

    // No certificate: the server refuses. In TLS 1.3 the client's side of the handshake
    // has already finished; it learns of the rejection only when it next reads.
    let anon = client_config_trusting(roots(&pki), None).unwrap();
    let mut c = ClientConnection::new(
        anon.clone(),
        ServerName::try_from("edge-int.example.test").unwrap(),
    )
    .unwrap();
    let mut s = ServerConnection::new(scfg.clone()).unwrap();
    let r = pump(&mut c, &mut s);
    assert!(
        matches!(r, Err(Failed::Server(Error::NoCertificatesPresented))),
        "{r:?}"
    );
    assert!(!c.is_handshaking());
    let mut alert = Vec::new();
    while s.wants_write() {
        s.write_tls(&mut alert).unwrap();
    }
    c.read_tls(&mut alert.as_slice()).unwrap();
    assert!(matches!(
        c.process_new_packets(),
        Err(Error::AlertReceived(_))
    ));

    // A certificate from another CA (same names, different PKI): refused. Both dev CAs
    // share a subject, so webpki finds the wrong issuer and reports a bad signature.
    let (_d2, other) = new_pki();
    let stranger =
        client_config_trusting(roots(&pki), Some(material(&other, DevRole::Client))).unwrap();
    let r = connect(&stranger, &scfg, "edge-int.example.test").2;
    assert!(
        matches!(
            r,
            Err(Failed::Server(Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            )))
        ),
        "{r:?}"
    );

    // The dev client certificate: accepted, and its SAN is the peer identity.
    let client =
        client_config_trusting(roots(&pki), Some(material(&pki, DevRole::Client))).unwrap();
    let (mut c, mut s, r) = connect(&client, &scfg, "edge-int.example.test");
    r.unwrap();
    exchange(&mut c, &mut s);
    assert_eq!(
        peer_identity(&s),
        Some(PeerIdentity {
            dns_names: vec![CLIENT_NAME.to_owned()]
        })
    );
    assert_eq!(
        peer_identity(&c).unwrap().dns_names,
        vec!["edge-int.example.test".to_owned()]
    );
}

#[test]
fn pool_client_reaches_a_director_stub() {
    let (_d, pki) = new_pki();
    let director =
        server_config_requiring_client(material(&pki, DevRole::Director), roots(&pki)).unwrap();
    let edge = pool_client_config(material(&pki, DevRole::Internal), roots(&pki)).unwrap();
    let (mut c, mut s, r) = connect(&edge, &director, "director.example.test");
    r.unwrap();
    exchange(&mut c, &mut s);
    assert!(peer_identity(&s)
        .unwrap()
        .has_dns_name("edge-int.example.test"));
    assert!(peer_identity(&c)
        .unwrap()
        .has_dns_name("director.example.test"));

    // The Director is verified by name: the edge's own internal name is not the pool's.
    let r = connect(&edge, &director, "edge-int.example.test").2;
    assert!(
        matches!(r, Err(Failed::Client(Error::InvalidCertificate(_)))),
        "{r:?}"
    );
}

#[test]
fn empty_trust_stores_are_refused() {
    let (_d, pki) = new_pki();
    assert!(matches!(
        internal_server_config(material(&pki, DevRole::Internal), RootCertStore::empty()),
        Err(TlsError::NoTrustAnchors)
    ));
    assert!(matches!(
        client_config_trusting(RootCertStore::empty(), None),
        Err(TlsError::NoTrustAnchors)
    ));
}

#[test]
fn mismatched_material_is_a_config_error() {
    let (_d, pki) = new_pki();
    let mut m = material(&pki, DevRole::External);
    m.key = material(&pki, DevRole::Internal).key;
    assert!(matches!(
        external_server_config(m, None),
        Err(TlsError::Config { .. })
    ));
}

#[test]
fn servers_choose_aes_128_gcm_sha256_even_when_the_client_lists_aes_256_first() {
    // rustls's and OpenSSL's clients list AES-256-GCM/SHA-384 first; its transcript hash
    // costs the edge more (see `provider`). Both servers choose by their own order.
    let (_d, pki) = new_pki();
    let stock = rustls::crypto::aws_lc_rs::default_provider();
    assert_eq!(
        stock.cipher_suites.first().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384),
        "the test needs a client that prefers AES-256"
    );
    for version in [&rustls::version::TLS13, &TLS12] {
        let client = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(stock.clone()))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots(&pki))
                .with_no_client_auth(),
        );
        let external = external_server_config(material(&pki, DevRole::External), None).unwrap();
        let (c, _, r) = connect(&client, &external, "sip.example.test");
        r.unwrap();
        let suite = c.negotiated_cipher_suite().map(|s| s.suite());
        let expected = if version.version == ProtocolVersion::TLSv1_3 {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        };
        assert_eq!(suite, Some(expected), "{:?}", version.version);
    }
    // The internal listener too (mutual TLS, the pool's client certificate).
    let internal = internal_server_config(material(&pki, DevRole::Internal), roots(&pki)).unwrap();
    let director = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(stock))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(&pki))
            .with_client_auth_cert(
                material(&pki, DevRole::Director).chain,
                material(&pki, DevRole::Director).key,
            )
            .unwrap(),
    );
    let (c, _, r) = connect(&director, &internal, "edge-int.example.test");
    r.unwrap();
    assert_eq!(
        c.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}

/// A library that builds its own rustls client (redis-rs for `rediss://`) finds the edge's
/// provider as the process default: the tree has two providers, and rustls would pick
/// neither by itself (a panic at the first `rediss://` connection).
#[test]
fn the_edges_provider_is_the_process_default_for_libraries() {
    let ours = provider();
    let default = rustls::crypto::CryptoProvider::get_default().expect("a process default");
    assert_eq!(
        default.cipher_suites.first().map(|s| s.suite()),
        ours.cipher_suites.first().map(|s| s.suite())
    );
    let _ = ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
}

#[test]
fn a_client_that_asks_for_the_post_quantum_hybrid_gets_it() {
    let (_d, pki) = new_pki();
    let pq = rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(pq))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&pki))
            .with_no_client_auth(),
    );
    let external = external_server_config(material(&pki, DevRole::External), None).unwrap();
    let (c, _, _) = connect(&client, &external, "sip.example.test");
    assert_eq!(
        c.negotiated_key_exchange_group().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
}
