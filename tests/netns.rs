//! The DMZ deployment in network namespaces: three namespaces play the Internet (a remote
//! user, a media peer, and a partner organisation's edge and Director), the DMZ host
//! (sipedge with two veth interfaces, IP forwarding off) and the internal network (the
//! Director and an internal media client), on documentation ranges that exist only inside
//! them: 203.0.113.0/24 outside, 198.51.100.0/24 inside.
//!
//! The edge is the real binary; the other parts are this test binary run again inside a
//! namespace as one `role_*` test (ignored unless `SIPEDGE_NETNS_ROLE` names it). Each
//! proven property is printed. Everything is torn down at the end, on failure too. Skipped,
//! with a message, where network namespaces cannot be made (not root, no `ip`).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::netns::{bed_or_skip, run, DmzBed};
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sipedge");
/// The Internet side: the remote user and the media peer.
const INET_IP: &str = "203.0.113.10";
/// The edge's external interface.
const EXT_IP: &str = "203.0.113.1";
/// The edge's internal interface.
const INT_IP: &str = "198.51.100.1";
/// The Director and the internal media client.
const LAN_IP: &str = "198.51.100.10";
/// A partner organisation on the Internet: its edge, and its Director behind it.
const PARTNER_EDGE_IP: &str = "203.0.113.20";
const PARTNER_INT_IP: &str = "203.0.113.21";
const PARTNER_FQDN: &str = "edge.b.test";
const PARTNER_DOMAIN: &str = "b.test";

/// Three namespaces and two veth pairs, deleted on drop.
struct Bed {
    inet: String,
    dmz: String,
    int: String,
    bed: DmzBed,
}

impl Bed {
    fn up() -> Result<Bed, String> {
        let tag = format!("se{}", std::process::id() % 100_000);
        // The partner's addresses share the Internet side's interface.
        let bed = DmzBed::up(
            &tag,
            &[INET_IP, PARTNER_EDGE_IP, PARTNER_INT_IP],
            (EXT_IP, INT_IP),
            &[LAN_IP],
        )?;
        // No routing between the two zones on the DMZ host.
        run(bed
            .namespaces
            .exec(&bed.dmz)
            .args(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]))?;
        Ok(Bed {
            inet: bed.outside.clone(),
            dmz: bed.dmz.clone(),
            int: bed.inside.clone(),
            bed,
        })
    }

    fn exec(&self, ns: &str) -> Command {
        self.bed.namespaces.exec(ns)
    }
}

