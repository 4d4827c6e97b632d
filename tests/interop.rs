//! Interoperability with real SIP peers: SIPp as a remote user and as the Director, through
//! the edge. Debian's SIPp has no TLS, so stunnel4 wraps each side: the remote user's SIPp
//! speaks TCP to an stunnel client that does TLS to the edge's external listener; the edge's
//! mutual-TLS pool connection ends at an stunnel server (the Director's certificate,
//! requiring the edge's client certificate) in front of SIPp in server mode.
//!
//! ```text
//! sipp uac --tcp--> stunnel (client) --TLS--> edge ext 127.0.0.1 | edge int 127.0.0.2
//!                                                      --mTLS--> stunnel (server) --tcp--> sipp uas
//! ```
//!
//! The tools come from `.ci/run` (`apt-get install sip-tester stunnel4`). Without them the
//! test is skipped with a message on a developer machine and fails under CI (`CI` set).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sipedge::shell;
use sipedge::tls::DevRole;

use crate::support::*;

fn spawn(name: &'static str, cmd: &mut Command) -> Reaped {
    let child = cmd
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Reaped(child)
}

/// stdout and stderr of a helper process into `work/<name>.log`.
fn quiet<'a>(cmd: &'a mut Command, work: &Path, name: &str) -> &'a mut Command {
    let log = std::fs::File::create(work.join(format!("{name}.log"))).unwrap();
    let err = log.try_clone().unwrap();
    cmd.stdout(log).stderr(err)
}

/// The tools, or `None` (skip) outside CI. Under CI a missing tool is a failure: the
/// interop proof must not silently vanish.
fn tools() -> Option<(PathBuf, PathBuf)> {
    match (
        tool_on_path("sipp"),
        tool_on_path("stunnel4").or_else(|| tool_on_path("stunnel")),
    ) {
        (Some(sipp), Some(stunnel)) => Some((sipp, stunnel)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("sipp and stunnel4 are required under CI (apt-get install sip-tester stunnel4)")
        }
        _ => {
            eprintln!("SKIPPED: SIPp interop needs `sipp` and `stunnel4` (apt-get install sip-tester stunnel4)");
            None
        }
    }
}

/// Waits until something accepts TCP connections at `addr` (stunnel and SIPp start
/// asynchronously).
fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn logs(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if name.ends_with(".log") || name.ends_with(".out") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: String = text
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            out.push_str(&format!("----- {name} -----\n{tail}\n"));
        }
    }
    out
}

/// Runs a SIPp client scenario to completion (bounded by SIPp's own -timeout) and returns
/// whether every call succeeded.
fn run_uac(
    sipp: &Path,
    work: &Path,
    scenario: &str,
    target: SocketAddr,
    calls: u32,
    rate: u32,
) -> bool {
    let port = free_tcp_port("127.0.0.1");
    let status = Command::new(sipp)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(work.join(format!("{scenario}.out"))).unwrap())
        .stderr(Stdio::inherit())
        .args([&target.to_string(), "-sf"])
        .arg(scenario_path(scenario))
        .args([
            "-t",
            "t1",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-s",
            "bob",
        ])
        .args([
            "-m",
            &calls.to_string(),
            "-r",
            &rate.to_string(),
            "-l",
            "20",
        ])
        .args(["-timeout", "30s", "-timeout_error", "-recv_timeout", "5000"])
        .args(["-nostdin", "-trace_err", "-trace_stat", "-fd", "1"])
        .status()
        .expect("run sipp uac");
    status.success()
}

fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(format!("{name}.xml"))
}

