//! The A/V Edge's TURN relay against a real client: coturn's `turnutils_uclient` allocates
//! relays on the edge (UDP, REST credentials minted from the pool ring) and sends media
//! between two allocations through them. A tampered credential gets no allocation.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sipedge::core::{credentials, keyring::Ring};
use sipedge::shell::{self, keyfile};
use sipedge::topology::{KeysSource, Relay};

use crate::support::*;

fn udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn uclient() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("turnutils_uclient"))
        .find(|p| p.is_file());
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
    let ring_path = pki.dir.path().join("ring.toml");
    let now = sipedge::shell::clock::now_unix();
    keyfile::store(
        &ring_path,
        &Ring::init(keyfile::random_secret().unwrap(), now),
        true,
    )
    .unwrap();
    let ring = keyfile::load(&ring_path).unwrap();
    let turn_port = udp_port("127.0.0.1");
    let base = 40_000 + (std::process::id() % 100) as u16 * 100;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let edge = rt.block_on(async {
        let director = Director::start(&pki).await;
        let mut t = topology(&pki, &[director.addr]);
        t.keys = Some(KeysSource::File(ring_path.clone()));
        t.relay = Some(Relay {
            listen_udp: vec![format!("127.0.0.1:{turn_port}").parse().unwrap()],
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
