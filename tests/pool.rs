//! A pool of edges on a real `redis-server` (`[pool]`): a source banned on one member is
//! refused by the others; Redis going away is not an outage (members serve on, enforce
//! alone and say `degraded`); when it returns they resynchronise, and a member that joins
//! takes the bans in force.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sipedge::shell::pool_state::PoolStatus;
use sipedge::shell::{self, RunningEdge};
use sipedge::topology::{Firewall, PoolConfig};

use crate::support::*;

/// A redis-server of this test's own on a loopback port, stopped (by PID) when dropped.
pub(crate) struct Redis {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub(crate) fn start(port: u16) -> Option<Redis> {
        let server = required(
            tool_on_path("redis-server"),
            "redis-server",
            "apt-get install redis-server",
        )?;
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(server)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = Redis { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    /// Stops the server without closing its sockets (SIGSTOP): Redis slow, not gone.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `[pool]` on the test's redis-server at `port`, keys under `prefix`, a 300 ms timeout.
pub(crate) fn pool_config(port: u16, prefix: &str) -> PoolConfig {
    PoolConfig {
        redis: format!("redis://127.0.0.1:{port}/0"),
        key_prefix: prefix.into(),
        username: None,
        password: None,
        timeout: Duration::from_millis(300),
    }
}

fn firewall() -> Firewall {
    Firewall {
        connect_rate: 50,
        connect_burst: 50,
        connections_per_source: 20,
        request_rate: 5,
        request_burst: 5,
        connection_request_rate: 1000,
        connection_request_burst: 1000,
        ban_after: 5,
        strike_window: Duration::from_secs(10),
        ban_time: Duration::from_secs(120),
        allow_sources: Vec::new(),
        max_sources: 1024,
        strip_headers: Vec::new(),
    }
}

async fn member(pki: &Pki, director: &Director, name: &str, redis_port: u16) -> RunningEdge {
    let mut t = topology(pki, &[director.addr]);
    t.edge.name = name.into();
    t.firewall = firewall();
    t.pool = Some(pool_config(redis_port, "pooltest"));
    let edge = shell::start(&t)
        .await
        .expect("a member starts, whatever Redis does");
    let routes = edge.routes.clone();
    eventually("a next hop up", || routes.pool.any_up()).await;
    edge
}

fn status(edge: &RunningEdge) -> PoolStatus {
    edge.view.pool.as_ref().expect("[pool] configured").status()
}

fn banned(edge: &RunningEdge, ip: &str) -> bool {
    let ip: IpAddr = ip.parse().unwrap();
    edge.shared
        .guard
        .banned(ip, sipedge::shell::clock::now())
        .is_some()
}

/// Pipelines OPTIONS from `source` until `edge` bans it.
async fn get_banned(pki: &Pki, edge: &RunningEdge, source: &str) {
    let mut flooder = Client::connect_from(pki, edge.external, source).await;
    let mut burst = String::new();
    for n in 0..200 {
        burst.push_str(&format!(
            "OPTIONS sip:sipedge.test SIP/2.0\r\n\
             Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-flood-{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:f@sipedge.test>;tag=f\r\nTo: <sip:sipedge.test>\r\n\
             Call-ID: flood-{source}-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ));
    }
    let _ = tokio::time::timeout(WAIT, flooder.stream_write(burst.as_bytes())).await;
    eventually("the flooder banned", || banned(edge, source)).await;
}

/// Whether a TLS connection from `source` to `edge` is refused (a banned source is closed
/// before TLS).
async fn refused(pki: &Pki, edge: SocketAddr, source: &str) -> bool {
    let cfg = sipedge::tls::client_config_trusting(pki.roots(), None).unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(edge).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from(EDGE_FQDN).unwrap(),
            tcp,
        )
        .await
        .is_err()
}

/// One OPTIONS from `source` answered 200: the member serves.
async fn serves(pki: &Pki, edge: &RunningEdge, source: &str) -> bool {
    let mut c = Client::connect_from(pki, edge.external, source).await;
    c.send(
        "OPTIONS sip:sipedge.test SIP/2.0\r\n\
         Via: SIP/2.0/TLS 192.0.2.11:5061;branch=z9hG4bK-polite\r\n\
         Max-Forwards: 70\r\nFrom: <sip:p@sipedge.test>;tag=p\r\nTo: <sip:sipedge.test>\r\n\
         Call-ID: polite\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    c.recv().await.starts_with("SIP/2.0 200")
}

/// How long until `edge` holds `source` banned (polling every 10 ms, up to `WAIT`).
async fn time_until_banned(edge: &RunningEdge, source: &str) -> Duration {
    let start = Instant::now();
    eventually("the ban reaches the other member", || banned(edge, source)).await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_cross_the_pool_and_redis_away_is_not_an_outage() {
    let port = free_tcp_port("127.0.0.1");
    let Some(mut redis) = Redis::start(port) else {
        return;
    };
    let pki = Pki::new();
    let director = Director::start(&pki).await.answering_ok();
    let a = member(&pki, &director, "edge-a", port).await;
    let b = member(&pki, &director, "edge-b", port).await;
    eventually("both members on Redis", || {
        status(&a) == PoolStatus::Up && status(&b) == PoolStatus::Up
    })
    .await;

    // Banned on A: refused by B too, within a second (the outbox is published every 100 ms).
    get_banned(&pki, &a, "127.0.0.40").await;
    let took = time_until_banned(&b, "127.0.0.40").await;
    eprintln!("a ban on A reached B in {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(
        refused(&pki, b.external, "127.0.0.40").await,
        "B refuses it"
    );
    assert!(
        serves(&pki, &b, "127.0.0.41").await,
        "and serves everyone else"
    );
    assert!(shell::ops::metrics(&b.view, shell::clock::now())
        .contains("sipedge_pool_bans_received_total 1\n"));

    // Redis away: both serve on, alone, and say so.
    redis.stop();
    eventually("both members degraded", || {
        status(&a) == PoolStatus::Degraded && status(&b) == PoolStatus::Degraded
    })
    .await;
    assert!(
        serves(&pki, &a, "127.0.0.42").await,
        "A serves without Redis"
    );
    assert!(shell::ops::metrics(&a.view, shell::clock::now()).contains("sipedge_pool_degraded 1\n"));
    assert!(shell::ops::status(&a.view, shell::clock::now()).contains("\"redis\": \"degraded\""));
    // A ban while Redis is away holds where it happened.
    get_banned(&pki, &b, "127.0.0.43").await;
    assert!(!banned(&a, "127.0.0.43"));

    // Redis back (empty): the members resynchronise, each publishing the bans in force.
    let _redis = Redis::start(port).expect("redis-server again");
    eventually("both members back on Redis", || {
        status(&a) == PoolStatus::Up && status(&b) == PoolStatus::Up
    })
    .await;
    eventually("B's ban from the outage reaches A", || {
        banned(&a, "127.0.0.43")
    })
    .await;
    // A member that joins now takes every ban in force.
    let c = member(&pki, &director, "edge-c", port).await;
    eventually("C on Redis", || status(&c) == PoolStatus::Up).await;
    eventually("C holds both bans", || {
        banned(&c, "127.0.0.40") && banned(&c, "127.0.0.43")
    })
    .await;
    assert!(refused(&pki, c.external, "127.0.0.40").await);
    for edge in [a, b, c] {
        edge.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_starts_and_serves_with_redis_unreachable_or_answering_garbage() {
    // Nothing listens on this port.
    let pki = Pki::new();
    let director = Director::start(&pki).await.answering_ok();
    let port = free_tcp_port("127.0.0.1");
    let lone = member(&pki, &director, "edge-lone", port).await;
    eventually("degraded", || status(&lone) == PoolStatus::Degraded).await;
    assert!(serves(&pki, &lone, "127.0.0.44").await);
    lone.stop().await;

    // Something that is not Redis: it answers every line with garbage.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let garbage = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\xff")
                .await;
        }
    });
    let confused = member(&pki, &director, "edge-confused", port).await;
    eventually("degraded", || status(&confused) == PoolStatus::Degraded).await;
    assert!(serves(&pki, &confused, "127.0.0.45").await);
    confused.stop().await;
    garbage.abort();
}

/// TLS session tickets are sealed with the pool ring: a remote user who reconnects to
/// another member resumes its session instead of a full handshake (TLS 1.3 tickets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_its_tls_session_on_another_member() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let (ring_path, _) = ring_file(&pki);
    let director = Director::start(&pki).await.answering_ok();
    let start = || {
        let mut t = topology(&pki, &[director.addr]);
        t.keys = Some(sipedge::topology::KeysSource::File(ring_path.clone()));
        t
    };
    let a = shell::start(&start()).await.expect("member A");
    let b = shell::start(&start()).await.expect("member B");
    let routes = a.routes.clone();
    eventually("a next hop up", || routes.pool.any_up()).await;
    // One client configuration, so one session store, for both connections.
    let cfg = sipedge::tls::client_config_trusting(pki.roots(), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = rustls_pki_types::ServerName::try_from(EDGE_FQDN).unwrap();
    let connect = |edge: SocketAddr| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
            connector.connect(name, tcp).await.expect("TLS")
        }
    };
    let mut first = connect(a.external).await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // A keep-alive exchange lets the client read the tickets A sent after the handshake.
    first.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    first.read_exact(&mut pong).await.unwrap();
    let second = connect(b.external).await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "B opened A's ticket"
    );
    a.stop().await;
    b.stop().await;
}

/// Sends OPTIONS from one source alternately to members `a` and `b` for `secs` seconds
/// (each waiting for its answer); how many got 200, and how long it took.
async fn spread_over(pki: &Pki, a: &RunningEdge, b: &RunningEdge, secs: u64) -> (u32, Duration) {
    let mut clients = [
        Client::connect_from(pki, a.external, "127.0.0.60").await,
        Client::connect_from(pki, b.external, "127.0.0.60").await,
    ];
    let start = Instant::now();
    let (mut ok, mut n) = (0u32, 0u32);
    while start.elapsed() < Duration::from_secs(secs) {
        for c in clients.iter_mut() {
            n += 1;
            c.send(&format!(
                "OPTIONS sip:sipedge.test SIP/2.0\r\n\
                 Via: SIP/2.0/TLS 192.0.2.60:5061;branch=z9hG4bK-spread-{n}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:s@sipedge.test>;tag=s\r\n\
                 To: <sip:sipedge.test>\r\nCall-ID: spread-{n}\r\nCSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n"
            ))
            .await;
            if c.recv().await.starts_with("SIP/2.0 200") {
                ok += 1;
            }
        }
    }
    (ok, start.elapsed())
}

/// Per-source request rates shared approximately by counter exchange: a source spread
/// over two members gets about its rate pool-wide, within the bound the pool module states
/// (`N * burst + rate * t * (1 + (N - 1) * 0.3)`), where without the pool it gets it on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_spread_over_members_is_held_to_its_rate_within_the_bound() {
    let port = free_tcp_port("127.0.0.1");
    let Some(_redis) = Redis::start(port) else {
        return;
    };
    let pki = Pki::new();
    let director = Director::start(&pki).await.answering_ok();
    let (rate, burst) = (20u32, 5u32);
    let tune = |t: &mut sipedge::topology::Topology| {
        t.firewall.request_rate = rate;
        t.firewall.request_burst = burst;
        t.firewall.ban_after = 0; // refusals only: no ban to end the measurement
    };
    let start = |name: &'static str, pool: bool| {
        let mut t = topology(&pki, &[director.addr]);
        t.edge.name = name.into();
        t.firewall = firewall();
        tune(&mut t);
        if pool {
            t.pool = Some(pool_config(port, "ratetest"));
        }
        t
    };
    let secs = 3;
    let bound = |t: Duration| 2.0 * f64::from(burst) + f64::from(rate) * t.as_secs_f64() * 1.3;

