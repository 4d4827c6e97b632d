//! What one remote user does: its TLS connection, the rounds of requests it sends, and what it counts.

use super::*;

// ---------------------------------------------------------------------------------------------
// Workload

/// Message types, in table order.
pub(crate) const TYPES: [&str; 6] = ["REGISTER", "OPTIONS", "MESSAGE", "INVITE", "ACK", "BYE"];
pub(crate) const REGISTER: usize = 0;
pub(crate) const OPTIONS: usize = 1;
pub(crate) const MESSAGE: usize = 2;
pub(crate) const INVITE: usize = 3;
pub(crate) const ACK: usize = 4;
pub(crate) const BYE: usize = 5;

/// Messages through the edge per request of each type (the request, and its answer but for ACK).
pub(crate) fn messages_per_request(t: usize) -> u64 {
    if t == ACK {
        1
    } else {
        2
    }
}

/// Counts requests by method (what a Director stub received).
#[derive(Default)]
pub(crate) struct MethodCounts([AtomicU64; 6]);

impl MethodCounts {
    pub(crate) fn add(&self, text: &str) {
        let method = text.split(' ').next().unwrap_or("");
        if let Some(i) = TYPES.iter().position(|&t| t == method) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// A user's TLS connection (to the edge, or straight to a stub for the baseline).
pub(crate) struct SipConn {
    pub(crate) stream: TlsStream<TcpStream>,
    pub(crate) buf: Vec<u8>,
    pub(crate) local: SocketAddr,
}

impl SipConn {
    pub(crate) async fn connect(
        cfg: Arc<ClientConfig>,
        name: ServerName<'static>,
        to: SocketAddr,
        source: IpAddr,
    ) -> std::io::Result<SipConn> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket.connect(to).await?;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let stream = TlsConnector::from(cfg).connect(name, tcp).await?;
        Ok(SipConn {
            stream,
            buf: Vec::with_capacity(8192),
            local,
        })
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.stream.flush().await.map_err(|e| format!("flush: {e}"))
    }

    /// The final response to the request with CSeq `cseq` (provisional ones are skipped).
    pub(crate) async fn final_response(&mut self, cseq: &str) -> Result<(u16, String), String> {
        let deadline = tokio::time::Instant::from_std(Instant::now() + ANSWER_TIMEOUT);
        loop {
            while let Some(m) = split_message(&mut self.buf) {
                let text = String::from_utf8(m).map_err(|_| "answer is not UTF-8".to_string())?;
                let Some(rest) = text.strip_prefix("SIP/2.0 ") else {
                    continue;
                };
                let status: u16 = rest
                    .get(..3)
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad status line")?;
                if status < 200 {
                    continue;
                }
                if headers(&text, "CSeq").first() != Some(&cseq) {
                    return Err(format!("answer for another CSeq (wanted {cseq}): {text:?}"));
                }
                return Ok((status, text));
            }
            let mut chunk = [0u8; 16384];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(format!("no answer to {cseq} within {ANSWER_TIMEOUT:?}")),
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Ok(Ok(0)) => return Err(format!("connection closed while waiting for {cseq}")),
                Ok(Ok(n)) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Failures: all counted, the first few kept for the report.
#[derive(Clone, Default)]
pub(crate) struct Failures {
    pub(crate) count: u64,
    pub(crate) first: Vec<String>,
}

impl Failures {
    const KEEP: usize = 10;

    pub(crate) fn push(&mut self, what: String) {
        self.count += 1;
        if self.first.len() < Self::KEEP {
            self.first.push(what);
        }
    }

    pub(crate) fn absorb(&mut self, other: Failures, prefix: &str) {
        self.count += other.count;
        let room = Self::KEEP.saturating_sub(self.first.len());
        self.first.extend(
            other
                .first
                .into_iter()
                .take(room)
                .map(|f| format!("{prefix}{f}")),
        );
    }
}

/// What one user did.
#[derive(Default)]
pub(crate) struct UserResult {
    /// Requests sent, by type.
    pub(crate) sent: [u64; 6],
    /// Latency (µs) of request → 2xx final response, by type (ACK has none).
    pub(crate) latency_us: [Vec<u32>; 6],
    /// Non-2xx answers, missing answers, broken connections.
    pub(crate) failures: Failures,
}

/// What a step of the loop concluded.
pub(crate) enum Step {
    /// A 2xx answer (its text).
    Ok(String),
    /// A non-2xx answer: recorded; the loop goes on.
    Refused,
}

pub(crate) struct User {
    pub(crate) conn: SipConn,
    pub(crate) name: String,
    pub(crate) local: String,
    pub(crate) seq: u64,
    pub(crate) cseq: u32,
    pub(crate) result: UserResult,
}

pub(crate) const SDP_OFFER: &str = "v=0\r\n\
    o=alice 2890844526 2890844526 IN IP4 192.168.1.5\r\n\
    s=-\r\n\
    c=IN IP4 192.168.1.5\r\n\
    t=0 0\r\n\
    m=audio 49170 RTP/SAVP 0 8 101\r\n\
    a=rtpmap:0 PCMU/8000\r\n\
    a=rtpmap:8 PCMA/8000\r\n\
    a=rtpmap:101 telephone-event/8000\r\n\
    a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n";

impl User {
    /// A request's head up to and including CSeq; the caller adds the rest.
    pub(crate) fn head(
        &mut self,
        method: &str,
        ruri: &str,
        call_id: &str,
        from_tag: &str,
        to: &str,
        cseq: u32,
    ) -> String {
        self.seq += 1;
        format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/TLS {local};branch=z9hG4bK-{name}-{seq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{name}@sipedge.test>;tag={from_tag}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n",
            local = self.local,
            name = self.name,
            seq = self.seq,
        )
    }

    pub(crate) fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    /// Sends a request and waits for its final answer; `Err` ends this user's loop.
    pub(crate) async fn transact(
        &mut self,
        t: usize,
        msg: &str,
        cseq: &str,
    ) -> Result<Step, String> {
        let started = Instant::now();
        self.result.sent[t] += 1;
        self.conn.send(msg.as_bytes()).await?;
        let (status, text) = self.conn.final_response(cseq).await?;
        if (200..300).contains(&status) {
            let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.result.latency_us[t].push(us);
            Ok(Step::Ok(text))
        } else {
            self.result
                .failures
                .push(format!("{} answered {status}", TYPES[t]));
            Ok(Step::Refused)
        }
    }

    pub(crate) async fn one_round(&mut self, k: usize) -> Result<(), String> {
        let name = self.name.clone();
        let aor = format!("<sip:{name}@sipedge.test>");

        // REGISTER (one Call-ID per user, CSeq going up: RFC 3261 §10.2).
        let cseq = self.next_cseq();
        let mut m = self.head(
            "REGISTER",
            "sip:sipedge.test",
            &format!("reg-{name}@load"),
            &format!("r{name}"),
            &aor,
            cseq,
        );
        let _ = write!(
            m,
            "Contact: <sip:{name}@{};transport=tls;ob>\r\nExpires: 600\r\nSupported: path, outbound\r\nContent-Length: 0\r\n\r\n",
            self.local
        );
        self.transact(REGISTER, &m, &format!("{cseq} REGISTER"))
            .await?;

        // OPTIONS.
        let cseq = self.next_cseq();
        let mut m = self.head(
            "OPTIONS",
            "sip:bob@sipedge.test",
            &format!("opt-{name}-{k}@load"),
            &format!("o{k}"),
            "<sip:bob@sipedge.test>",
            cseq,
        );
        m.push_str("Accept: application/sdp\r\nContent-Length: 0\r\n\r\n");
        self.transact(OPTIONS, &m, &format!("{cseq} OPTIONS"))
            .await?;

        // MESSAGE.
        let cseq = self.next_cseq();
        let body = format!("hello from {name}, round {k}");
        let mut m = self.head(
            "MESSAGE",
            "sip:bob@sipedge.test",
            &format!("msg-{name}-{k}@load"),
            &format!("m{k}"),
            "<sip:bob@sipedge.test>",
            cseq,
        );
        let _ = write!(
            m,
            "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.transact(MESSAGE, &m, &format!("{cseq} MESSAGE"))
            .await?;

        // INVITE → 200 → ACK → BYE → 200.
        let call_id = format!("call-{name}-{k}@load");
        let tag = format!("i{k}");
        let cseq = self.next_cseq();
        let mut m = self.head(
            "INVITE",
            "sip:bob@sipedge.test",
            &call_id,
            &tag,
            "<sip:bob@sipedge.test>",
            cseq,
        );
        let _ = write!(
            m,
            "Contact: <sip:{name}@{};transport=tls;ob>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_OFFER}",
            self.local,
            SDP_OFFER.len()
        );
        let Step::Ok(ok) = self.transact(INVITE, &m, &format!("{cseq} INVITE")).await? else {
            return Ok(());
        };
        // The dialog: the UAS's To (with its tag), and the route set from Record-Route, reversed.
        let to = headers(&ok, "To")
            .first()
            .map(|s| s.to_string())
            .ok_or("200 OK without To")?;
        let mut route: Vec<String> = headers(&ok, "Record-Route")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_string())
            .collect();
        route.reverse();
        let route = if route.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", route.join(", "))
        };

        let mut m = self.head("ACK", "sip:bob@sipedge.test", &call_id, &tag, &to, cseq);
        let _ = write!(m, "{route}Content-Length: 0\r\n\r\n");
        self.result.sent[ACK] += 1;
        self.conn.send(m.as_bytes()).await?;

        let cseq = self.next_cseq();
        let mut m = self.head("BYE", "sip:bob@sipedge.test", &call_id, &tag, &to, cseq);
        let _ = write!(m, "{route}Content-Length: 0\r\n\r\n");
        self.transact(BYE, &m, &format!("{cseq} BYE")).await?;
        Ok(())
    }
}

/// When to run rounds: `None` as fast as answers come, else one round per tick.
pub(crate) struct Pace {
    pub(crate) start: Instant,
    pub(crate) deadline: Instant,
    /// Rounds per second per user (0 = closed loop).
    pub(crate) rate: f64,
    pub(crate) users: usize,
}

pub(crate) async fn run_user(conn: SipConn, index: usize, rounds: usize, pace: Pace) -> UserResult {
    let mut user = User {
        local: conn.local.to_string(),
        conn,
        name: format!("u{index}"),
        seq: 0,
        cseq: 0,
        result: UserResult::default(),
    };
    // Paced users start spread over one period, so ticks do not all fall together.
    let mut ticker = (pace.rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / pace.rate);
        let offset = period.mul_f64(index as f64 / pace.users as f64);
        let mut t =
            tokio::time::interval_at(tokio::time::Instant::from_std(pace.start + offset), period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    for k in 0..rounds {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        if Instant::now() >= pace.deadline {
            break;
        }
        if let Err(e) = user.one_round(k).await {
            user.result.failures.push(format!("{}: {e}", user.name));
            break;
        }
    }
    let _ = user.conn.stream.shutdown().await;
    user.result
}