#[test]
fn sipp_calls_and_options_cross_the_edge_through_stunnel() {
    let Some((sipp, stunnel)) = tools() else {
        return;
    };
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let ca = pki.pki.ca_cert.display().to_string();

    // The Director: SIPp in server mode behind an stunnel server requiring the edge's
    // client certificate from our CA.
    let uas_port = free_tcp_port("127.0.0.1");
    let director_port = free_tcp_port("127.0.0.1");
    let _uas = spawn(
        "sipp uas",
        Command::new(&sipp)
            .current_dir(dir)
            .stdout(std::fs::File::create(dir.join("uas.out")).unwrap())
            .arg("-sf")
            .arg(scenario_path("uas_director"))
            .args(["-t", "t1", "-i", "127.0.0.1", "-p", &uas_port.to_string()])
            .args(["-timeout", "60s", "-nostdin", "-trace_err"]),
    );
    let (dcert, dkey) = pki.pki.files(DevRole::Director);
    let server_conf = dir.join("director-stunnel.conf");
    std::fs::write(
        &server_conf,
        format!(
            "foreground = yes\npid =\noutput = {out}\ndebug = 5\n\n[director]\naccept = 127.0.0.1:{director_port}\n\
             connect = 127.0.0.1:{uas_port}\ncert = {cert}\nkey = {key}\nCAfile = {ca}\nverifyChain = yes\nrequireCert = yes\n",
            out = dir.join("director-stunnel.log").display(),
            cert = dcert.display(),
            key = dkey.display(),
        ),
    )
    .unwrap();
    let _director_tls = spawn(
        "stunnel server",
        quiet(
            Command::new(&stunnel).arg(&server_conf),
            dir,
            "director-stunnel-console",
        ),
    );
    let director: SocketAddr = format!("127.0.0.1:{director_port}").parse().unwrap();
    wait_listening(format!("127.0.0.1:{uas_port}").parse().unwrap(), "sipp uas");
    wait_listening(director, "stunnel server");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let edge = rt.block_on(async {
        let edge = shell::start(&topology(&pki, &[director]))
            .await
            .expect("edge starts");
        let routes = edge.routes.clone();
        eventually(
            "the SIPp Director up (probes answered through stunnel)",
            || routes.pool.any_up(),
        )
        .await;
        edge
    });

    // The remote user: SIPp over TCP into an stunnel client that verifies the edge's
    // certificate by name and speaks TLS to the external listener.
    let user_port = free_tcp_port("127.0.0.3");
    let client_conf = dir.join("user-stunnel.conf");
    std::fs::write(
        &client_conf,
        format!(
            "foreground = yes\npid =\noutput = {out}\ndebug = 5\n\n[user]\nclient = yes\naccept = 127.0.0.3:{user_port}\n\
             connect = {ext}\nCAfile = {ca}\nverifyChain = yes\ncheckHost = {EDGE_FQDN}\nsni = {EDGE_FQDN}\n",
            out = dir.join("user-stunnel.log").display(),
            ext = edge.external,
        ),
    )
    .unwrap();
    let _user_tls = spawn(
        "stunnel client",
        quiet(
            Command::new(&stunnel).arg(&client_conf),
            dir,
            "user-stunnel-console",
        ),
    );
    let user: SocketAddr = format!("127.0.0.3:{user_port}").parse().unwrap();
    wait_listening(user, "stunnel client");

    let calls = 20;
    let calls_ok = run_uac(&sipp, dir, "uac_call", user, calls, 10);
    let options_ok = run_uac(&sipp, dir, "uac_options", user, 10, 10);
    let stats = &edge.shared.stats;
    let forwarded_out = stats
        .forwarded_from_external
        .load(std::sync::atomic::Ordering::Relaxed);
    let forwarded_in = stats
        .forwarded_from_internal
        .load(std::sync::atomic::Ordering::Relaxed);
    let rejected = stats
        .rejected_external
        .load(std::sync::atomic::Ordering::Relaxed)
        + stats
            .rejected_internal
            .load(std::sync::atomic::Ordering::Relaxed);
    rt.block_on(edge.stop());
    assert!(
        calls_ok && options_ok,
        "SIPp reported failures (calls ok: {calls_ok}, options ok: {options_ok}); edge forwarded {forwarded_out} in, {forwarded_in} out, rejected {rejected}\n{}",
        logs(dir)
    );
    // INVITE, ACK, BYE per call and each OPTIONS went in; 180, 200, 200 per call and each
    // OPTIONS' 200 came back.
    assert_eq!(forwarded_out, u64::from(calls) * 3 + 10, "{}", logs(dir));
    assert!(forwarded_in >= u64::from(calls) * 3 + 10, "{}", logs(dir));
    assert_eq!(rejected, 0, "{}", logs(dir));
}
