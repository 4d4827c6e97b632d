//! The `[external]` and `[internal]` tables: each zone's SIP listener, the host name it
//! puts in Via and Record-Route, and its `tls` table (a PEM pair, a PKCS#12 bundle with
//! its password from the environment or a file, or the dev PKI; inside, the CA peers chain
//! to).

use std::net::SocketAddr;
use std::path::Path;

use super::fields::valid_dns_name;
use crate::topology::model::{CaSource, CertSource, Edge, ExternalIface, InternalIface, Secret};
use crate::topology::reader::{Doc, Section};
use crate::topology::StateEnv;

pub(super) const IFACE_KEYS: &[&str] = &["sip", "sip_host", "tls"];
pub(super) const INTERNAL_TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "pkcs12",
    "password_env",
    "password_file",
    "dev",
    "ca",
];
/// The same but the last, `ca`: outside, the CA that partners chain to is `[federation]`'s.
pub(super) const EXTERNAL_TLS_KEYS: &[&str] = match INTERNAL_TLS_KEYS.split_last() {
    Some((_ca, rest)) => rest,
    None => &[],
};

pub(super) fn read_external(
    doc: &mut Doc<'_>,
    root: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
    edge: Option<&Edge>,
) -> Option<ExternalIface> {
    let zone = read_zone(doc, root, base, env, false)?;
    let sip_host = match zone.sip_host {
        Some(host) => host,
        None => edge?.pool_fqdn.clone(),
    };
    Some(ExternalIface {
        sip_bind: zone.sip_bind,
        sip_host,
        cert: zone.cert,
    })
}

pub(super) fn read_internal(
    doc: &mut Doc<'_>,
    root: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
) -> Option<InternalIface> {
    let zone = read_zone(doc, root, base, env, true)?;
    let sip_host = match zone.sip_host {
        Some(host) => host,
        None => host_of(zone.sip_bind),
    };
    Some(InternalIface {
        sip_bind: zone.sip_bind,
        sip_host,
        cert: zone.cert,
        ca: zone.ca?,
    })
}

/// What both zones' tables hold alike. `sip_host` is `None` when absent: each zone
/// defaults it its own way.
struct Zone {
    sip_bind: SocketAddr,
    sip_host: Option<String>,
    cert: CertSource,
    ca: Option<CaSource>,
}

/// `[internal]` (whose `tls` names the CA peers chain to) or `[external]`. Every part is
/// read before any is required, so that one run reports all of the table's problems.
fn read_zone(
    doc: &mut Doc<'_>,
    root: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
    internal: bool,
) -> Option<Zone> {
    let (name, tls_name, tls_keys) = if internal {
        ("internal", "internal.tls", INTERNAL_TLS_KEYS)
    } else {
        ("external", "external.tls", EXTERNAL_TLS_KEYS)
    };
    let s = doc.table(root, name, IFACE_KEYS, true);
    let bind = doc.socket_addr(s, "sip", true);
    let host = read_host(doc, s);
    let tls = doc.table(s, tls_name, tls_keys, true);
    let (cert, ca) = read_tls(doc, tls, base, env, internal);
    let (sip_bind, _) = bind?;
    Some(Zone {
        sip_bind,
        sip_host: host?,
        cert: cert?,
        ca,
    })
}

/// `sip_host`: `Some(None)` when absent (the caller defaults it), `None` on a problem.
fn read_host(doc: &mut Doc<'_>, s: Section<'_, '_>) -> Option<Option<String>> {
    match doc.string(s, "sip_host", false) {
        None if s.has("sip_host") => None,
        None => Some(None),
        Some((host, line)) => {
            let host = host.to_ascii_lowercase();
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if valid_dns_name(&host) || bare.parse::<std::net::IpAddr>().is_ok() {
                // IPv6 literals go into Via and Record-Route bracketed (RFC 3261 §25.1).
                match bare.parse::<std::net::Ipv6Addr>() {
                    Ok(v6) => Some(Some(format!("[{v6}]"))),
                    Err(_) => Some(Some(host)),
                }
            } else {
                doc.problem(
                    line,
                    s.key("sip_host"),
                    format!("\"{host}\" is neither a DNS name nor an IP address"),
                );
                None
            }
        }
    }
}

