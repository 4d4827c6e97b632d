use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::*;

const TWO_NIC: &str = include_str!("../../topology/examples/two-nic-edge.toml");

fn env() -> StateEnv {
    StateEnv::default()
        .with("SIPEDGE_STATE_DIR", "/tmp/sipedge-state")
        .with("SIPEDGE_EXTERNAL_PFX_PASSWORD", "pfx-pass")
}

fn problems(text: &str) -> Vec<(usize, String, String)> {
    match parse(text, Some(Path::new("t.toml")), &env()) {
        Ok(t) => panic!("expected problems, got {t:?}"),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| (p.line, p.key, p.message))
            .collect(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The problems `found` name these keys, in this order.
fn assert_keys(found: &[(usize, String, String)], keys: &[&str]) {
    let named: Vec<_> = found.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(named, keys, "{found:?}");
}

/// The line number (1-based) of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn embedded_default_is_the_loopback_edge() {
    let t = parse(EMBEDDED_DEFAULT, None, &env()).unwrap();
    assert_eq!(t.external.sip_bind, addr("127.0.0.1:5061"));
    assert_eq!(t.internal.sip_bind, addr("127.0.0.2:5061"));
    assert_eq!(t.next_hop.members, vec![addr("127.0.0.1:5070")]);
    assert_eq!(t.next_hop.server_name, "director.sipedge.test");
    assert_eq!(t.edge.pool_fqdn, "edge.sipedge.test");
    assert_eq!(t.edge.sip_domains, vec!["sipedge.test".to_string()]);
    assert_eq!(t.external.cert, CertSource::Dev);
    assert_eq!(t.internal.cert, CertSource::Dev);
    assert_eq!(t.internal.ca, CaSource::Dev);
    assert_eq!(t.internal.sip_host, "127.0.0.2");
    assert_eq!(t.state_dir, Path::new("/tmp/sipedge-state"));
    assert_eq!(t.limits.idle_timeout, Duration::from_secs(1800));
    assert_eq!(t.limits.max_header_bytes, 32 * 1024);
    assert_eq!(t.next_hop.probe.rise, 2);
    assert_eq!(t.next_hop.probe.fall, 3);
    assert_eq!(t.source, None);
    assert_eq!(t.operations.unwrap().listen, addr("127.0.0.2:9095"));
}

#[test]
fn two_nic_example_resolves_with_its_password_from_the_environment() {
    let t = parse(TWO_NIC, Some(Path::new("/etc/sipedge/edge.toml")), &env()).unwrap();
    assert_eq!(t.external.sip_bind, addr("203.0.113.10:5061"));
    assert_eq!(
        t.external.cert,
        CertSource::Pkcs12 {
            path: "/etc/sipedge/external.pfx".into(),
            password: Secret::from("pfx-pass"),
        }
    );
    assert_eq!(
        t.internal.ca,
        CaSource::Pem("/etc/sipedge/enterprise-ca.pem".into())
    );
    assert_eq!(t.next_hop.members.len(), 3);
    assert_eq!(t.edge.sip_domains.len(), 2);
    assert_eq!(t.state_dir, Path::new("/var/lib/sipedge"));
    assert_eq!(t.limits.idle_timeout, Duration::from_secs(1800));
    assert_eq!(t.limits.max_connections, 20_000);
    // The password never shows in Debug output (logs, panics).
    assert!(!format!("{t:?}").contains("pfx-pass"));
    let relay = t.relay.unwrap();
    assert_eq!(
        (relay.max_kbps_per_allocation, relay.max_kbps_per_user),
        (3000, 10_000)
    );
    let prefix = |p: &str| crate::core::net::Prefix::parse(p).unwrap();
    assert_eq!(relay.internal_ranges, [prefix("192.0.2.0/24")]);
    assert_eq!(relay.allow_peers, [prefix("192.0.2.128/28")]);
    assert_eq!(relay.deny_peers, [prefix("198.51.100.0/28")]);
}

#[test]
fn relay_limits_and_peer_ranges_are_checked() {
    let text = TWO_NIC
        .replace("max_kbps_per_user = 10000", "max_kbps_per_user = -1")
        .replace("\"192.0.2.128/28\"", "\"192.0.2.128/33\"")
        .replace("max_allocations = 10000", "max_allocations = 0");
    let found = problems(&text);
    assert_keys(
        &found,
        &[
            "relay.max_allocations",
            "relay.max_kbps_per_user",
            "relay.allow_peers",
        ],
    );
    assert_eq!(found[2].0, line_of(&text, "allow_peers"));
    assert!(found[2].2.contains("192.0.2.128/33"));
}

#[test]
fn missing_password_variable_is_named_with_its_line() {
    let err = parse(TWO_NIC, Some(Path::new("edge.toml")), &StateEnv::default()).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    let p = &err.problems[0];
    assert_eq!(p.key, "external.tls.password_env");
    assert_eq!(p.line, line_of(TWO_NIC, "password_env"));
    assert!(
        p.message.contains("SIPEDGE_EXTERNAL_PFX_PASSWORD"),
        "{}",
        p.message
    );
}

#[test]
fn an_unknown_key_in_every_table_is_reported_at_once() {
    // After every table header (and at the top) add a key the schema does not know.
    let mut text = String::from("bogus_root = 1\n");
    let mut expected = vec![(1, "bogus_root".to_string())];
    for line in TWO_NIC.lines() {
        text.push_str(line);
        text.push('\n');
        if let Some(table) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let key = format!("bogus_{}", table.replace('.', "_"));
            text.push_str(&format!("{key} = 1\n"));
            expected.push((text.lines().count(), format!("{table}.{key}")));
        }
    }
    let found: Vec<_> = problems(&text)
        .into_iter()
        .map(|(line, key, _)| (line, key))
        .collect();
    assert_eq!(found, expected);
    // Every table of the schema was among them (named entries count once).
    let mut tables: Vec<String> = found
        .iter()
        .filter_map(|(_, key)| key.rsplit_once('.').map(|(t, _)| t.to_string()))
        .map(|t| match t.strip_prefix("federation.partners.") {
            Some(_) => "federation.partners.NAME".to_string(),
            None => t,
        })
        .collect();
    tables.sort();
    tables.dedup();
    let mut schema: Vec<String> = schema::all_tables()
        .into_iter()
        .map(|(t, _)| t.to_string())
        .filter(|t| !t.is_empty())
        .collect();
    schema.sort();
    assert_eq!(tables, schema);
}

