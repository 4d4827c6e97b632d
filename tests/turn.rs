//! The A/V Edge's TURN relay against a real client: coturn's `turnutils_uclient` allocates
//! relays on the edge (UDP, REST credentials minted from the pool ring) and sends media
//! between two allocations through them. A tampered credential gets no allocation.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sipedge::core::credentials;
use sipedge::core::keyring::Ring;
use sipedge::shell;
use sipedge::topology::KeysSource;

use crate::support::*;

fn uclient() -> Option<std::path::PathBuf> {
    required(
        tool_on_path("turnutils_uclient"),
        "turnutils_uclient",
        "apt-get install coturn",
    )
}

/// An edge whose relay listens on `listen` and relays on ports `base` to `base` + 99 (its
/// Director left running for the rest of the test), with the kernel fast path if `kernel`:
/// the edge, and the ring its relay credentials verify with.
fn relay_edge(
    rt: &tokio::runtime::Runtime,
    pki: &Pki,
    listen: &str,
    base: u16,
    kernel: bool,
) -> (shell::RunningEdge, Ring) {
    let (ring_path, ring) = ring_file(pki);
    let edge = rt.block_on(async {
        let director = Director::start(pki).await;
        let mut t = topology(pki, &[director.addr]);
        t.keys = Some(KeysSource::File(ring_path));
        let mut relay = loopback_relay(&[listen], base);
        relay.kernel_offload = kernel;
        t.relay = Some(relay);
        std::mem::forget(director);
        shell::start(&t).await.expect("edge starts")
    });
    (edge, ring)
}

