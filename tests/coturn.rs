//! Interop with coturn: credentials minted by `sipedge token mint` from a ring are accepted
//! by coturn (`use-auth-secret` with the ring's signing secret) for a real TURN allocation
//! made by `turnutils_uclient`, and a tampered one is refused. This proves the credential
//! format is the standard TURN REST one, and that a pool migrating from coturn (its secret
//! adopted with `sipedge keys import`) keeps working.
//!
//! coturn comes from `.ci/run` (`apt-get install coturn`); without it the test is skipped
//! on a developer machine and fails under CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{body_of, free_tcp_port, required, tool_on_path, uclient_relays, Reaped};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sipedge");

fn sipedge(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "sipedge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs turnutils_uclient against the server with a credential; its exit status and output.
fn allocate(uclient: &Path, port: u16, user: &str, pass: &str) -> (bool, String) {
    uclient_relays(uclient, port, (user, pass), 5, 100)
}

/// Starts turnserver on 127.0.0.1 with `use-auth-secret`; returns it and its port once it
/// accepts connections.
fn start_coturn(turnserver: &Path, dir: &Path, secret: &str) -> (Reaped, u16) {
    let port = free_tcp_port("127.0.0.1");
    let relay_base = 50_000 + (std::process::id() % 50) as u16 * 200 + (port % 2) * 100;
    let server = Reaped(
        Command::new(turnserver)
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
            ])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={relay_base}"))
            .arg(format!("--max-port={}", relay_base + 99))
            .args([
                "--use-auth-secret",
                "--realm=sipedge.test",
                "--allow-loopback-peers",
                "--simple-log",
            ])
            .arg(format!("--static-auth-secret={secret}"))
            .arg(format!(
                "--userdb={}",
                dir.join(format!("turndb{port}")).display()
            ))
            .arg(format!(
                "--pidfile={}",
                dir.join(format!("turn{port}.pid")).display()
            ))
            .arg("--log-file=stdout")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("turn{port}.log"))).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver"),
    );
    // Ready when it accepts TCP on its port.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "turnserver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

fn coturn_tools() -> Option<(PathBuf, PathBuf)> {
    let tools = tool_on_path("turnserver").zip(tool_on_path("turnutils_uclient"));
    required(
        tools,
        "coturn (turnserver and turnutils_uclient)",
        "apt-get install coturn",
    )
}

/// The whole chain: a Front End asks the edge for relay credentials over SIP SERVICE
/// (MS-AVEDGEA); coturn, sharing the pool's secret, accepts them for an allocation.
#[test]
fn coturn_accepts_credentials_issued_over_sip_service() {
    let Some((turnserver, uclient)) = coturn_tools() else {
        return;
    };
    let pki = crate::support::Pki::new();
    let secret = "pool-shared-secret-for-coturn-0042";
    let ring_path = pki.dir.path().join("ring.toml");
    let mut ring = sipedge::core::keyring::Ring::default();
    ring.import(secret, sipedge::shell::clock::now_unix())
        .unwrap();
    sipedge::shell::keyfile::store(&ring_path, &ring, true).unwrap();
    let (_server, port) = start_coturn(&turnserver, pki.dir.path(), secret);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pass) = rt.block_on(async {
        let director = crate::support::Director::start(&pki).await;
        let mut t = crate::support::topology(&pki, &[director.addr]);
        t.keys = Some(sipedge::topology::KeysSource::File(ring_path.clone()));
        t.relay = Some(crate::avauth::issuing_relay("127.0.0.1", port, port));
        let edge = sipedge::shell::start(&t).await.expect("edge starts");
        let mut fe = crate::avauth::front_end(&pki, edge.internal).await;
        let answer = crate::avauth::ask(
            &mut fe,
            &crate::avauth::service(crate::avauth::LYNC_BODY, "ct1"),
        )
        .await;
        assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
        let body = body_of(&answer);
        assert_eq!(crate::avauth::element(body, "udpPort"), port.to_string());
        edge.stop().await;
        crate::avauth::credential(body)
    });
    let (ok, out) = allocate(&uclient, port, &user, &pass);
    assert!(
        ok,
        "coturn refused the credential issued over SERVICE:\n{out}"
    );
    assert!(out.contains("Total lost packets 0"), "{out}");
}

#[test]
fn coturn_accepts_credentials_minted_by_sipedge() {
    let Some((turnserver, uclient)) = coturn_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("ring.toml");
    let ring_s = ring.to_str().unwrap();
    // A pool migrating from coturn: its secret becomes the ring's signing key.
    let coturn_secret = "existing-coturn-static-auth-secret-42";
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{coturn_secret}\n")).unwrap();
    sipedge(&["keys", "init", "--ring", ring_s]);
    sipedge(&[
        "keys",
        "import",
        "--ring",
        ring_s,
        "--secret-file",
        secret_file.to_str().unwrap(),
    ]);

    let (_server, port) = start_coturn(&turnserver, dir.path(), coturn_secret);

    let minted = sipedge(&[
        "token",
        "mint",
        "--ring",
        ring_s,
        "--user",
        "alice@sipedge.test",
        "--ttl",
        "1h",
    ]);
    let field = |name: &str| {
        minted
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let (user, pass) = (field("username:"), field("password:"));

    let (ok, out) = allocate(&uclient, port, &user, &pass);
    assert!(ok, "coturn refused a sipedge credential:\n{out}");
    assert!(out.contains("Total lost packets 0"), "{out}");

    // Tampered (the user part changed): coturn refuses the allocation.
    let tampered = user.replace("alice", "mallory");
    let (ok, out) = allocate(&uclient, port, &tampered, &pass);
    assert!(!ok, "coturn accepted a tampered credential:\n{out}");
    assert!(out.contains("Cannot complete Allocation"), "{out}");
}