    // Alone: each member grants the source its rate.
    let a = shell::start(&start("alone-a", false)).await.unwrap();
    let b = shell::start(&start("alone-b", false)).await.unwrap();
    let (alone, t_alone) = spread_over(&pki, &a, &b, secs).await;
    a.stop().await;
    b.stop().await;

    // Pooled: the members charge each other's admitted requests.
    let a = shell::start(&start("pool-a", true)).await.unwrap();
    let b = shell::start(&start("pool-b", true)).await.unwrap();
    eventually("both on Redis", || {
        status(&a) == PoolStatus::Up && status(&b) == PoolStatus::Up
    })
    .await;
    let (pooled, t_pooled) = spread_over(&pki, &a, &b, secs).await;
    eprintln!(
        "one source over two members for {secs} s at {rate}/s (burst {burst}): alone {alone} in {t_alone:?}, \
         pooled {pooled} in {t_pooled:?} (bound {:.0})",
        bound(t_pooled)
    );
    assert!(
        f64::from(alone) > bound(t_alone),
        "without the pool each member grants the rate: {alone}"
    );
    assert!(
        f64::from(pooled) <= bound(t_pooled),
        "pooled {pooled} above the bound {:.0}",
        bound(t_pooled)
    );
    assert!(
        f64::from(pooled) >= f64::from(rate) * t_pooled.as_secs_f64() * 0.7,
        "the source still gets its rate: {pooled}"
    );
    a.stop().await;
    b.stop().await;
}

