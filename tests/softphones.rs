//! Two real softphones (Debian `baresip`) call each other through `sipedge run` on the
//! embedded default and its lab Director, as the README tells a newcomer to: each takes
//! the account line the edge printed (TLS to the edge as outbound proxy, the dev CA,
//! SRTP, TURN with credentials minted from the dev ring), both register, Alice calls Bob,
//! Bob answers on his own, SRTP audio flows for a few seconds through the edge's TURN
//! relay, and Alice hangs up. Skipped (with a message) without baresip or when the
//! default's ports are taken.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sipedge");

/// A baresip process and everything it printed so far.
struct Phone {
    /// Killed and reaped when the phone is dropped.
    _process: Reaped,
    out: Arc<Mutex<String>>,
    control: SocketAddr,
}

impl Phone {
    /// baresip with a config of its own in `dir`: this account, sine audio in, a file out,
    /// G.711, SRTP, TURN, and the TCP control socket.
    fn start(dir: &Path, account: &str, ca: &str, sip_port: u16, control_port: u16) -> Phone {
        std::fs::create_dir_all(dir).unwrap();
        let config = format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:{sip_port}\n\
             sip_cafile {ca}\n\
             audio_source ausine,440\n\
             audio_player aufile,{played}\n\
             audio_alert aufile,{alert}\n\
             rtp_stats yes\n\
             module_path /usr/lib/baresip/modules\n\
             module opus.so\n\
             module g711.so\n\
             module ausine.so\n\
             module aufile.so\n\
             module srtp.so\n\
             module stun.so\n\
             module turn.so\n\
             module ctrl_tcp.so\n\
             module_tmp account.so\n\
             module_app menu.so\n\
             ctrl_tcp_listen 127.0.0.1:{control_port}\n",
            played = dir.join("played.wav").display(),
            alert = dir.join("alert.wav").display(),
        );
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(dir)
            .arg("-s")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Phone {
            _process: Reaped(child),
            out,
            control: ([127, 0, 0, 1], control_port).into(),
        }
    }

    fn printed(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits (up to `wait`) until it printed something containing `what`.
    fn wait_for(&self, what: &str, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if self.printed().contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// A command on baresip's control socket (a netstring of JSON).
    fn command(&self, command: &str, params: &str) {
        let json = format!("{{\"command\":\"{command}\",\"params\":\"{params}\",\"token\":\"t\"}}");
        let mut tcp = std::net::TcpStream::connect(self.control).unwrap();
        tcp.write_all(format!("{}:{json},", json.len()).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_baresip_softphones_call_each_other_through_the_lab_with_srtp_over_turn() {
    let found = tool_on_path("baresip");
    if required(
        found,
        "baresip",
        "apt-get install --no-install-recommends baresip-core",
    )
    .is_none()
    {
        return;
    }
    let _ports = default_ports();
    if !default_ports_free() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let (mut edge, seen) = run_default(BIN, state.path());
    let (mut alice, mut bob, mut ca) = (None, None, None);
    for line in &seen {
        if let Some(account) = line.strip_prefix("sipedge: baresip account for alice: ") {
            alice = Some(account.to_string());
        }
        if let Some(account) = line.strip_prefix("sipedge: baresip account for bob: ") {
            bob = Some(account.to_string());
        }
        if let Some(rest) = line.split(", trust ").nth(1) {
            ca = Some(rest.trim().to_string());
        }
    }
    let (Some(alice), Some(bob), Some(ca)) = (alice, bob, ca) else {
        panic!("the edge printed no accounts");
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let healthy = rt.block_on(async {
        for _ in 0..300 {
            if http_get("127.0.0.2:9095", "/healthz")
                .await
                .starts_with("HTTP/1.1 200 ")
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    assert!(healthy, "the lab Director never came up behind the edge");

    let dir = tempfile::tempdir().unwrap();
    let bob = Phone::start(
        &dir.path().join("bob"),
        &format!("{bob};answermode=auto"),
        &ca,
        free_tcp_port("127.0.0.1"),
        free_tcp_port("127.0.0.1"),
    );
    assert!(
        bob.wait_for("200 OK", Duration::from_secs(15)),
        "bob did not register:\n{}",
        bob.printed()
    );
    let alice = Phone::start(
        &dir.path().join("alice"),
        &alice,
        &ca,
        free_tcp_port("127.0.0.1"),
        free_tcp_port("127.0.0.1"),
    );
    assert!(
        alice.wait_for("200 OK", Duration::from_secs(15)),
        "alice did not register:\n{}",
        alice.printed()
    );
    alice.command("dial", "sip:bob@sipedge.test");
    let established = alice.wait_for("Call established", Duration::from_secs(20));
    assert!(
        established,
        "no call:\nalice:\n{}\nbob:\n{}",
        alice.printed(),
        bob.printed()
    );
    // Audio for a while, then Alice hangs up.
    std::thread::sleep(Duration::from_secs(4));
    let metrics = rt.block_on(http_get("127.0.0.2:9095", "/metrics"));
    alice.command("hangup", "");
    let tail = |text: String| {
        text.chars()
            .rev()
            .take(4000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    };
    assert!(
        bob.wait_for("terminated", Duration::from_secs(10))
            || bob.wait_for("closed", Duration::from_secs(1)),
        "bob's side did not end:\n{}\nalice:\n{}",
        tail(bob.printed()),
        tail(alice.printed())
    );
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let relayed = value("sipedge_turn_relayed_packets_total");
    // 4 s of 50 packets a second each way, from each phone's relay to the other's.
    assert!(
        relayed >= 200,
        "{relayed} packets relayed:\n{metrics}\nalice:\n{}",
        alice.printed()
    );
    let trace = alice.printed();
    assert!(trace.contains("RTP/SAVP"), "SRTP offered:\n{trace}");
    assert!(
        trace.contains("a=crypto:"),
        "SRTP keys in the SDP:\n{trace}"
    );
    // Both offered the relay's address: the media port in each SDP is a relayed port (the
    // embedded default relays on 50000-59999).
    let ports: Vec<u16> = trace
        .lines()
        .filter_map(|l| l.strip_prefix("m=audio "))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    assert!(
        ports.len() >= 2 && ports.iter().all(|p| (50_000..=59_999).contains(p)),
        "media on relayed ports: {ports:?}"
    );
    // Both ends sent and received audio (baresip's own count at hang-up).
    assert!(
        bob.printed()
            .contains("Call with sip:alice@sipedge.test terminated"),
        "{}",
        tail(bob.printed())
    );
    drop(alice);
    drop(bob);
    let _ = Command::new("kill")
        .args(["-TERM", &edge.0.id().to_string()])
        .status();
    let _ = edge.0.wait();
}