/// This test binary, run again in `ns` as `role`, with `env`; stdout piped.
fn role(bed: &Bed, ns: &str, role: &str, env: &[(&str, String)]) -> Reaped {
    let exe = std::env::current_exe().unwrap();
    let mut c = bed.exec(ns);
    c.arg(exe)
        .args([
            "--exact",
            &format!("netns::role_{role}"),
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SIPEDGE_NETNS_ROLE", role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    Reaped(c.spawn().unwrap())
}

/// Reads a child's lines until one contains `what` (collecting `PROVEN` lines); panics if
/// the child ends first.
fn wait_for(child: &mut Reaped, what: &str, proven: &mut Vec<String>) {
    let out = child.0.stdout.as_mut().unwrap();
    let mut lines = BufReader::new(out).lines();
    for line in &mut lines {
        let line = line.unwrap();
        // The test harness may print its "test ... " prefix on the same line.
        if let Some(at) = line.find("PROVEN: ") {
            proven.push(line[at + "PROVEN: ".len()..].to_string());
        }
        if line.contains(what) {
            return;
        }
    }
    panic!("the role ended before {what:?}");
}

/// Whether this process is the role `name`.
fn is_role(name: &str) -> bool {
    std::env::var("SIPEDGE_NETNS_ROLE").is_ok_and(|r| r == name)
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} not set"))
}

/// Waits for the parent to close our stdin (or a minute), then returns.
fn until_released() {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn the_dmz_deployment_works_and_isolates_in_namespaces() {
    let Some(bed) = bed_or_skip("the namespace test bed", Bed::up) else {
        return;
    };
    let mut proven = Vec::new();

    // The PKI, the key ring, a relay credential, and the edge's topology.
    let pki = Pki::new();
    let partner = Pki::for_org(PARTNER_FQDN, PARTNER_EDGE_IP, PARTNER_INT_IP);
    let ring_path = pki.dir.path().join("ring.toml");
    let now = sipedge::shell::clock::now_unix();
    let ring =
        sipedge::core::keyring::Ring::init(sipedge::shell::keyfile::random_secret().unwrap(), now);
    sipedge::shell::keyfile::store(&ring_path, &ring, true).unwrap();
    let cred = sipedge::core::credentials::mint(&ring, "alice@sipedge.test", 3600, now).unwrap();
    let topology = pki.dir.path().join("edge.toml");
    std::fs::write(
        &topology,
        format!(
            "{head}\
             [next_hop]\nmembers = [\"{LAN_IP}:5061\"]\nserver_name = \"{DIRECTOR_NAME}\"\n\
             [next_hop.probe]\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
             [operations]\nlisten = \"{INT_IP}:9095\"\n\
             [keys]\nring = \"{ring}\"\n\
             [relay]\nhost = \"{EXT_IP}\"\ninternal_ranges = [\"198.51.100.0/24\"]\n\
             {federation}",
            head = edge_toml(&pki, "dmz", (EDGE_FQDN, DOMAIN), (EXT_IP, INT_IP)),
            ring = ring_path.display(),
            federation = federation_toml(
                &partner,
                "b",
                (PARTNER_FQDN, PARTNER_DOMAIN),
                PARTNER_EDGE_IP
            ),
        ),
    )
    .unwrap();
    // The partner's edge, federating with ours through its external interface.
    let partner_topology = partner.dir.path().join("edge.toml");
    std::fs::write(
        &partner_topology,
        format!(
            "{head}\
             [next_hop]\nmembers = [\"{INET_IP}:5070\"]\nserver_name = \"{DIRECTOR_NAME}\"\n\
             [next_hop.probe]\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
             {federation}",
            head = edge_toml(
                &partner,
                "b",
                (PARTNER_FQDN, PARTNER_DOMAIN),
                (PARTNER_EDGE_IP, PARTNER_INT_IP)
            ),
            federation = federation_toml(&pki, "a", (EDGE_FQDN, DOMAIN), EXT_IP),
        ),
    )
    .unwrap();
    let common = vec![
        ("SIPEDGE_NETNS_DIR", pki.dir.path().display().to_string()),
        (
            "SIPEDGE_NETNS_PARTNER_DIR",
            partner.dir.path().display().to_string(),
        ),
        ("SIPEDGE_NETNS_USER", cred.username.clone()),
        ("SIPEDGE_NETNS_PASS", cred.password.clone()),
    ];

    // The Director (inside) first, then the edge on the DMZ host.
    let mut director = role(&bed, &bed.int, "director", &common);
    wait_for(&mut director, "READY", &mut proven);
    let edge = start_edge(&bed, &bed.dmz, &topology);
    let forwarding = bed
        .exec(&bed.dmz)
        .args(["cat", "/proc/sys/net/ipv4/ip_forward"])
        .output()
        .unwrap();
    assert_eq!(forwarding.stdout, b"0\n");
    proven.push("the DMZ host does not route between its interfaces (ip_forward = 0)".into());

    // The partner organisation: its Director and its edge, on the Internet side.
    let mut partner_director = role(&bed, &bed.inet, "partner_director", &common);
    wait_for(&mut partner_director, "READY", &mut proven);
    let partner_edge = start_edge(&bed, &bed.inet, &partner_topology);

    // The media peer outside, then every check from the inside and from the Internet.
    let mut echo = role(&bed, &bed.inet, "echo", &common);
    wait_for(&mut echo, "READY", &mut proven);
    let mut inside = role(&bed, &bed.int, "inside", &common);
    wait_for(&mut inside, "DONE", &mut proven);
    let mut outside = role(&bed, &bed.inet, "remote_user", &common);
    wait_for(&mut outside, "DONE", &mut proven);
    // Federation: our Director writes to the partner's domain; the partner's Director
    // receives it through both edges and answers.
    writeln!(director.0.stdin.as_mut().unwrap(), "federate").unwrap();
    wait_for(&mut director, "FEDERATED", &mut proven);
    wait_for(&mut partner_director, "GOT", &mut proven);

    for (name, child) in [("inside", &mut inside), ("remote user", &mut outside)] {
        let status = child.0.wait().unwrap();
        assert!(status.success(), "the {name} role failed");
    }
    drop(director.0.stdin.take());
    drop(partner_director.0.stdin.take());
    drop(echo.0.stdin.take());
    for e in [&edge, &partner_edge] {
        let _ = Command::new("kill")
            .args(["-TERM", &e.0.id().to_string()])
            .status();
    }
    println!("proven in network namespaces:");
    for p in &proven {
        println!("  - {p}");
    }
    assert_eq!(proven.len(), 12, "{proven:?}");
}

/// The start of an edge's topology file: its state in the PKI's folder, the edge `name`
/// serving `domain` as `fqdn`, SIP on port 5061 of `ext_ip` and `int_ip` with the PKI's
/// certificates.
fn edge_toml(
    pki: &Pki,
    name: &str,
    (fqdn, domain): (&str, &str),
    (ext_ip, int_ip): (&str, &str),
) -> String {
    let (ext_tls, int_tls) = pki.tls_tables();
    format!(
        "state_dir = \"{state}\"\n\
         [edge]\nname = \"{name}\"\npool_fqdn = \"{fqdn}\"\nsip_domains = [\"{domain}\"]\n\
         [external]\nsip = \"{ext_ip}:5061\"\nsip_host = \"{fqdn}\"\n\
         {ext_tls}\
         [internal]\nsip = \"{int_ip}:5061\"\n\
         {int_tls}",
        state = pki.dir.path().join("state").display(),
    )
}

/// `[federation]` with one partner, `key`: its edge `fqdn` at `edge_ip`, for `domain`, with a
/// certificate from `partner`'s PKI.
fn federation_toml(
    partner: &Pki,
    key: &str,
    (fqdn, domain): (&str, &str),
    edge_ip: &str,
) -> String {
    format!(
        "[federation]\nca = \"{ca}\"\n\
         [federation.partners.{key}]\nfqdn = \"{fqdn}\"\ndomains = [\"{domain}\"]\naddresses = [\"{edge_ip}:5061\"]\n",
        ca = partner.pki.ca_cert.display(),
    )
}

/// The sipedge binary in `ns` with `topology`, once it says it listens.
fn start_edge(bed: &Bed, ns: &str, topology: &std::path::Path) -> Reaped {
    let mut cmd = bed.exec(ns);
    cmd.arg(BIN);
    let mut edge = run_topology(cmd, topology, Stdio::inherit());
    let out = edge.0.stdout.as_mut().unwrap();
    let started = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("external TLS SIP on"));
    assert!(started, "an edge did not start");
    edge
}

/// Outside: the partner's Director, answering everything 200 and reporting what arrived
/// with the trust stamp it carried.
#[test]
#[ignore = "a role of the namespace test, run by it"]
fn role_partner_director() {
    if !is_role("partner_director") {
        return;
    }
    let dir = std::path::PathBuf::from(env("SIPEDGE_NETNS_PARTNER_DIR"));
    let (material, roots) = director_identity(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut d =
            Director::start_with(material, roots, format!("{INET_IP}:5070").parse().unwrap()).await
        .answering_ok();
        println!("READY");
        std::io::stdout().flush().unwrap();
        let got = d
            .try_recv(Duration::from_secs(60))
            .await
            .expect("a federated request");
        let trust = headers(&got.text, "ms-edge-proxy-message-trust");
        assert_eq!(
            trust,
            [format!(
                "ms-source-type=DirectPartner;ms-ep-fqdn={EDGE_FQDN};ms-source-network=federation;ms-source-verified-user=verified"
            )],
            "{}",
            got.text
        );
        println!("PROVEN: the partner's inside receives it stamped by its own edge as from ours ({EDGE_FQDN}), verified by certificate");
        println!("GOT");
        std::io::stdout().flush().unwrap();
        until_released();
    });
}

