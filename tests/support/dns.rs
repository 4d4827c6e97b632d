//! A tiny authoritative DNS server for the federation tests (SRV and A records).

use super::*;

/// A tiny authoritative DNS server on UDP for tests: answers the SRV and A records it was
/// given (TTL 60), NXDOMAIN for anything else, and counts the questions by name.
pub struct DnsStub {
    pub addr: SocketAddr,
    pub asked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsStub {
    /// `srv`: (service name, priority, weight, port, target); `a`: (name, address).
    pub async fn start(
        at: &str,
        srv: Vec<(&str, u16, u16, u16, &str)>,
        a: Vec<(&str, std::net::Ipv4Addr)>,
    ) -> DnsStub {
        use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
        use hickory_resolver::proto::rr::rdata::{A as ARecord, SRV};
        use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
        let sock = tokio::net::UdpSocket::bind(format!("{at}:0"))
            .await
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let norm = |n: &str| n.trim_end_matches('.').to_ascii_lowercase();
        let srv: Vec<(String, u16, u16, u16, String)> = srv
            .into_iter()
            .map(|(n, p, w, port, t)| (norm(n), p, w, port, t.to_string()))
            .collect();
        let a: Vec<(String, std::net::Ipv4Addr)> =
            a.into_iter().map(|(n, ip)| (norm(n), ip)).collect();
        let log = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut answer = Message::new(
                    query.metadata.id,
                    MessageType::Response,
                    query.metadata.op_code,
                );
                answer.metadata.authoritative = true;
                answer.metadata.recursion_desired = query.metadata.recursion_desired;
                answer.metadata.recursion_available = true;
                let mut found = false;
                for q in &query.queries {
                    let name = norm(&q.name().to_ascii());
                    log.lock()
                        .unwrap()
                        .push(format!("{:?} {name}", q.query_type()));
                    answer.add_query(q.clone());
                    let owner = q.name().clone();
                    match q.query_type() {
                        RecordType::SRV => {
                            for (_, p, w, port, t) in srv.iter().filter(|r| r.0 == name) {
                                let target = Name::from_ascii(format!("{t}.")).unwrap();
                                answer.add_answer(Record::from_rdata(
                                    owner.clone(),
                                    60,
                                    RData::SRV(SRV::new(*p, *w, *port, target)),
                                ));
                                found = true;
                            }
                        }
                        RecordType::A => {
                            for (_, ip) in a.iter().filter(|r| r.0 == name) {
                                answer.add_answer(Record::from_rdata(
                                    owner.clone(),
                                    60,
                                    RData::A(ARecord(*ip)),
                                ));
                                found = true;
                            }
                        }
                        _ => {}
                    }
                }
                if !found {
                    answer.metadata.response_code = ResponseCode::NXDomain;
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
        });
        DnsStub { addr, asked, task }
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}