/// What the kernel path relayed of a run, when it is on (`None` when it is not, which CI
/// does not accept: its script installs what the kernel path needs): read back every
/// second, so waited for (up to 10 s, on a busy machine) until it reaches `want` packets.
fn kernel_relayed(turn: &sipedge::shell::turn::Turn, want: u64) -> Option<(u64, u64)> {
    if !turn.kernel_status.starts_with("on") {
        assert!(std::env::var_os("CI").is_none(), "{}", turn.kernel_status);
        eprintln!("NOTE: relayed in user space: {}", turn.kernel_status);
        return None;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (to_peers, to_clients) = turn.stats.kernel_relayed_packets();
        if to_peers + to_clients >= want || std::time::Instant::now() > deadline {
            return Some((to_peers, to_clients));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn turnutils_uclient_relays_media_through_the_edge() {
    uclient_through_the_edge(false);
}

/// coturn's client through the kernel fast path (`relay.kernel_offload`, on loopback).
#[test]
fn turnutils_uclient_relays_media_through_the_kernel_path() {
    uclient_through_the_edge(true);
}

fn uclient_through_the_edge(kernel: bool) {
    let Some(uclient) = uclient() else { return };
    let pki = Pki::new();
    let now = sipedge::shell::clock::now_unix();
    let turn_port = free_udp_port("127.0.0.1");
    let base = 40_000 + (std::process::id() % 50) as u16 * 200 + if kernel { 100 } else { 0 };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (edge, ring) = relay_edge(&rt, &pki, &format!("127.0.0.1:{turn_port}"), base, kernel);
    assert_eq!(
        edge.turn_udp,
        vec![format!("127.0.0.1:{turn_port}").parse().unwrap()]
    );

    let c = credentials::mint(&ring, "alice@sipedge.test", 3600, now).unwrap();
    let run = |user: &str, pass: &str| uclient_relays(&uclient, turn_port, (user, pass), 20, 172);
    let (ok, out) = run(&c.username, &c.password);
    let turn = edge.turn.clone().unwrap();
    assert!(ok, "turnutils_uclient failed through the edge:\n{out}");
    assert!(out.contains("Total lost packets 0"), "{out}");
    assert!(turn.stats.relayed_to_peers() >= 20, "{out}");
    if kernel {
        if let Some((to_peers, _)) = kernel_relayed(&turn, 10) {
            assert!(
                to_peers >= 10,
                "the kernel relayed {to_peers} of uclient's 20 ({}; {} channels in it now; {} relayed in all)\n{out}",
                turn.kernel_status,
                turn.kernel_channels(),
                turn.stats.relayed_to_peers()
            );
        }
    }

    let tampered = c.username.replace("alice", "mallory");
    let (ok, out) = run(&tampered, &c.password);
    assert!(!ok, "a tampered credential allocated a relay:\n{out}");
    std::thread::sleep(Duration::from_millis(50));
    rt.block_on(edge.stop());
}

/// Two edge processes started from the same ring file: a credential issued by one over SIP
/// SERVICE (a Front End on its internal listener) allocates a relay on the other.
#[test]
fn a_credential_issued_by_one_edge_process_is_accepted_by_another() {
    use std::io::{BufRead, BufReader};
    let Some(uclient) = uclient() else { return };
    let pki = Pki::new();
    let (ring_path, _) = ring_file(&pki);
    let (ext_tls, int_tls) = pki.tls_tables();
    let director = free_tcp_port("127.0.0.1");
    let topology = |name: &str, turn: u16, relay_base: u16| {
        format!(
            "state_dir = \"{state}\"\n\
             [edge]\nname = \"{name}\"\npool_fqdn = \"{EDGE_FQDN}\"\nsip_domains = [\"{DOMAIN}\"]\n\
             [external]\nsip = \"127.0.0.1:{ext}\"\nsip_host = \"{EDGE_FQDN}\"\n\
             {ext_tls}\
             [internal]\nsip = \"127.0.0.2:{int}\"\n\
             {int_tls}\
             [next_hop]\nmembers = [\"127.0.0.1:{director}\"]\nserver_name = \"{DIRECTOR_NAME}\"\n\
             [keys]\nring = \"{ring}\"\n\
             [relay]\nhost = \"127.0.0.1\"\nlisten_udp = [\"127.0.0.1:{turn}\"]\nlisten_tcp = [\"127.0.0.1:{turn}\"]\nrelay_ip = \"127.0.0.1\"\n\
             port_min = {relay_base}\nport_max = {}\nallow_loopback_peers = true\n",
            relay_base + 99,
            state = pki.dir.path().join(name).display(),
            ext = free_tcp_port("127.0.0.1"),
            int = free_tcp_port("127.0.0.2"),
            ring = ring_path.display(),
        )
    };
    let start = |name: &str, text: String| -> (Reaped, std::net::SocketAddr) {
        let file = pki.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        let mut edge = run_topology(
            Command::new(env!("CARGO_BIN_EXE_sipedge")),
            &file,
            Stdio::null(),
        );
        let mut internal = None;
        for line in BufReader::new(edge.0.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.split("internal mutual-TLS SIP on ").nth(1) {
                internal = rest.split(',').next().map(|a| a.parse().unwrap());
                break;
            }
        }
        (edge, internal.expect("the edge started"))
    };
    // 30000-31999: below the ephemeral ports, apart from av_bounds (32000-32699).
    let base = 30_000 + (std::process::id() % 10) as u16 * 200;
    let (turn_a, turn_b) = (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"));
    let (_edge_a, internal_a) = start("edge-a", topology("edge-a", turn_a, base));
    let (_edge_b, _) = start("edge-b", topology("edge-b", turn_b, base + 100));

    // A Front End asks edge A for relay credentials.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pass) = rt.block_on(async {
        let mut fe = crate::avauth::front_end(&pki, internal_a).await;
        let answer = crate::avauth::ask(
            &mut fe,
            &crate::avauth::service(crate::avauth::LYNC_BODY, "pool1"),
        )
        .await;
        assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
        crate::avauth::credential(body_of(&answer))
    });
    // Edge B's relay accepts them.
    let (ok, text) = uclient_relays(&uclient, turn_b, (&user, &pass), 10, 172);
    assert!(ok, "edge B refused edge A's credential:\n{text}");
    assert!(text.contains("Total lost packets 0"), "{text}");
}

/// aioice (PyPI), an independent ICE/TURN implementation, gathers a relay candidate on the
/// edge and completes ICE through it, then exchanges data both ways.
#[test]
fn aioice_completes_ice_through_the_relay() {
    aioice_through_the_edge(false);
}

/// aioice through the kernel fast path (`relay.kernel_offload`, on loopback).
#[test]
fn aioice_completes_ice_through_the_kernel_path() {
    aioice_through_the_edge(true);
}

fn aioice_through_the_edge(kernel: bool) {
    let python = ["python3"].iter().find_map(|p| {
        let ok = Command::new(p)
            .args(["-c", "import aioice"])
            .output()
            .ok()?
            .status
            .success();
        ok.then_some(*p)
    });
    let Some(python) = required(python, "aioice", "pip install aioice") else {
        return;
    };
    let pki = Pki::new();
    let now = sipedge::shell::clock::now_unix();
    let base = 10_000 + (std::process::id() % 50) as u16 * 200 + if kernel { 100 } else { 0 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (edge, ring) = relay_edge(&rt, &pki, "127.0.0.2:0", base, kernel);
    let turn = edge.turn_udp[0];
    let c = credentials::mint(&ring, "ice@sipedge.test", 3600, now).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aioice/relay_ice.py");
    let out = Command::new(python)
        .arg(&script)
        .args([
            &turn.ip().to_string(),
            &turn.port().to_string(),
            &c.username,
            &c.password,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = printed(&out);
    assert!(out.status.success(), "aioice through the edge:\n{text}");
    assert!(
        text.contains("20 round trips of 172 bytes intact"),
        "{text}"
    );
    if kernel {
        if let Some((to_peers, to_clients)) = kernel_relayed(edge.turn.as_ref().unwrap(), 10) {
            assert!(
                to_peers + to_clients >= 10,
                "the kernel relayed {to_peers} / {to_clients} of aioice's round trips\n{text}"
            );
        }
    }
    rt.block_on(edge.stop());
}

/// aioice as a `turns:` client: its relay candidate allocated over TLS (trusting the test
/// CA through SSL_CERT_FILE, checking the relay's name, 127.0.0.1), ICE completed through it.
#[test]
fn aioice_completes_ice_over_turns() {
    let python = Command::new("python3")
        .args(["-c", "import aioice"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "python3");
    let Some(python) = required(python, "aioice", "pip install aioice") else {
        return;
    };
    let pki = Pki::new();
    let now = sipedge::shell::clock::now_unix();
    let base = 45_000 + (std::process::id() % 50) as u16 * 100;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (edge, ring, tls_port) = tls_relay_edge(&rt, &pki, base);
    let c = credentials::mint(&ring, "ice@sipedge.test", 3600, now).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aioice/relay_ice.py");
    let out = Command::new(python)
        .arg(&script)
        .args([
            "127.0.0.1",
            &tls_port.to_string(),
            &c.username,
            &c.password,
            "tls",
        ])
        .env("SSL_CERT_FILE", &pki.pki.ca_cert)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = printed(&out);
    assert!(out.status.success(), "aioice over turns:\n{text}");
    assert!(
        text.contains("20 round trips of 172 bytes intact"),
        "{text}"
    );
    // A's 20 datagrams to B went out of its relay, which it reached only over TLS.
    let turn = edge.turn.clone().unwrap();
    assert!(turn.stats.relayed_to_peers() >= 20, "{text}");
    rt.block_on(edge.stop());
}

/// An edge whose relay also speaks TURN over TLS (`relay.tls_port`) on 127.0.0.1: the edge,
/// the ring, and the TLS port.
fn tls_relay_edge(
    rt: &tokio::runtime::Runtime,
    pki: &Pki,
    base: u16,
) -> (shell::RunningEdge, Ring, u16) {
    let (ring_path, ring) = ring_file(pki);
    let udp = free_udp_port("127.0.0.1");
    let tls_port = free_tcp_port("127.0.0.1");
    let edge = rt.block_on(async {
        let director = Director::start(pki).await;
        let mut t = topology(pki, &[director.addr]);
        t.keys = Some(KeysSource::File(ring_path));
        let mut relay = loopback_relay(&[&format!("127.0.0.1:{udp}")], base);
        relay.tls_port = Some(tls_port);
        relay.listen_tls = vec![format!("127.0.0.1:{tls_port}").parse().unwrap()];
        t.relay = Some(relay);
        std::mem::forget(director);
        shell::start(&t).await.expect("edge starts")
    });
    assert_eq!(
        edge.turn_tls,
        vec![format!("127.0.0.1:{tls_port}").parse().unwrap()]
    );
    (edge, ring, tls_port)
}

/// coturn's client over TLS (`turnutils_uclient -t -S`, a `turns:` client): it allocates
/// a relay on the edge over TLS and sends media between two allocations through it.
#[test]
fn turnutils_uclient_relays_media_over_tls() {
    let Some(uclient) = uclient() else { return };
    let pki = Pki::new();
    let now = sipedge::shell::clock::now_unix();
    let base = 44_000 + (std::process::id() % 50) as u16 * 100;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (edge, ring, tls_port) = tls_relay_edge(&rt, &pki, base);
    let c = credentials::mint(&ring, "alice@sipedge.test", 3600, now).unwrap();
    let out = Command::new(&uclient)
        // No RTCP sessions (-c): fewer sessions to retry (below).
        .args(["-t", "-S", "-c", "-p", &tls_port.to_string()])
        .args(["-u", &c.username, "-w", &c.password])
        .args(["-n", "20", "-m", "1", "-l", "172", "-y", "127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = printed(&out);
    assert!(out.status.success(), "turnutils_uclient -S failed:\n{text}");
    // uclient opens each session with a TLS method picked at random among its contexts,
    // TLS 1.0 and 1.1 among them, which the relay refuses (TLS 1.2 and 1.3 only): such a
    // session retries and starts late, and the first packet or two its peer sends find no
    // permission yet. So a little loss, never more (plain TCP here loses none).
    let lost: u64 = text
        .split("Total lost packets ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("uclient's loss line");
    assert!(lost <= 3, "{lost} of 40 lost over TLS:\n{text}");
    let turn = edge.turn.clone().unwrap();
    assert!(turn.stats.relayed_to_peers() >= 37, "{text}");
    assert!(turn.stats.relayed_to_clients() >= 37, "{text}");
    rt.block_on(edge.stop());
}

/// A `turns:` client that checks the certificate: the right name completes the handshake
/// and gets TURN's answer over TLS; a wrong name fails the client's handshake. Plain TCP
/// on the TLS port gets nothing (the handshake fails), and the edge counts it.
#[test]
fn a_turns_client_checks_the_relay_certificate_and_plain_bytes_get_nothing() {
    use sipedge::core::turn::stun::attr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let base = 46_000 + (std::process::id() % 50) as u16 * 100;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (edge, _ring, tls_port) = tls_relay_edge(&rt, &pki, base);
    let at: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    rt.block_on(async {
        let connect = |name: &'static str| {
            let roots = pki.roots();
            async move {
                let cfg = sipedge::tls::client_config_trusting(roots, None).unwrap();
                let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
                tokio_rustls::TlsConnector::from(cfg)
                    .connect(rustls_pki_types::ServerName::try_from(name).unwrap(), tcp)
                    .await
            }
        };
        let wrong = connect("wrong.example.test").await;
        assert!(
            wrong.is_err(),
            "a certificate for another name was accepted"
        );
        let mut tls = connect(EDGE_FQDN).await.expect("TLS with the right name");
        let allocate = turn_request(
            sipedge::core::turn::server::ALLOCATE,
            7,
            &|w| {
                w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            },
            None,
        );
        tls.write_all(&allocate).await.unwrap();
        let mut answer = vec![0u8; 2048];
        let n = tokio::time::timeout(WAIT, tls.read(&mut answer))
            .await
            .expect("an answer over TLS")
            .unwrap();
        answer.truncate(n);
        assert_eq!(error_code(&answer), Some(401), "unauthenticated Allocate");
        assert!(attr_value(&answer, attr::NONCE).is_some());

        // Plain TURN on the TLS port: no answer, the connection is closed.
        let mut plain = tokio::net::TcpStream::connect(at).await.unwrap();
        plain.write_all(&allocate).await.unwrap();
        let mut back = Vec::new();
        let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut back)).await;
        // A TLS alert record (type 21) at most: no TURN answer.
        assert!(
            back.is_empty() || back[0] == 21,
            "plain bytes on the TLS port got an answer: {back:?}"
        );
    });
    let turn = edge.turn.clone().unwrap();
    let refused = |label: &str| {
        sipedge::shell::turn::TCP_REFUSAL_LABELS
            .iter()
            .position(|l| *l == label)
            .map(|i| turn.stats.tcp_refused[i].load(std::sync::atomic::Ordering::Relaxed))
            .unwrap()
    };
    assert!(
        refused("tls_handshake") >= 2,
        "the wrong name and the plain bytes"
    );
    rt.block_on(edge.stop());
}
