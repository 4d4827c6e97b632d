//! DNS for federation: where a partner edge is. RFC 3263 as federation uses it: SRV
//! `_sipfederationtls._tcp.<domain>` (lowest priority first, heavier weight first), each
//! target's A/AAAA records on the SRV port; without SRV records, the partner edge's FQDN on
//! 5061. hickory's resolver caches answers for their TTLs. The certificate is verified
//! against the partner's FQDN from the topology whatever DNS says, so DNS only chooses
//! addresses, never identity.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

/// The SIP-over-TLS port (RFC 3261 §19.1.2).
const SIPS_PORT: u16 = 5061;

/// The resolver partner lookups go through.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// The system's resolver configuration (`/etc/resolv.conf`), or the name servers the
    /// topology names (`ip:port`, UDP then TCP).
    pub fn new(servers: &[SocketAddr]) -> std::io::Result<Dns> {
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(std::io::Error::other)?
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder.build().map_err(std::io::Error::other)?;
        Ok(Dns { resolver })
    }

    /// The addresses of `domain`'s federation edge in the order to try them, each with the
    /// host name it was found under. With `fqdn` (an allowed partner server) any SRV target
    /// will do and the FQDN is the fallback; without (an allowed partner domain) only
    /// targets within the domain count (DNS must not choose whose certificate is
    /// accepted), and the domain itself is the fallback (RFC 3263 §4.2).
    pub async fn partner_edge(
        &self,
        domain: &str,
        fqdn: Option<&str>,
    ) -> Vec<(SocketAddr, String)> {
        let mut targets: Vec<(String, u16)> = self
            .srv(domain)
            .await
            .into_iter()
            .filter(|(target, _)| {
                fqdn.is_some() || crate::core::sip::federation::within(target.as_bytes(), domain)
            })
            .collect();
        if targets.is_empty() {
            targets.push((fqdn.unwrap_or(domain).to_string(), SIPS_PORT));
        }
        let mut out = Vec::new();
        for (host, port) in targets {
            for ip in self.ips(&host).await {
                let addr = SocketAddr::new(ip, port);
                if !out.iter().any(|(a, _)| *a == addr) {
                    out.push((addr, host.clone()));
                }
            }
        }
        out
    }

    /// The addresses of one host (an edge a Route names), with its name.
    pub async fn host(&self, host: &str, port: u16) -> Vec<(SocketAddr, String)> {
        self.ips(host)
            .await
            .into_iter()
            .map(|ip| (SocketAddr::new(ip, port), host.to_string()))
            .collect()
    }

    /// SRV targets and ports, best first (RFC 2782: lowest priority, then highest weight).
    async fn srv(&self, domain: &str) -> Vec<(String, u16)> {
        let name = format!("_sipfederationtls._tcp.{domain}.");
        let Ok(lookup) = self.resolver.srv_lookup(name.as_str()).await else {
            return Vec::new();
        };
        let mut records: Vec<(u16, u16, String, u16)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some((
                    srv.priority,
                    srv.weight,
                    srv.target.to_ascii().trim_end_matches('.').to_string(),
                    srv.port,
                )),
                _ => None,
            })
            // "." as the target: the service is decidedly not available (RFC 2782).
            .filter(|(_, _, target, _)| !target.is_empty())
            .collect();
        records.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        records.into_iter().map(|(_, _, t, p)| (t, p)).collect()
    }

    async fn ips(&self, host: &str) -> Vec<IpAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return vec![ip];
        }
        let name = format!("{host}.");
        match self.resolver.lookup_ip(name.as_str()).await {
            Ok(found) => found.iter().collect(),
            Err(_) => Vec::new(),
        }
    }
}