fn host_of(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}

/// One `tls` table: a PEM pair, a PKCS#12 bundle, or the dev PKI; and (internal only) the
/// CA that peers chain to.
fn read_tls(
    doc: &mut Doc<'_>,
    s: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
    wants_ca: bool,
) -> (Option<CertSource>, Option<CaSource>) {
    if !s.present() {
        return (None, None);
    }
    let dev = doc.boolean(s, "dev").is_some_and(|(b, _)| b);
    if dev {
        let mut clash = false;
        for key in [
            "cert",
            "key",
            "pkcs12",
            "password_env",
            "password_file",
            "ca",
        ] {
            if s.has(key) {
                let line = doc.line_of_key(s, key);
                doc.problem(
                    line,
                    s.key(key),
                    "not allowed with dev = true (the dev PKI provides it)",
                );
                clash = true;
            }
        }
        return if clash {
            (None, None)
        } else {
            (Some(CertSource::Dev), Some(CaSource::Dev))
        };
    }
    let pem = s.has("cert") || s.has("key");
    let p12 = s.has("pkcs12");
    let cert = match (pem, p12) {
        (true, true) => {
            let line = doc.line_of_key(s, "pkcs12");
            doc.problem(
                line,
                s.key("pkcs12"),
                "give either cert and key (PEM) or pkcs12, not both",
            );
            None
        }
        (true, false) => {
            for key in ["password_env", "password_file"] {
                if s.has(key) {
                    let line = doc.line_of_key(s, key);
                    doc.problem(line, s.key(key), "only for pkcs12 (PEM keys must be unencrypted, protected by file permissions)");
                }
            }
            let cert = doc.string(s, "cert", true);
            let key = doc.string(s, "key", true);
            match (cert, key) {
                (Some((cert, _)), Some((key, _))) => Some(CertSource::Pem {
                    cert: base.join(cert),
                    key: base.join(key),
                }),
                _ => None,
            }
        }
        (false, true) => {
            let path = doc.string(s, "pkcs12", true);
            let password = read_password(doc, s, base, env);
            match (path, password) {
                (Some((path, _)), Some(password)) => Some(CertSource::Pkcs12 {
                    path: base.join(path),
                    password,
                }),
                _ => None,
            }
        }
        (false, false) => {
            doc.problem(
                doc.line_of_key(s, "cert"),
                s.key("cert"),
                "missing: set cert and key (PEM), or pkcs12 with password_env or password_file, or dev = true",
            );
            None
        }
    };
    let ca = if wants_ca {
        doc.string(s, "ca", true)
            .map(|(ca, _)| CaSource::Pem(base.join(ca)))
    } else {
        None
    };
    (cert, ca)
}

/// The PKCS#12 password: from an environment variable or a file, never from the topology
/// itself (topologies get copied into tickets and repositories).
pub(super) fn read_password(
    doc: &mut Doc<'_>,
    s: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
) -> Option<Secret> {
    let from_env = doc.string(s, "password_env", false);
    let from_file = doc.string(s, "password_file", false);
    match (from_env, from_file) {
        (Some(_), Some((_, line))) => {
            doc.problem(
                line,
                s.key("password_file"),
                "give password_env or password_file, not both",
            );
            None
        }
        (Some((var, line)), None) => match env.var(&var) {
            Some(value) => Some(Secret::from(value)),
            None => {
                doc.problem(
                    line,
                    s.key("password_env"),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, Some((file, line))) => {
            let path = base.join(file);
            match std::fs::read_to_string(&path) {
                // One trailing newline is what `echo pw > file` leaves; it is not part of it.
                Ok(text) => Some(Secret::from(
                    text.strip_suffix('\n')
                        .unwrap_or(&text)
                        .trim_end_matches('\r'),
                )),
                Err(e) => {
                    doc.problem(
                        line,
                        s.key("password_file"),
                        format!("{}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => {
            if !s.has("password_env") && !s.has("password_file") {
                let line = doc.line_of_key(s, "pkcs12");
                doc.problem(
                    line,
                    s.key("password_env"),
                    "pkcs12 needs password_env or password_file",
                );
            }
            None
        }
    }
}
