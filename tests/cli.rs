//! The real binary: `check` exit codes and messages, and `run` on the embedded default
//! (dev PKI generated into the state directory it prints, TLS served, SIGTERM stops it).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sipedge");

fn example(name: &str) -> String {
    format!("{}/topology/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `sipedge ARGS PATH`: a command whose last argument is a file or a folder.
fn sipedge_on(args: &[&str], path: &std::path::Path) -> std::process::Output {
    Command::new(BIN).args(args).arg(path).output().unwrap()
}

/// Sends `signal` to the process `pid`.
fn signal(name: &str, pid: u32) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}

/// SIGTERM to `child`, then its exit status once it has drained and exited (within
/// [`WAIT`]).
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    signal("TERM", child.id());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn check_accepts_the_loopback_example() {
    let out = Command::new(BIN)
        .args(["check", "--topology", &example("loopback.toml")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (edge loopback"));
}

#[test]
fn check_reports_every_problem_with_file_line_and_key_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example("loopback.toml"))
        .unwrap()
        .replace(
            "name = \"loopback\"",
            "name = \"loopback\"\nnmae = \"typo\"",
        )
        .replace(
            "[\"127.0.0.1:5070\"]",
            "[\"127.0.0.1:5070\", \"director:5061\"]",
        );
    std::fs::write(&file, &text).unwrap();
    let out = sipedge_on(&["check", "--topology"], &file);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    let typo_line = text.lines().position(|l| l.starts_with("nmae")).unwrap() + 1;
    let members_line = text.lines().position(|l| l.starts_with("members")).unwrap() + 1;
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        err.contains(&format!("{f}:{typo_line}: edge.nmae: unknown key")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:{members_line}: next_hop.members: \"director:5061\""
        )),
        "{err}"
    );
}