/// A Director's certificate and the roots it trusts, from a dev PKI directory.
fn director_identity(
    dir: &std::path::Path,
) -> (sipedge::tls::CertifiedKeyMaterial, rustls::RootCertStore) {
    let pki = sipedge::tls::DevPki::at(dir);
    let material = sipedge::tls::load_cert(
        &pki.source(sipedge::tls::DevRole::Director),
        None,
        sipedge::tls::DevRole::Director,
    )
    .unwrap();
    let roots = sipedge::tls::load_roots(&pki.ca_source(), None).unwrap();
    (material, roots)
}

/// Inside: the Director, answering everything 200.
#[test]
#[ignore = "a role of the namespace test, run by it"]
fn role_director() {
    if !is_role("director") {
        return;
    }
    let dir = std::path::PathBuf::from(env("SIPEDGE_NETNS_DIR"));
    let (material, roots) = director_identity(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut director = rt.block_on(async {
        let d = Director::start_with(material, roots, format!("{LAN_IP}:5061").parse().unwrap())
            .await
            .answering_ok();
        d
    });
    println!("READY");
    std::io::stdout().flush().unwrap();
    // Commands from the test on stdin; its end releases the role.
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        if line.trim() == "federate" {
            rt.block_on(async {
                // What arrived so far (the remote user's call) is not the answer sought.
                while director.try_recv(Duration::from_millis(100)).await.is_some() {}
                *director.auto_answer.lock().unwrap() = None;
                director.send(
                    0,
                    &format!(
                        "MESSAGE sip:bob@{PARTNER_DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {LAN_IP}:5061;branch=z9hG4bK-fed1\r\n\
                         Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=f1\r\nTo: <sip:bob@{PARTNER_DOMAIN}>\r\n\
                         Call-ID: netns-fed\r\nCSeq: 1 MESSAGE\r\nContent-Length: 5\r\n\r\nhello"
                    ),
                );
                let answer = director
                    .try_recv(Duration::from_secs(30))
                    .await
                    .expect("an answer from the partner");
                assert!(answer.text.starts_with("SIP/2.0 200"), "{}", answer.text);
            });
            println!("PROVEN: a MESSAGE to the partner's domain leaves through our edge's external interface to the partner's edge over mutual TLS, and its 200 comes back");
            println!("FEDERATED");
            std::io::stdout().flush().unwrap();
        }
        line.clear();
    }
}