#[test]
fn every_table_of_the_schema_appears_in_the_two_nic_example() {
    for (table, keys) in schema::all_tables() {
        if !table.is_empty() {
            // Named entries (`federation.partners.NAME`): any entry will do.
            let header = match table.strip_suffix("NAME") {
                Some(prefix) => format!("[{prefix}"),
                None => format!("[{table}]"),
            };
            assert!(
                TWO_NIC.contains(&header),
                "{table} missing from the example"
            );
        }
        let readme = include_str!("../../topology/README.md");
        for key in keys {
            let dotted = if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            };
            let documented = readme.contains(&format!("`{dotted}`"))
                || readme.contains(&format!("`[{dotted}]`"));
            assert!(
                documented,
                "topology/README.md does not document `{dotted}`"
            );
        }
    }
}

#[test]
fn every_missing_required_key_is_reported() {
    let found = problems("[edge]\n[external]\n[internal]\n[next_hop]\n");
    let keys: Vec<_> = found.iter().map(|(_, k, _)| k.as_str()).collect();
    for key in [
        "edge.pool_fqdn",
        "edge.sip_domains",
        "external.sip",
        "external.tls",
        "internal.sip",
        "internal.tls",
        "next_hop.members",
        "next_hop.server_name",
    ] {
        assert!(keys.contains(&key), "{key} not reported in {found:?}");
    }
    let missing_tables = problems("");
    assert_eq!(missing_tables.len(), 4, "{missing_tables:?}");
}