#[test]
fn check_names_unreadable_certificates_and_exits_64() {
    let out = Command::new(BIN)
        .args(["check", "--topology", &example("two-nic-edge.toml")])
        .env("SIPEDGE_EXTERNAL_PFX_PASSWORD", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("external.tls: /etc/sipedge/external.pfx"),
        "{err}"
    );
    assert!(
        err.contains("internal.tls.ca: /etc/sipedge/enterprise-ca.pem"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_64_and_version_prints() {
    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN).arg("version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sipedge {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `sipedge run` with no topology: the embedded default on 127.0.0.1:5061 / 127.0.0.2:5061,
/// with the lab Director on its next hop (127.0.0.1:5070): two users register through the
/// edge and one calls the other (INVITE/200/ACK/BYE/200), every message crossing the edge
/// twice and the lab once. Skipped (with a message) if something else on this machine
/// holds those ports.
#[test]
fn run_serves_the_embedded_default_with_generated_dev_certificates_and_stops_on_sigterm() {
    let _ports = default_ports();
    if !default_ports_free() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let (mut child, seen) = run_default(BIN, state.path());
    let text = seen.join("\n");
    let dev_dir = state.path().join("dev-pki");
    assert!(
        text.contains(&format!(
            "generated dev certificates in {}",
            dev_dir.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("external TLS SIP on 127.0.0.1:5061"),
        "{text}"
    );
    assert!(
        text.contains("internal mutual-TLS SIP on 127.0.0.2:5061"),
        "{text}"
    );
    assert!(dev_dir.join("ca.pem").is_file());

    // A remote user trusting the printed CA completes a TLS handshake and gets a pong.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ca = sipedge::tls::load_roots(
            &sipedge::topology::CaSource::Pem(dev_dir.join("ca.pem")),
            None,
        )
        .unwrap();
        let edge: std::net::SocketAddr = "127.0.0.1:5061".parse().unwrap();
        let mut alice = Client::connect_with_roots(ca.clone(), edge).await;
        alice.send_bytes(b"\r\n\r\n").await;
        assert_eq!(alice.recv().await, "\r\n");
        let mut bob = Client::connect_with_roots(ca, edge).await;
        // The lab answers the edge's probes: the load balancer may send traffic.
        let mut health = String::new();
        for _ in 0..300 {
            health = http_get("127.0.0.2:9095", "/healthz").await;
            if health.starts_with("HTTP/1.1 200 ") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(health.starts_with("HTTP/1.1 200 "), "{health}");
        lab_call(&mut alice, &mut bob).await;
    });
    assert!(text.contains("lab Director on 127.0.0.1:5070"), "{text}");
    assert!(text.contains("baresip account for alice: <sip:alice@sipedge.test;transport=tls>;outbound=\"sip:127.0.0.1:5061;transport=tls\""), "{text}");
    assert!(
        text.contains(";medianat=turn;stunserver=\"turn:127.0.0.1:3478\";stunuser="),
        "{text}"
    );

    let exit = terminate(&mut child.0);
    assert!(exit.success(), "exit status {exit}");
}

/// Alice and Bob register through the edge with the lab, and Alice calls Bob: the lab
/// routes the INVITE by Bob's binding and Path, the dialog's requests by the route set.
async fn lab_call(alice: &mut Client, bob: &mut Client) {
    let register = |user: &str, port: u16| {
        format!(
            "REGISTER sip:sipedge.test SIP/2.0\r\nVia: SIP/2.0/TLS 192.168.1.5:{port};branch=z9hG4bK-reg-{user};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@sipedge.test>;tag=r{user}\r\nTo: <sip:{user}@sipedge.test>\r\n\
             Call-ID: reg-{user}\r\nCSeq: 1 REGISTER\r\nSupported: path, outbound\r\n\
             Contact: <sip:{user}@192.168.1.5:{port};transport=tls;ob>;expires=600\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let (a_port, b_port) = (alice.local_addr().port(), bob.local_addr().port());
    for (client, user, port) in [(&mut *alice, "alice", a_port), (&mut *bob, "bob", b_port)] {
        client.send(&register(user, port)).await;
        let ok = client.recv().await;
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        assert!(ok.contains(";expires=600"), "{ok}");
    }
    let invite = format!(
        "INVITE sip:bob@sipedge.test SIP/2.0\r\nVia: SIP/2.0/TLS 192.168.1.5:{a_port};branch=z9hG4bK-lab-inv;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@sipedge.test>;tag=a1\r\nTo: <sip:bob@sipedge.test>\r\n\
         Call-ID: lab-call-1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@192.168.1.5:{a_port};transport=tls>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    alice.send(&invite).await;
    let Some(at_bob) = bob.try_recv(Duration::from_secs(3)).await else {
        let at_alice = alice.try_recv(Duration::from_secs(2)).await;
        panic!("the INVITE did not reach Bob; Alice got {at_alice:?}");
    };
    assert!(
        at_bob.starts_with(&format!(
            "INVITE sip:bob@192.168.1.5:{b_port};transport=tls;ob SIP/2.0\r\n"
        )),
        "{at_bob}"
    );
    let ok = response_to(&at_bob, 200, "OK").replace(
        "Content-Length: 0",
        &format!("Contact: <sip:bob@192.168.1.5:{b_port};transport=tls>\r\nContent-Length: 0"),
    );
    bob.send(&ok).await;
    let ok = alice.recv().await;
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    let route = route_set(&ok);
    let in_dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:bob@192.168.1.5:{b_port};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS 192.168.1.5:{a_port};branch=z9hG4bK-lab-{method};rport\r\nRoute: {route}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@sipedge.test>;tag=a1\r\nTo: <sip:bob@sipedge.test>;tag=uas1\r\n\
             Call-ID: lab-call-1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    alice.send(&in_dialog("ACK", 1)).await;
    let ack = bob.recv().await;
    assert!(ack.starts_with("ACK sip:bob@"), "{ack}");
    alice.send(&in_dialog("BYE", 2)).await;
    let bye = bob.recv().await;
    assert!(bye.starts_with("BYE sip:bob@"), "{bye}");
    bob.send(&response_to(&bye, 200, "OK")).await;
    let bye_ok = alice.recv().await;
    assert!(
        bye_ok.starts_with("SIP/2.0 200 OK\r\n") && bye_ok.contains("CSeq: 2 BYE"),
        "{bye_ok}"
    );
}

fn sipedge(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn keys_and_tokens_from_the_command_line() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("ring.toml");
    let ring_s = ring.to_str().unwrap();
    assert!(sipedge(&["keys", "init", "--ring", ring_s])
        .status
        .success());
    assert_eq!(
        std::fs::metadata(&ring).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // init never replaces a ring.
    let again = sipedge(&["keys", "init", "--ring", ring_s]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let mint = sipedge(&[
        "token", "mint", "--ring", ring_s, "--user", "alice", "--ttl", "1h",
    ]);
    assert!(mint.status.success());
    let out = String::from_utf8_lossy(&mint.stdout).to_string();
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let (user, pass) = (field("username:"), field("password:"));
    assert!(user.ends_with(":alice"), "{out}");

    // Rotation: the credential minted before still verifies, and new ones are signed by k2.
    let rotate = sipedge(&["keys", "rotate", "--ring", ring_s, "--signs-in", "0s"]);
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let verify = sipedge(&["token", "verify", "--ring", ring_s, &user, &pass]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let list =
        String::from_utf8_lossy(&sipedge(&["keys", "list", "--ring", ring_s]).stdout).to_string();
    assert!(
        list.contains("k2") && list.contains("signing") && list.contains("verifies only"),
        "{list}"
    );
    assert!(!std::fs::read_to_string(&ring).unwrap().is_empty());
    assert!(
        !list.contains(&std::fs::read_to_string(&ring).unwrap()[200..220]),
        "no secrets listed"
    );

    // Tampered: exit 1 with the reason.
    let tampered = user.replace("alice", "mallory");
    let bad = sipedge(&["token", "verify", "--ring", ring_s, &tampered, &pass]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("signature does not match"));

    // A coturn secret imported: credentials minted by `coturn`'s formula verify.
    let secret = dir.path().join("coturn-secret");
    std::fs::write(&secret, "north-pole-secret-0001\n").unwrap();
    assert!(sipedge(&[
        "keys",
        "import",
        "--ring",
        ring_s,
        "--secret-file",
        secret.to_str().unwrap()
    ])
    .status
    .success());

    // A ring others can read is refused.
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o640)).unwrap();
    let open = sipedge(&["token", "mint", "--ring", ring_s, "--user", "alice"]);
    assert_eq!(open.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&open.stderr).contains("chmod 600"));
    // Bad arguments are usage errors.
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        sipedge(&["token", "mint", "--ring", ring_s, "--user", "a", "--ttl", "10s"])
            .status
            .code(),
        Some(64)
    );
    assert_eq!(
        sipedge(&["token", "mint", "--ring", ring_s, "--user", "a", "--ttl", "soon"])
            .status
            .code(),
        Some(64)
    );
}

/// `cert request` writes a key (mode 0600) and a CSR naming the SANs, and never replaces
/// them; `cert dev` makes a topology's dev PKI; `cert check` prints GREEN for it and exits
/// 0, RED with the reason and exit 1 when a name the topology needs is missing.
#[test]
fn cert_request_dev_and_check() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = sipedge_on(
        &[
            "cert",
            "request",
            "--san",
            "sip.corp.example",
            "--san",
            "av.corp.example",
            "--out",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.path().join("sip.corp.example.key");
    let csr = std::fs::read_to_string(dir.path().join("sip.corp.example.csr")).unwrap();
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{csr}"
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = sipedge_on(
        &["cert", "request", "--san", "sip.corp.example", "--out"],
        dir.path(),
    );
    assert!(!again.status.success(), "an existing key was replaced");

    let topology = dir.path().join("edge.toml");
    let text = format!(
        "state_dir = \"{}\"\n{}",
        dir.path().join("state").display(),
        sipedge::topology::EMBEDDED_DEFAULT
    );
    std::fs::write(&topology, &text).unwrap();
    let dev = sipedge_on(&["cert", "dev", "--topology"], &topology);
    assert!(
        dev.status.success(),
        "{}",
        String::from_utf8_lossy(&dev.stderr)
    );
    let check = sipedge_on(&["cert", "check", "--topology"], &topology);
    let table = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{table}");
    assert_eq!(table.matches("GREEN").count(), 2, "{table}");
    assert!(table.contains("edge.sipedge.test"), "{table}");

    // The topology now needs a name the certificate does not carry.
    std::fs::write(
        &topology,
        text.replace(
            "sip_host = \"127.0.0.1\"",
            "sip_host = \"sip.elsewhere.test\"",
        ),
    )
    .unwrap();
    let check = sipedge_on(&["cert", "check", "--topology"], &topology);
    let table = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{table}");
    assert!(table.contains("RED"), "{table}");
    assert!(
        table.contains("sip.elsewhere.test is not among the subjectAltNames"),
        "{table}"
    );
}

/// SIGHUP reloads the running binary: the certificates are read again and a line says
/// so; a topology that no longer loads, or that moves a listener, is refused with a clear
/// line and the edge keeps running; SIGTERM then drains and exits 0.
#[test]
fn sighup_reloads_and_refuses_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ext = free_tcp_port("127.0.0.1");
    let int = free_tcp_port("127.0.0.2");
    let file = dir.path().join("edge.toml");
    let text = format!(
        "state_dir = \"{state}\"\n\
         [edge]\nname = \"hup\"\npool_fqdn = \"edge.sipedge.test\"\nsip_domains = [\"sipedge.test\"]\n\
         [external]\nsip = \"127.0.0.1:{ext}\"\nsip_host = \"edge.sipedge.test\"\n[external.tls]\ndev = true\n\
         [internal]\nsip = \"127.0.0.2:{int}\"\n[internal.tls]\ndev = true\n\
         [next_hop]\nmembers = [\"127.0.0.1:9\"]\nserver_name = \"director.sipedge.test\"\n",
        state = dir.path().join("state").display()
    );
    std::fs::write(&file, &text).unwrap();
    let mut child = run_topology(Command::new(BIN), &file, Stdio::piped());
    let pid = child.0.id();
    let mut out = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let wait_for = |lines: &mut dyn Iterator<Item = std::io::Result<String>>, what: &str| {
        for line in &mut *lines {
            let line = line.unwrap();
            if line.contains(what) {
                return line;
            }
        }
        panic!("no line with {what:?}");
    };
    wait_for(&mut out, "external TLS SIP on");
    let hup = || signal("HUP", pid);
    hup();
    let line = wait_for(&mut out, "reloaded: external certificate");
    assert!(line.contains("edge.sipedge.test"), "{line}");

    // Moving the external listener needs a restart.
    std::fs::write(&file, text.replace(&format!(":{ext}\""), ":1\"")).unwrap();
    hup();
    let line = wait_for(&mut err, "sipedge: reload refused");
    assert!(
        line.contains("needs a restart to change external"),
        "{line}"
    );
    // A topology with a typo is refused whole.
    std::fs::write(&file, text.replace("[edge]\n", "[edge]\nnmae = 1\n")).unwrap();
    hup();
    let line = wait_for(&mut err, "sipedge: reload refused");
    assert!(line.contains("the running configuration stays"), "{line}");
    // Every problem follows with file, line and key.
    let line = wait_for(&mut err, "edge.nmae");
    assert!(line.contains("unknown key"), "{line}");

    // Still serving; SIGTERM drains (nothing in flight) and exits 0.
    assert!(std::net::TcpStream::connect(("127.0.0.1", ext)).is_ok());
    let exit = terminate(&mut child.0);
    assert!(exit.success(), "exit status {exit}");
}

/// The systemd unit in topology/deploy verifies with `systemd-analyze verify` (the binary
/// path pointed at the one just built), runs unprivileged with CAP_NET_BIND_SERVICE only,
/// reloads with SIGHUP and drains on SIGTERM.
#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = required(
        tool_on_path("systemd-analyze"),
        "systemd-analyze",
        "apt-get install systemd",
    ) else {
        return;
    };
    let unit = std::fs::read_to_string(format!(
        "{}/topology/deploy/sipedge.service",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    for line in [
        "User=sipedge",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sipedge.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/sipedge", BIN)).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