/// Two real `sipedge run` processes of one pool (one state directory: the dev PKI and the
/// dev key ring; one Redis): a source banned by the first is refused by the second, and
/// each says on `/status` that it is on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sipedge_processes_share_a_ban() {
    use std::io::BufRead as _;
    let port = free_tcp_port("127.0.0.1");
    let Some(_redis) = Redis::start(port) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // One edge name: the dev PKI covers `<name>.internal`, and both share it.
    let toml = |_member: &str, ext: u16, int: u16, ops: u16| {
        format!(
            "state_dir = \"{state}\"\n\
             [edge]\nname = \"pool-edge\"\npool_fqdn = \"edge.sipedge.test\"\nsip_domains = [\"sipedge.test\"]\n\
             [external]\nsip = \"127.0.0.1:{ext}\"\nsip_host = \"edge.sipedge.test\"\n[external.tls]\ndev = true\n\
             [internal]\nsip = \"127.0.0.2:{int}\"\n[internal.tls]\ndev = true\n\
             [next_hop]\nmembers = [\"127.0.0.1:9\"]\nserver_name = \"director.sipedge.test\"\n\
             [firewall]\nrequest_rate = 5\nrequest_burst = 5\nban_after = 3\n\
             [operations]\nlisten = \"127.0.0.2:{ops}\"\n\
             [keys]\ndev = true\n\
             [pool]\nredis = \"redis://127.0.0.1:{port}/0\"\nkey_prefix = \"processes\"\n",
            state = state.display()
        )
    };
    let mut members = Vec::new();
    for name in ["proc-a", "proc-b"] {
        let (ext, int, ops) = (
            free_tcp_port("127.0.0.1"),
            free_tcp_port("127.0.0.2"),
            free_tcp_port("127.0.0.2"),
        );
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, toml(name, ext, int, ops)).unwrap();
        let mut child = run_topology(
            Command::new(env!("CARGO_BIN_EXE_sipedge")),
            &file,
            Stdio::null(),
        );
        // Started (the first one generates the dev PKI and ring the second reads).
        let out = child.0.stdout.take().unwrap();
        let started = std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("external TLS SIP on"));
        assert!(started, "{name} started");
        members.push((child, ext, format!("127.0.0.2:{ops}")));
    }
    for (_, _, ops) in &members {
        let deadline = Instant::now() + WAIT;
        while !http_get(ops, "/status").await.contains("\"redis\": \"up\"") {
            assert!(Instant::now() < deadline, "{ops} never on Redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let roots = {
        let ca = state.join("dev-pki/ca.pem");
        sipedge::tls::load_roots(&sipedge::topology::CaSource::Pem(ca), None).unwrap()
    };
    let tls = tokio_rustls::TlsConnector::from(
        sipedge::tls::client_config_trusting(roots, None).unwrap(),
    );
    let name = rustls_pki_types::ServerName::try_from(EDGE_FQDN).unwrap();
    let connect = |ext: u16| {
        let (tls, name) = (tls.clone(), name.clone());
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.70:0".parse().unwrap()).unwrap();
            let tcp = socket.connect(([127, 0, 0, 1], ext).into()).await.ok()?;
            tls.connect(name, tcp).await.ok()
        }
    };

    // Flood the first until it bans the source (its connection is closed).
    let (ext_a, ext_b) = (members[0].1, members[1].1);
    let mut flood = connect(ext_a).await.expect("A takes the connection");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut burst = String::new();
        for n in 0..100 {
            burst.push_str(&format!(
                "OPTIONS sip:sipedge.test SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.70:5061;branch=z9hG4bK-p{n}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:f@sipedge.test>;tag=f\r\nTo: <sip:sipedge.test>\r\n\
                 Call-ID: proc-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ));
        }
        let _ = flood.write_all(burst.as_bytes()).await;
        let mut sink = vec![0u8; 65536];
        let closed = tokio::time::timeout(WAIT, async {
            while flood.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        assert!(closed.is_ok(), "A closes the banned source's connection");
    }
    let banned_at = Instant::now();
    // The second refuses it (closed before TLS) within a second.
    loop {
        if connect(ext_b).await.is_none() {
            break;
        }
        assert!(
            banned_at.elapsed() < Duration::from_secs(1),
            "B still takes the banned source after {:?}",
            banned_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "B refused the source {:?} after A closed it",
        banned_at.elapsed()
    );
    let metrics_b = http_get(&members[1].2, "/metrics").await;
    assert!(
        metrics_b.contains("sipedge_pool_bans_received_total 1"),
        "{metrics_b}"
    );
}

/// The relay quota's scripts on a real Redis: an ask is granted while the other members'
/// live counts and this member's fit the quota; a member's count from an older change
/// never overwrites a newer one (a refresh overtaken by an ask); a count past its lease is
/// forgotten; and a refresh returns what the others hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_scripts_count_members_in_order_and_forget_the_silent() {
    let port = free_tcp_port("127.0.0.1");
    let Some(_redis) = Redis::start(port) else {
        return;
    };
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (ask, refresh) = sipedge::shell::pool_state::scripts();
    let key = "t:holds:alice";
    // ARGV: member, here, more, quota, lease ms, seq.
    let asks = |member: &str, here: u64, lease: u64, seq: u64| {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(&ask)
            .arg(1)
            .arg(key)
            .arg(member)
            .arg(here)
            .arg(1)
            .arg(3)
            .arg(lease)
            .arg(seq);
        cmd
    };
    let shared = conn.clone();
    let answer = |cmd: redis::Cmd| {
        let mut conn = shared.clone();
        async move { cmd.query_async::<(i64, i64)>(&mut conn).await.unwrap() }
    };
    assert_eq!(answer(asks("a", 1, 60_000, 10)).await, (1, 0));
    assert_eq!(answer(asks("b", 2, 60_000, 7)).await, (1, 1));
    // Three held (a: 1, b: 2): a second on a is refused, and a keeps its one.
    assert_eq!(answer(asks("a", 2, 60_000, 11)).await, (0, 2));
    // a's count as Redis holds it: "<n> <lease end> <seq>".
    let count_of_a = || {
        let mut conn = shared.clone();
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg("a")
                .query_async::<String>(&mut conn)
                .await
                .unwrap()
        }
    };
    let a = count_of_a().await;
    assert!(a.starts_with("1 ") && a.ends_with(" 11"), "{a}");
    // A refresh of a from before its last ask (seq 9 < 11) does not put back an older count.
    let mut old = redis::cmd("EVAL");
    old.arg(&refresh)
        .arg(1)
        .arg(key)
        .arg("a")
        .arg(60_000)
        .arg(9)
        .arg(0);
    let others: Vec<i64> = old.query_async(&mut conn).await.unwrap();
    assert_eq!(others, vec![2]);
    let a = count_of_a().await;
    assert!(a.starts_with("1 "), "the newer count stands: {a}");
    // A newer refresh lets go (0), and b falls silent: its lease (50 ms) ends.
    let mut let_go = redis::cmd("EVAL");
    let_go
        .arg(&refresh)
        .arg(1)
        .arg(key)
        .arg("a")
        .arg(60_000)
        .arg(12)
        .arg(0);
    let _: Vec<i64> = let_go.query_async(&mut conn).await.unwrap();
    assert_eq!(answer(asks("b", 2, 50, 8)).await, (1, 0));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        answer(asks("a", 3, 60_000, 13)).await,
        (1, 0),
        "b silent past its lease holds nothing"
    );
}
