//! Network namespaces for the tests that need a real path between hosts (the DMZ bed, the
//! kernel fast path): made with iproute2, joined by veth pairs, deleted when dropped, pass
//! or fail.

use std::os::fd::AsFd;
use std::process::Command;

/// Namespaces made for one test, deleted (their veths with them) on drop.
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Makes each namespace in `names`, its loopback up. On error those made are deleted.
    pub fn new(names: &[&str]) -> Result<Namespaces, String> {
        let mut made = Namespaces { names: Vec::new() };
        for ns in names {
            ip(&["netns", "add", ns])?;
            made.names.push(ns.to_string());
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(made)
    }

    /// A veth pair, `a` in namespace `a_ns` and `b` in `b_ns` (made there: nothing appears
    /// in the caller's namespace).
    pub fn veth(&self, (a, a_ns): (&str, &str), (b, b_ns): (&str, &str)) -> Result<(), String> {
        ip(&[
            "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
        ])
    }

    /// `cidr` on `dev` in `ns`, and the device up.
    pub fn address(&self, ns: &str, dev: &str, cidr: &str) -> Result<(), String> {
        ip(&["-n", ns, "addr", "add", cidr, "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])
    }

    /// The default route of `ns` via `gateway`.
    pub fn default_route(&self, ns: &str, gateway: &str) -> Result<(), String> {
        ip(&["-n", ns, "route", "add", "default", "via", gateway])
    }

    /// A command to run inside `ns` (`ip netns exec`).
    pub fn exec(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        c
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The edge's place in a network, as three hosts in a row: `outside` — `dmz` — `inside`
/// (namespaces `<tag>-out`, `<tag>-dmz`, `<tag>-in`), joined by two veth pairs, each side's
/// addresses on its end, each a /24. Deleted on drop.
pub struct DmzBed {
    pub outside: String,
    pub dmz: String,
    pub inside: String,
    /// The outside's and the inside's ends of the veth pairs.
    pub outside_dev: String,
    pub inside_dev: String,
    pub namespaces: Namespaces,
}

impl DmzBed {
    /// `outside` addresses on the outer host, the DMZ host's external and internal
    /// addresses, `inside` addresses on the inner host.
    pub fn up(
        tag: &str,
        outside: &[&str],
        (dmz_external, dmz_internal): (&str, &str),
        inside: &[&str],
    ) -> Result<DmzBed, String> {
        let (out_ns, dmz, in_ns) = (
            format!("{tag}-out"),
            format!("{tag}-dmz"),
            format!("{tag}-in"),
        );
        let namespaces = Namespaces::new(&[&out_ns, &dmz, &in_ns])?;
        let (o0, o1, i0, i1) = (
            format!("{tag}o0"),
            format!("{tag}o1"),
            format!("{tag}i0"),
            format!("{tag}i1"),
        );
        namespaces.veth((&o0, &dmz), (&o1, &out_ns))?;
        namespaces.veth((&i0, &dmz), (&i1, &in_ns))?;
        namespaces.address(&dmz, &o0, &format!("{dmz_external}/24"))?;
        namespaces.address(&dmz, &i0, &format!("{dmz_internal}/24"))?;
        for addr in outside {
            namespaces.address(&out_ns, &o1, &format!("{addr}/24"))?;
        }
        for addr in inside {
            namespaces.address(&in_ns, &i1, &format!("{addr}/24"))?;
        }
        Ok(DmzBed {
            outside: out_ns,
            dmz,
            inside: in_ns,
            outside_dev: o1,
            inside_dev: i1,
            namespaces,
        })
    }
}

/// The bed `up` makes, or `None` (after saying why `test` is skipped) where namespaces
/// cannot be made here: not root, no iproute2, or the kernel refuses.
pub fn bed_or_skip<T>(test: &str, up: impl FnOnce() -> Result<T, String>) -> Option<T> {
    if !can_make_namespaces() {
        eprintln!("SKIPPED: {test} needs root and iproute2 (ip netns)");
        return None;
    }
    match up() {
        Ok(bed) => Some(bed),
        Err(e) => {
            eprintln!("SKIPPED: network namespaces are not available here for {test}: {e}");
            None
        }
    }
}

/// Whether this process can make namespaces: root, with iproute2 installed.
pub fn can_make_namespaces() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    root && super::tool_on_path("ip").is_some()
}

/// Runs `ip args`; its error output on failure.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args))
}

/// Runs `c`; its error output on failure.
pub fn run(c: &mut Command) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{c:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Runs `f` on a thread inside namespace `ns` (what it opens stays there).
pub fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}