#[test]
fn wrong_types_and_ranges_name_the_key() {
    let text = EMBEDDED_DEFAULT
        .replace("[next_hop]", "[next_hop]\nretry_after = true")
        .replace("name = \"loopback\"", "name = 7")
        + "\n[limits]\nmax_headers = 100000\nidle_timeout = \"5 fortnights\"\nmax_line_bytes = 200000\n";
    let found = problems(&text);
    assert_keys(
        &found,
        &[
            "edge.name",
            "next_hop.retry_after",
            "limits.max_headers",
            "limits.idle_timeout",
            "limits.max_line_bytes",
        ],
    );
    assert!(found[0].2.contains("expected a string, found an integer"));
    assert!(found[2].2.contains("out of range"));
    assert!(found[4].2.contains("max_header_bytes"));
}

#[test]
fn syntax_errors_are_reported_with_lines() {
    let found = problems("[edge]\nname = \"x\nname2 = 3\n[edge]\n");
    assert!(!found.is_empty());
    assert!(
        found
            .iter()
            .all(|(line, _, m)| *line >= 1 && m.starts_with("TOML syntax")),
        "{found:?}"
    );
    let dup = problems("[edge]\nname = \"a\"\nname = \"b\"\n");
    assert_eq!(dup[0].0, 3, "{dup:?}");
}

#[test]
fn tls_forms_are_exclusive() {
    let text = EMBEDDED_DEFAULT.replacen("dev = true", "dev = true\ncert = \"c.pem\"", 1);
    let found = problems(&text);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, "external.tls.cert");

    let text = EMBEDDED_DEFAULT.replacen("dev = true", "cert = \"c.pem\"\npkcs12 = \"p.pfx\"", 1);
    assert_eq!(problems(&text)[0].1, "external.tls.pkcs12");

    let text = EMBEDDED_DEFAULT.replacen("dev = true", "cert = \"c.pem\"", 1);
    assert_eq!(problems(&text)[0].1, "external.tls.key");

    let text = EMBEDDED_DEFAULT.replacen("dev = true", "pkcs12 = \"p.pfx\"", 1);
    assert_eq!(problems(&text)[0].1, "external.tls.password_env");

    // Internal PEM needs its CA.
    let text = EMBEDDED_DEFAULT.replace(
        "[internal.tls]\ndev = true",
        "[internal.tls]\ncert = \"i.pem\"\nkey = \"i.key\"",
    );
    assert_eq!(problems(&text)[0].1, "internal.tls.ca");
}

#[test]
fn relative_paths_are_relative_to_the_topology_file() {
    let text = EMBEDDED_DEFAULT.replacen(
        "dev = true",
        "cert = \"certs/ext.pem\"\nkey = \"certs/ext.key\"",
        1,
    );
    let t = parse(&text, Some(Path::new("/etc/sipedge/edge.toml")), &env()).unwrap();
    assert_eq!(
        t.external.cert,
        CertSource::Pem {
            cert: "/etc/sipedge/certs/ext.pem".into(),
            key: "/etc/sipedge/certs/ext.key".into()
        }
    );
}

#[test]
fn password_file_loses_its_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let text = EMBEDDED_DEFAULT.replacen(
        "dev = true",
        "pkcs12 = \"e.pfx\"\npassword_file = \"pw\"",
        1,
    );
    let t = parse(&text, Some(&dir.path().join("edge.toml")), &env()).unwrap();
    let CertSource::Pkcs12 { password, .. } = t.external.cert else {
        panic!()
    };
    assert_eq!(&*password, "s3cret");
}