/// Outside: a media peer echoing every datagram back.
#[test]
#[ignore = "a role of the namespace test, run by it"]
fn role_echo() {
    if !is_role("echo") {
        return;
    }
    let sock = std::net::UdpSocket::bind(format!("{INET_IP}:40000")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    println!("READY");
    std::io::stdout().flush().unwrap();
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        let _ = sock.send_to(&buf[..n], from);
    }
}

/// Inside: the operations endpoints answer, and an internal client's relay carries media
/// to the peer outside and back.
#[test]
#[ignore = "a role of the namespace test, run by it"]
fn role_inside() {
    if !is_role("inside") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ops = format!("{INT_IP}:9095");
        // Up once the Director answered `rise` probes (a second apart here): waited for
        // by deadline, not by a count of polls that races the probe interval.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut health = http_get(&ops, "/healthz").await;
        while !health.starts_with("HTTP/1.1 200") && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            health = http_get(&ops, "/healthz").await;
        }
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        println!("PROVEN: the operations endpoints answer on the internal interface (/healthz 200)");

        let client = tokio::net::UdpSocket::bind(format!("{LAN_IP}:0")).await.unwrap();
        let turn: SocketAddr = format!("{INT_IP}:3478").parse().unwrap();
        let mut session = TurnSession::allocate(client, turn, &env("SIPEDGE_NETNS_USER"), &env("SIPEDGE_NETNS_PASS")).await;
        assert_eq!(session.relayed.ip().to_string(), EXT_IP, "relayed on the external interface");
        let peer: SocketAddr = format!("{INET_IP}:40000").parse().unwrap();
        assert_eq!(session.bind_channel(0x4001, peer).await, None, "channel bound");
        for i in 0..20u8 {
            let payload = vec![i; 160];
            let mut frame = vec![0x40, 0x01, 0, 160];
            frame.extend_from_slice(&payload);
            session.sock.send_to(&frame, turn).await.unwrap();
            let mut buf = vec![0u8; 2048];
            let (n, _) = tokio::time::timeout(WAIT, session.sock.recv_from(&mut buf))
                .await
                .expect("the echo came back through the relay")
                .unwrap();
            assert_eq!(&buf[4..n], &payload[..]);
        }
        println!(
            "PROVEN: an internal client's relay carries media to a peer on the Internet and back (20 packets)"
        );
    });
    println!("DONE");
}

