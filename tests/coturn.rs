//! Interop with coturn: credentials minted by `sipedge token mint` from a ring are accepted
//! by coturn (`use-auth-secret` with the ring's signing secret) for a real TURN allocation
//! made by `turnutils_uclient`, and a tampered one is refused. This proves the credential
//! format is the standard TURN REST one, and that a pool migrating from coturn (its secret
//! adopted with `sipedge keys import`) keeps working.
//!
//! coturn comes from `.ci/run` (`apt-get install coturn`); without it the test is skipped
//! on a developer machine and fails under CI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sipedge");

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    let out = Command::new(uclient)
        .args([
            "-p",
            &port.to_string(),
            "-u",
            user,
            "-w",
            pass,
            "-n",
            "5",
            "-m",
            "1",
            "-l",
            "100",
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
}

#[test]
fn coturn_accepts_credentials_minted_by_sipedge() {
    let (Some(turnserver), Some(uclient)) = (tool("turnserver"), tool("turnutils_uclient")) else {
        if std::env::var_os("CI").is_some() {
            panic!("coturn is required under CI (apt-get install coturn)");
        }
        eprintln!("SKIPPED: coturn interop needs turnserver and turnutils_uclient (apt-get install coturn)");
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

    let port = free_port();
    let relay_base = 50_000 + (std::process::id() % 100) as u16 * 100;
    let _server = Reaped(
        Command::new(&turnserver)
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
            .arg(format!("--static-auth-secret={coturn_secret}"))
            .arg(format!("--userdb={}", dir.path().join("turndb").display()))
            .arg(format!(
                "--pidfile={}",
                dir.path().join("turn.pid").display()
            ))
            .arg("--log-file=stdout")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("turn.log")).unwrap())
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