#[test]
fn cross_checks() {
    let same_ip = EMBEDDED_DEFAULT.replace("127.0.0.2:5061", "127.0.0.1:5062");
    let found = problems(&same_ip);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, "internal.sip");
    assert_eq!(found[0].0, line_of(&same_ip, "127.0.0.1:5062"));

    let looped = EMBEDDED_DEFAULT.replace("[\"127.0.0.1:5070\"]", "[\"127.0.0.2:5061\"]");
    assert_eq!(problems(&looped)[0].1, "next_hop.members");

    let dup = EMBEDDED_DEFAULT.replace(
        "[\"127.0.0.1:5070\"]",
        "[\"127.0.0.1:5070\", \"127.0.0.1:5070\"]",
    );
    assert!(problems(&dup)[0].2.contains("twice"));

    let probe =
        EMBEDDED_DEFAULT.to_string() + "\n[next_hop.probe]\ninterval = \"1s\"\ntimeout = \"2s\"\n";
    assert_eq!(problems(&probe)[0].1, "next_hop.probe.timeout");

    let ops = EMBEDDED_DEFAULT.replace("127.0.0.2:9095", "127.0.0.1:9095");
    let found = problems(&ops);
    assert_eq!(found[0].1, "operations.listen");
    assert!(found[0].2.contains("external"), "{found:?}");

    let queue = EMBEDDED_DEFAULT.to_string() + "\n[limits]\nmax_queued_bytes = 16384\n";
    assert_eq!(problems(&queue)[0].1, "limits.max_queued_bytes");

    let wildcard = EMBEDDED_DEFAULT.replace("127.0.0.1:5061", "0.0.0.0:5061");
    assert!(problems(&wildcard)[0].2.contains("wildcard"));
}

#[test]
fn names_are_validated_and_lowercased() {
    let text = EMBEDDED_DEFAULT.replace(
        "[\"sipedge.test\"]",
        "[\"SIPEDGE.test\", \"bad_domain\", \"sipedge.TEST\"]",
    );
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().any(|p| p.2.contains("bad_domain")));
    assert!(found.iter().any(|p| p.2.contains("twice")));
    let v6 = EMBEDDED_DEFAULT.replace("127.0.0.2:5061", "[::1]:5061");
    let t = parse(&v6, None, &env()).unwrap();
    assert_eq!(t.internal.sip_host, "[::1]");
}