/// Outside: the remote user registers and calls through the edge; nothing internal is
/// reachable, directly or through the relay; the edge answers only SIP/TLS and TURN.
#[test]
#[ignore = "a role of the namespace test, run by it"]
fn role_remote_user() {
    if !is_role("remote_user") {
        return;
    }
    let dir = std::path::PathBuf::from(env("SIPEDGE_NETNS_DIR"));
    let pki = sipedge::tls::DevPki::at(&dir);
    let roots = sipedge::tls::load_roots(&pki.ca_source(), None).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let edge: SocketAddr = format!("{EXT_IP}:5061").parse().unwrap();
        let mut c = Client::connect_as(roots, None, edge, INET_IP, EDGE_FQDN, None)
            .await
            .expect("TLS to the edge");
        let request = |method: &str, cseq: u32, to_tag: &str| {
            format!(
                "{method} sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {INET_IP};branch=z9hG4bK-n{method}{cseq}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>{to_tag}\r\n\
                 Call-ID: netns-call\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@{INET_IP}>\r\nContent-Length: 0\r\n\r\n"
            )
        };
        c.send(&request("REGISTER", 1, "").replace("REGISTER sip:bob@", "REGISTER sip:")).await;
        let answer = c.recv().await;
        assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
        c.send(&request("INVITE", 2, "")).await;
        assert!(c.recv().await.starts_with("SIP/2.0 200"));
        c.send(&request("ACK", 2, ";tag=uas1")).await;
        c.send(&request("BYE", 3, ";tag=uas1")).await;
        assert!(c.recv().await.starts_with("SIP/2.0 200"));
        println!("PROVEN: a remote user registers and places a call (INVITE, ACK, BYE) through the edge to the Director");

        for internal in [LAN_IP, INT_IP] {
            let r = std::net::TcpStream::connect_timeout(
                &format!("{internal}:5061").parse().unwrap(),
                Duration::from_millis(500),
            );
            assert!(r.is_err(), "{internal} reachable from the Internet");
        }
        println!("PROVEN: no internal address is reachable from the Internet");

        let open: Vec<u16> = [22, 80, 443, 3478, 5060, 5061, 8080, 9095]
            .into_iter()
            .filter(|p| {
                std::net::TcpStream::connect_timeout(
                    &format!("{EXT_IP}:{p}").parse().unwrap(),
                    Duration::from_millis(500),
                )
                .is_ok()
            })
            .collect();
        assert_eq!(open, [443, 5061], "TCP ports open on the external interface");
        println!("PROVEN: on the external interface only SIP/TLS (5061) and TURN over TCP (443) accept TCP; the operations port (9095) does not");

        // UDP: closed ports answer with ICMP port unreachable (seen as a refused
        // connection); TURN's port answers STUN.
        for port in [53, 161, 5060, 5061, 9095] {
            let probe = std::net::UdpSocket::bind(format!("{INET_IP}:0")).unwrap();
            probe.connect(format!("{EXT_IP}:{port}")).unwrap();
            probe
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            probe.send(b"probe").unwrap();
            let mut buf = [0u8; 64];
            let err = probe.recv(&mut buf).expect_err("an answer from a closed port");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "UDP {port}");
        }
        let stun = std::net::UdpSocket::bind(format!("{INET_IP}:0")).unwrap();
        stun.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let binding = sipedge::core::turn::encode::Writer::new(
            sipedge::core::turn::stun::Class::Request,
            1,
            [7; 12],
        )
        .finish_with_fingerprint();
        stun.send_to(&binding, format!("{EXT_IP}:3478")).unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = stun.recv_from(&mut buf).expect("a Binding answer");
        assert!(sipedge::core::turn::stun::check(&buf[..n]).is_ok());
        println!("PROVEN: on the external interface UDP answers only on TURN (3478, STUN Binding); 53, 161, 5060, 5061 and 9095 are closed");

        // A host that routes to the internal address through the external interface (a
        // DMZ neighbour): Linux would deliver to any of the host's addresses by any
        // interface; the internal SIP listener, the operations endpoints (which issue relay
        // credentials) and the internal TURN listener take only what comes in by theirs.
        let route = |verb: &str| {
            std::process::Command::new("ip")
                .args(["route", verb, INT_IP, "via", EXT_IP])
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(route("add"), "a route to the internal address through the edge");
        for port in [5061, 9095] {
            let r = std::net::TcpStream::connect_timeout(
                &format!("{INT_IP}:{port}").parse().unwrap(),
                Duration::from_millis(500),
            );
            assert!(r.is_err(), "{INT_IP}:{port} reached through the external interface");
        }
        let probe = std::net::UdpSocket::bind(format!("{INET_IP}:0")).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        probe.send_to(&binding, format!("{INT_IP}:3478")).unwrap();
        assert!(
            probe.recv_from(&mut buf).is_err(),
            "the internal TURN listener answered through the external interface"
        );
        assert!(route("del"));
        println!("PROVEN: routed to through the external interface, the internal address's SIP (5061), operations (9095) and TURN (3478) listeners take nothing");

        let client = tokio::net::UdpSocket::bind(format!("{INET_IP}:0")).await.unwrap();
        let turn: SocketAddr = format!("{EXT_IP}:3478").parse().unwrap();
        let mut session = TurnSession::allocate(client, turn, &env("SIPEDGE_NETNS_USER"), &env("SIPEDGE_NETNS_PASS")).await;
        println!("PROVEN: TURN answers on the external interface (an allocation on {})", session.relayed);
        for internal in [LAN_IP, INT_IP] {
            let peer: SocketAddr = format!("{internal}:5061").parse().unwrap();
            assert_eq!(session.permission(peer).await, Some(403), "{internal} through the relay");
        }
        println!("PROVEN: the relay refuses internal peers to an allocation from the Internet (403)");
    });
    println!("DONE");
}
