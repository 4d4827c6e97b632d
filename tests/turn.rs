//! The A/V Edge's TURN relay against a real client: coturn's `turnutils_uclient` allocates
//! relays on the edge (UDP, REST credentials minted from the pool ring) and sends media
//! between two allocations through them. A tampered credential gets no allocation.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sipedge::core::credentials;
use sipedge::shell;
use sipedge::topology::{KeysSource, Relay};

use crate::support::*;

fn uclient() -> Option<std::path::PathBuf> {
    let found = tool_on_path("turnutils_uclient");
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("turnutils_uclient is required under CI (apt-get install coturn)");
        }
        eprintln!("SKIPPED: TURN interop needs turnutils_uclient (apt-get install coturn)");
    }
    found
}

#[test]
fn turnutils_uclient_relays_media_through_the_edge() {
    let Some(uclient) = uclient() else { return };
    let pki = Pki::new();
    let (ring_path, ring) = ring_file(&pki);
    let now = sipedge::shell::clock::now_unix();
    let turn_port = free_udp_port("127.0.0.1");
    let base = 40_000 + (std::process::id() % 100) as u16 * 100;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let edge = rt.block_on(async {
        let director = Director::start(&pki).await;
        let mut t = topology(&pki, &[director.addr]);
        t.keys = Some(KeysSource::File(ring_path.clone()));
        t.relay = Some(Relay {
            listen_udp: vec![format!("127.0.0.1:{turn_port}").parse().unwrap()],
            listen_tcp: vec![format!("127.0.0.1:{turn_port}").parse().unwrap()],
            relay_ip: Some("127.0.0.1".parse().unwrap()),
            port_min: base,
            port_max: base + 99,
            allow_loopback_peers: true,
            ..Relay::new("127.0.0.1")
        });
        let edge = shell::start(&t).await.expect("edge starts");
        std::mem::forget(director);
        edge
    });
    assert_eq!(
        edge.turn_udp,
        vec![format!("127.0.0.1:{turn_port}").parse().unwrap()]
    );

    let c = credentials::mint(&ring, "alice@sipedge.test", 3600, now).unwrap();
    let run = |user: &str, pass: &str| {
        let out = Command::new(&uclient)
            .args([
                "-p",
                &turn_port.to_string(),
                "-u",
                user,
                "-w",
                pass,
                "-n",
                "20",
                "-m",
                "1",
                "-l",
                "172",
                "-y",
            ])
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = run(&c.username, &c.password);
    let turn = edge.turn.clone().unwrap();
    assert!(ok, "turnutils_uclient failed through the edge:\n{out}");
    assert!(out.contains("Total lost packets 0"), "{out}");
    assert!(
        turn.stats
            .relayed_to_peers
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 20,
        "{out}"
    );

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
    let (ext_cert, ext_key) = pki.pki.files(sipedge::tls::DevRole::External);
    let (int_cert, int_key) = pki.pki.files(sipedge::tls::DevRole::Internal);
    let director = free_tcp_port("127.0.0.1");
    let topology = |name: &str, turn: u16, relay_base: u16| {
        format!(
            "state_dir = \"{state}\"\n\
             [edge]\nname = \"{name}\"\npool_fqdn = \"{EDGE_FQDN}\"\nsip_domains = [\"{DOMAIN}\"]\n\
             [external]\nsip = \"127.0.0.1:{ext}\"\nsip_host = \"{EDGE_FQDN}\"\n\
             [external.tls]\ncert = \"{ec}\"\nkey = \"{ek}\"\n\
             [internal]\nsip = \"127.0.0.2:{int}\"\n\
             [internal.tls]\ncert = \"{ic}\"\nkey = \"{ik}\"\nca = \"{ca}\"\n\
             [next_hop]\nmembers = [\"127.0.0.1:{director}\"]\nserver_name = \"{DIRECTOR_NAME}\"\n\
             [keys]\nring = \"{ring}\"\n\
             [relay]\nhost = \"127.0.0.1\"\nlisten_udp = [\"127.0.0.1:{turn}\"]\nlisten_tcp = [\"127.0.0.1:{turn}\"]\nrelay_ip = \"127.0.0.1\"\n\
             port_min = {relay_base}\nport_max = {}\nallow_loopback_peers = true\n",
            relay_base + 99,
            state = pki.dir.path().join(name).display(),
            ext = free_tcp_port("127.0.0.1"),
            int = free_tcp_port("127.0.0.2"),
            ec = ext_cert.display(),
            ek = ext_key.display(),
            ic = int_cert.display(),
            ik = int_key.display(),
            ca = pki.pki.ca_cert.display(),
            ring = ring_path.display(),
        )
    };
    let start = |name: &str, text: String| -> (Reaped, std::net::SocketAddr) {
        let file = pki.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sipedge"))
            .args(["run", "--topology"])
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut internal = None;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.split("internal mutual-TLS SIP on ").nth(1) {
                internal = rest.split(',').next().map(|a| a.parse().unwrap());
                break;
            }
        }
        (Reaped(child), internal.expect("the edge started"))
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
        let body = answer[answer.find("\r\n\r\n").unwrap() + 4..].to_string();
        (
            crate::avauth::element(&body, "username").to_string(),
            crate::avauth::element(&body, "password").to_string(),
        )
    });
    // Edge B's relay accepts them.
    let out = Command::new(&uclient)
        .args([
            "-p",
            &turn_b.to_string(),
            "-u",
            &user,
            "-w",
            &pass,
            "-n",
            "10",
            "-m",
            "1",
            "-l",
            "172",
            "-y",
        ])
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "edge B refused edge A's credential:\n{text}"
    );
    assert!(text.contains("Total lost packets 0"), "{text}");
}

/// aioice (PyPI), an independent ICE/TURN implementation, gathers a relay candidate on the
/// edge and completes ICE through it, then exchanges data both ways.
#[test]
fn aioice_completes_ice_through_the_relay() {
    let python = ["python3"].iter().find_map(|p| {
        let ok = Command::new(p)
            .args(["-c", "import aioice"])
            .output()
            .ok()?
            .status
            .success();
        ok.then_some(*p)
    });
    let Some(python) = python else {
        if std::env::var_os("CI").is_some() {
            panic!("aioice is required under CI (pip install aioice)");
        }
        eprintln!("SKIPPED: aioice interop needs `pip install aioice`");
        return;
    };
    let pki = Pki::new();
    let (ring_path, ring) = ring_file(&pki);
    let now = sipedge::shell::clock::now_unix();
    let base = 10_000 + (std::process::id() % 100) as u16 * 100;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let edge = rt.block_on(async {
        let director = Director::start(&pki).await;
        let mut t = topology(&pki, &[director.addr]);
        t.keys = Some(KeysSource::File(ring_path.clone()));
        t.relay = Some(Relay {
            listen_udp: vec!["127.0.0.2:0".parse().unwrap()],
            listen_tcp: vec!["127.0.0.2:0".parse().unwrap()],
            relay_ip: Some("127.0.0.1".parse().unwrap()),
            port_min: base,
            port_max: base + 99,
            allow_loopback_peers: true,
            ..Relay::new("127.0.0.1")
        });
        std::mem::forget(director);
        shell::start(&t).await.expect("edge starts")
    });
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
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "aioice through the edge:\n{text}");
    assert!(
        text.contains("20 round trips of 172 bytes intact"),
        "{text}"
    );
    rt.block_on(edge.stop());
}