#[test]
fn display_names_file_line_and_key() {
    let err = parse(
        "[edge]\nbogus = 1\n",
        Some(Path::new("conf/edge.toml")),
        &env(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("conf/edge.toml:2: edge.bogus: unknown key"),
        "{text}"
    );
    assert!(text.starts_with("conf/edge.toml: "), "{text}");
}

#[test]
fn load_reports_unreadable_and_non_utf8_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(missing.problems[0].message.contains("cannot read"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, b"[edge]\nname = \"\xff\"\n").unwrap();
    let err = load(&bad).unwrap_err();
    assert_eq!(err.problems[0].line, 2);
}

#[test]
fn state_dir_defaults() {
    let e = StateEnv::default();
    assert_eq!(e.default_state_dir(), Path::new("/var/lib/sipedge"));
    let e = e.with("HOME", "/home/u");
    assert_eq!(
        e.default_state_dir(),
        Path::new("/home/u/.local/state/sipedge")
    );
    let e = e.with("XDG_STATE_HOME", "/x");
    assert_eq!(e.default_state_dir(), Path::new("/x/sipedge"));
    let e = e.with("SIPEDGE_STATE_DIR", "/s");
    assert_eq!(e.default_state_dir(), Path::new("/s"));
}

#[test]
fn locate_finds_dotted_keys() {
    assert_eq!(
        locate(TWO_NIC, "internal.tls.ca"),
        Some(line_of(TWO_NIC, "enterprise-ca.pem"))
    );
    assert_eq!(
        locate(TWO_NIC, "external.tls.pkcs12"),
        Some(line_of(TWO_NIC, "external.pfx"))
    );
    assert_eq!(locate(TWO_NIC, "external.nope"), None);
    assert_eq!(locate("[[x", "x"), None);
}

#[test]
fn deeply_nested_files_are_refused_before_parsing() {
    // Regression: a few KiB of `[[[[` overflowed a 2 MiB test thread's stack in the TOML
    // parser (found by replaying the keyring fuzz corpus in a debug build).
    let text = format!("state_dir = {}", "[".repeat(20_000));
    let found = problems(&text);
    assert_eq!(found.len(), 1);
    assert!(found[0].2.contains("nested deeper"), "{found:?}");
}

#[test]
fn federation_partners_are_read_and_every_domain_has_one_owner() {
    let t = parse(TWO_NIC, Some(Path::new("/etc/sipedge/edge.toml")), &env()).unwrap();
    let f = t.federation.unwrap();
    assert_eq!(f.ca, Some("/etc/sipedge/partner-roots.pem".into()));
    assert_eq!(f.max_connections_per_partner, 4);
    assert_eq!(f.dns, [addr("10.20.0.53:53")]);
    // Read by name: the allowed partner domain, then the allowed partner server.
    assert_eq!(f.partners.len(), 2);
    assert_eq!(f.partners[0].name, "contoso");
    assert_eq!(f.partners[0].fqdn, None);
    assert_eq!(f.partners[0].rate, 100);
    let p = &f.partners[1];
    assert_eq!(p.name, "fabrikam");
    assert_eq!(p.fqdn.as_deref(), Some("sip.fabrikam.example"));
    assert_eq!(p.domains, ["fabrikam.example", "fabrikam.test"]);
    assert_eq!(p.addresses, [addr("192.0.2.80:5061")]);
    assert_eq!(p.rate, 500);

    let ours = &t.edge.sip_domains[0];
    let text = TWO_NIC.replace(
        "domains = [\"fabrikam.example\", \"fabrikam.test\"]",
        &format!("domains = [\"fabrikam.example\", \"{ours}\"]"),
    ) + "\n[federation.partners.northwind]\nfqdn = \"SIP.Fabrikam.example\"\ndomains = [\"fabrikam.test\"]\ncolour = \"blue\"\n";
    let found = problems(&text);
    assert_keys(
        &found,
        &[
            "federation.partners.fabrikam.domains",
            "federation.partners.northwind.fqdn",
            "federation.partners.northwind.colour",
        ],
    );
    assert!(found[0].2.contains("this edge"), "{found:?}");
    // Partners are read by name: fabrikam claimed the FQDN first.
    assert!(found[1].2.contains("partner fabrikam's edge"), "{found:?}");
    assert_eq!(
        found[0].0,
        line_of(&text, &format!("\"fabrikam.example\", \"{ours}\""))
    );
    assert!(found[2].2.contains("unknown key"));
}

#[test]
fn federation_needs_partners_with_fqdn_and_domains() {
    let base = EMBEDDED_DEFAULT.to_string();
    let found = problems(&(base.clone() + "\n[federation]\n"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, "federation.partners");
    let found =
        problems(&(base + "\n[federation.partners.x]\nfqdn = \"not a name\"\ndomains = []\n"));
    assert_keys(
        &found,
        &[
            "federation.partners.x.fqdn",
            "federation.partners.x.domains",
        ],
    );
}

#[test]
fn an_allowed_partner_domain_takes_no_static_addresses() {
    let text = EMBEDDED_DEFAULT.to_string()
        + "\n[federation.partners.x]\ndomains = [\"x.example\"]\naddresses = [\"192.0.2.1:5061\"]\n";
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, "federation.partners.x.addresses");
    assert_eq!(found[0].0, line_of(&text, "addresses ="));
    assert!(found[0].2.contains("fqdn"));
}

#[test]
fn a_relay_listener_serves_the_zone_of_its_interface_and_an_unclear_one_is_refused() {
    let t = parse(TWO_NIC, Some(Path::new("/etc/sipedge/edge.toml")), &env()).unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(
        t.listener_zone(ip("203.0.113.10")),
        Some(ListenerZone::External)
    );
    assert_eq!(
        t.listener_zone(ip("2001:db8:10::10")),
        Some(ListenerZone::External)
    );
    assert_eq!(
        t.listener_zone(ip("10.20.0.10")),
        Some(ListenerZone::Internal)
    );
    assert_eq!(t.listener_zone(ip("203.0.113.99")), None);
    assert_eq!(t.listener_zone(ip("0.0.0.0")), None);

    // A third address, the unspecified address and one claimed by both zones are refused,
    // naming the key and its line.
    for (listen, key, says) in [
        (
            "listen_udp = [\"203.0.113.99:3478\"]",
            "relay.listen_udp",
            "neither interface",
        ),
        (
            "listen_tcp = [\"0.0.0.0:443\"]",
            "relay.listen_tcp",
            "wildcard",
        ),
        (
            "listen_udp = [\"[::]:3478\"]",
            "relay.listen_udp",
            "wildcard",
        ),
    ] {
        let text = TWO_NIC.replace("[relay]\n", &format!("[relay]\n{listen}\n"));
        let text = match key {
            "relay.listen_udp" => text.replacen("listen_udp = [\"203.0.113.10", "#", 1),
            _ => text.replacen("listen_tcp = [\"203.0.113.10", "#", 1),
        };
        let found = problems(&text);
        assert!(
            found.iter().any(|(line, k, m)| k == key
                && *line == line_of(&text, listen)
                && m.contains(says)),
            "{listen}: {found:?}"
        );
    }
    // The same addresses in both zones, or not an address at all.
    for (line, key, says) in [
        (
            "internal_addresses = [\"2001:db8:10::10\"]",
            "relay.external_addresses",
            "one zone",
        ),
        (
            "internal_addresses = [\"10.20.0.0/24\"]",
            "relay.internal_addresses",
            "specific IP",
        ),
    ] {
        let found = problems(&TWO_NIC.replace("[relay]\n", &format!("[relay]\n{line}\n")));
        assert!(
            found.iter().any(|(_, k, m)| k == key && m.contains(says)),
            "{line}: {found:?}"
        );
    }
}

#[test]
fn the_pool_table_keeps_credentials_out_of_the_topology() {
    let t = parse(TWO_NIC, Some(Path::new("t.toml")), &env()).unwrap();
    let pool = t.pool.unwrap();
    assert_eq!(pool.redis, "rediss://redis.corp.example:6380/0");
    assert_eq!(pool.key_prefix, "sipedge-edge-pool");
    assert_eq!(pool.timeout, std::time::Duration::from_millis(500));
    assert!(pool.password.is_none());

    let with = |redis: &str| {
        TWO_NIC.replace(
            "redis = \"rediss://redis.corp.example:6380/0\"",
            &format!("redis = \"{redis}\""),
        )
    };
    for (redis, says) in [
        (
            "rediss://edge:pw@redis.corp.example:6380/0",
            "no user or password in the URL",
        ),
        ("http://redis.corp.example:6379", "expected redis://"),
    ] {
        let text = with(redis);
        let found = problems(&text);
        assert_keys(&found, &["pool.redis"]);
        assert_eq!(found[0].0, line_of(&text, "redis = "));
        assert!(found[0].2.contains(says), "{found:?}");
    }
    // The password from the environment, never the file itself.
    let text = TWO_NIC.replace(
        "key_prefix = \"sipedge-edge-pool\"",
        "key_prefix = \"sipedge-edge-pool\"\nusername = \"edge\"\npassword_env = \"SIPEDGE_EXTERNAL_PFX_PASSWORD\"",
    );
    let t = parse(&text, Some(Path::new("t.toml")), &env()).unwrap();
    let pool = t.pool.unwrap();
    assert_eq!(pool.username.as_deref(), Some("edge"));
    assert_eq!(pool.password.as_deref(), Some("pfx-pass"));
    let text = TWO_NIC.replace("timeout = \"500ms\"", "timeout = \"5ms\"");
    assert_keys(&problems(&text), &["pool.timeout"]);
}

#[test]
fn capture_is_off_without_its_table_and_read_with_its_defaults() {
    assert_eq!(parse(EMBEDDED_DEFAULT, None, &env()).unwrap().capture, None);
    let t = parse(TWO_NIC, None, &env()).unwrap();
    let c = t.capture.unwrap();
    assert_eq!(c.collector, addr("10.20.0.40:9060"));
    assert_eq!(c.transport, CaptureTransport::Udp);
    assert_eq!(
        (c.agent_id, c.external, c.internal, c.bodies),
        (101, true, true, false)
    );
    assert_eq!(c.max_queued_bytes, 4 * 1024 * 1024);
    assert_eq!(c.password, None);
    let tcp = TWO_NIC.replace(
        "bodies = false",
        "transport = \"tcp\"\nzones = [\"internal\"]\npassword_env = \"HEP_PW\"",
    );
    let c = parse(&tcp, None, &env().with("HEP_PW", "pw"))
        .unwrap()
        .capture
        .unwrap();
    assert_eq!(c.transport, CaptureTransport::Tcp);
    assert_eq!((c.external, c.internal, c.bodies), (false, true, true));
    assert_eq!(c.password.as_deref(), Some("pw"));
}

#[test]
fn a_capture_never_goes_out_by_the_external_interface_and_bad_values_are_named() {
    let external_ip = parse(TWO_NIC, None, &env()).unwrap().external.sip_bind.ip();
    let outside = TWO_NIC.replace(
        "collector = \"10.20.0.40:9060\"",
        &format!("collector = \"{external_ip}:9060\""),
    );
    let found = problems(&outside);
    assert_keys(&found, &["capture.collector"]);
    assert_eq!(found[0].0, line_of(&outside, "collector ="));
    assert!(found[0].2.contains("personal data"), "{found:?}");

    let bad = TWO_NIC.replace(
        "bodies = false",
        "transport = \"sctp\"\nzones = [\"dmz\"]\nmax_queued_bytes = 10\nbodies = \"no\"",
    );
    let found = problems(&bad);
    assert_keys(
        &found,
        &[
            "capture.transport",
            "capture.zones",
            "capture.max_queued_bytes",
            "capture.bodies",
        ],
    );
}

#[test]
fn turn_over_tls_is_off_unless_its_port_is_given() {
    let t = parse(TWO_NIC, None, &env()).unwrap();
    let relay = t.relay.unwrap();
    assert_eq!((relay.tls_port, relay.listen_tls.len()), (None, 0));
    let with = TWO_NIC.replace("[relay]\n", "[relay]\ntls_port = 5349\n");
    assert_eq!(
        parse(&with, None, &env()).unwrap().relay.unwrap().tls_port,
        Some(5349)
    );
    let without_port =
        TWO_NIC.replace("[relay]\n", "[relay]\nlisten_tls = [\"10.20.0.10:5349\"]\n");
    let found = problems(&without_port);
    assert_keys(&found, &["relay.listen_tls"]);
    assert!(found[0].2.contains("tls_port"), "{found:?}");
}

#[test]
fn the_relayed_ports_keep_apart_from_the_edges_listeners_on_the_relays_address() {
    let t = parse(TWO_NIC, None, &env()).unwrap();
    let (min, max) = {
        let r = t.relay.unwrap();
        (r.port_min, r.port_max)
    };
    let over_sip = TWO_NIC
        .replace(&format!("port_min = {min}"), "port_min = 5000")
        .replace(&format!("port_max = {max}"), "port_max = 6000");
    let found = problems(&over_sip);
    assert_keys(&found, &["relay.port_min"]);
    assert!(found[0].2.contains(":5061"), "{found:?}");
}
