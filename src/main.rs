//! `sipedge`: the command line. Only argument handling lives here.
//!
//! Exit codes: 0 success, 64 (EX_USAGE) bad topology or usage, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A line for the operator on stdout. A stdout that is gone (a supervisor or pipe that went
/// away) is no reason for the edge to stop: `println!` would panic there.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// [`say!`] on stderr.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// jemalloc rather than glibc's malloc (issue 18, measured with `cargo bench --bench
/// tls_idle`): after 5 000 TLS connections closed, glibc's arenas kept all of their memory
/// (fragmented, trimmed only from the top) and the edge stayed at its peak size; jemalloc's
/// background thread gives most freed pages back within seconds (`.cargo/config.toml` sets
/// how soon; what the threads' caches hold, [`return_cached_memory`]), and the load bench
/// spends ~5 % less CPU per message with it. mimalloc was tried too: it kept the memory and
/// started 16 MiB larger. It is the process's malloc (Cargo.toml: unprefixed), so what the C
/// libraries allocate (aws-lc's handshake state) comes back too.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Called by each runtime thread as it goes idle: at most once a second, what the thread's
/// jemalloc cache holds goes back to the arenas, whose background thread then returns the
/// pages to the system. Without it, the objects freed when many connections close stay
/// parked in the caches of threads that then sleep, and an idle thread never flushes
/// (measured with `cargo bench --bench tls_idle`: ~10 MiB kept after 18 000 connections
/// closed). The caches themselves stay on while a thread works: without them the edge
/// spent ~20 % more CPU per message. Turning a thread's cache off flushes it (jemalloc's
/// documented side effect); turning it on again gives the thread an empty one.
fn return_cached_memory() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    use tikv_jemalloc_ctl::{Access, AsName};
    thread_local! {
        static LAST_FLUSH: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = sipedge::shell::clock::now();
    let due = LAST_FLUSH
        .get()
        .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1));
    if !due {
        return;
    }
    LAST_FLUSH.set(Some(now));
    let enabled = b"thread.tcache.enabled\0".name();
    if enabled.write(false).is_ok() {
        let _ = enabled.write(true);
    }
}

#[derive(Parser)]
#[command(
    name = "sipedge",
    about = "A SIP edge for the DMZ",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge (the embedded loopback default without --topology, with a lab Director
    /// behind it so that softphones can register and call through it).
    Run {
        /// Topology file (TOML).
        #[arg(long, short)]
        topology: Option<PathBuf>,
        /// On the embedded default: no lab Director (a Director of your own on 127.0.0.1:5070).
        #[arg(long)]
        no_lab: bool,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
        /// Write personal data (addresses, Call-IDs, user names) into the logs as it is;
        /// by default it is replaced by a keyed hash.
        #[arg(long)]
        log_personal_data: bool,
    },
    /// Validate a topology without binding any port; prints every problem, exits 64 if any.
    Check {
        #[arg(long, short)]
        topology: PathBuf,
    },
    /// Manage the pool key ring (relay credentials, flow tokens).
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Mint or verify TURN REST credentials with a key ring.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Certificates: requests for a CA, the check of a topology's certificates, dev PKIs.
    Cert {
        #[command(subcommand)]
        action: CertCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Make an ECDSA P-256 key (mode 0600) and a certificate signing request for the names
    /// given, to submit to a CA; refuses to replace existing files.
    Request {
        /// A subjectAltName (DNS name); repeat for each.
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// Directory for `<first name>.key` and `<first name>.csr`.
        #[arg(long)]
        out: PathBuf,
        /// An RSA 2048 key instead of ECDSA P-256 (for CAs that want RSA).
        #[arg(long)]
        rsa: bool,
    },
    /// Check every certificate the topology serves with: chain to the roots that judge it,
    /// the names the topology needs among the subjectAltNames, key and certificate
    /// together, days to expiry. Exits 1 on any red.
    Check {
        #[arg(long, short)]
        topology: PathBuf,
    },
    /// Make a dev CA and every certificate the topology needs (tests and labs only).
    Dev {
        #[arg(long, short)]
        topology: PathBuf,
        /// Where (default: the topology's state directory, `dev-pki`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new ring with one key (refuses to replace an existing file).
    Init {
        #[arg(long)]
        ring: PathBuf,
    },
    /// Add a key that becomes the signing key after --signs-in (time to copy the ring to every
    /// pool member); prune keys whose credentials have all expired.
    Rotate {
        #[arg(long)]
        ring: PathBuf,
        /// Delay before the new key signs, e.g. 0s, 10m, 1h.
        #[arg(long, default_value = "1h")]
        signs_in: String,
    },
    /// List the keys (ids and times, never secrets).
    List {
        #[arg(long)]
        ring: PathBuf,
    },
    /// Adopt an existing shared secret (e.g. coturn's static-auth-secret) as the signing key.
    Import {
        #[arg(long)]
        ring: PathBuf,
        /// File holding the secret (never on the command line).
        #[arg(long)]
        secret_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a username and password for --user, valid for --ttl.
    Mint {
        #[arg(long)]
        ring: PathBuf,
        #[arg(long)]
        user: String,
        /// Lifetime, 1m to 180d.
        #[arg(long, default_value = "8h")]
        ttl: String,
    },
    /// Exit 0 when the credential is valid now; otherwise print why and exit 1.
    Verify {
        #[arg(long)]
        ring: PathBuf,
        /// Longest lifetime accepted.
        #[arg(long, default_value = "180d")]
        max_lifetime: String,
        username: String,
        password: String,
    },
}

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Version => {
            say!("sipedge {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { topology } => check(&topology),
        Command::Cert { action } => cert(action),
        Command::Keys { action } => keys(action),
        Command::Token { action } => token(action),
        Command::Run {
            topology,
            no_lab,
            json_logs,
            log_personal_data,
        } => {
            sipedge::obs::init_logging(json_logs);
            sipedge::obs::redact::show_personal_data(log_personal_data);
            // Load the topology before binding anything (linkerd: config errors are usage errors).
            let path = topology;
            let topology = match &path {
                Some(path) => match sipedge::topology::load(path) {
                    Ok(t) => t,
                    Err(e) => {
                        say_err!("Invalid topology: {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                },
                None => match sipedge::topology::embedded_default() {
                    Ok(t) => t,
                    Err(e) => {
                        say_err!("Invalid embedded topology: {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                },
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_park(return_cached_memory)
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    say_err!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The lab only ever on the embedded loopback default.
            let lab = path.is_none() && !no_lab;
            runtime.block_on(run(topology, path, lab))
        }
    }
}

/// `sipedge check`: the topology, then the certificates it names (dev certificates are
/// generated at start and are not checked here). Prints every problem; exit 64 if any.
fn check(path: &std::path::Path) -> ExitCode {
    use sipedge::tls::{self, DevRole};
    use sipedge::topology::{CaSource, CertSource};
    let t = match sipedge::topology::load(path) {
        Ok(t) => t,
        Err(e) => {
            say_err!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let mut problems = Vec::new();
    for (key, source, role) in [
        ("external.tls", &t.external.cert, DevRole::External),
        ("internal.tls", &t.internal.cert, DevRole::Internal),
    ] {
        if *source != CertSource::Dev {
            if let Err(e) = tls::load_cert(source, None, role) {
                problems.push(format!("{key}: {e}"));
            }
        }
    }
    if t.internal.ca != CaSource::Dev {
        if let Err(e) = tls::load_roots(&t.internal.ca, None) {
            problems.push(format!("internal.tls.ca: {e}"));
        }
    }
    if !problems.is_empty() {
        say_err!(
            "{}: {} certificate problem(s)",
            path.display(),
            problems.len()
        );
        for p in problems {
            say_err!("  {}: {p}", path.display());
        }
        return ExitCode::from(EX_USAGE);
    }
    say!(
        "{}: ok (edge {}, external {}, internal {}, {} next hop(s))",
        path.display(),
        t.edge.name,
        t.external.sip_bind,
        t.internal.sip_bind,
        t.next_hop.members.len()
    );
    ExitCode::SUCCESS
}

fn duration_arg(name: &str, text: &str) -> Result<u64, ExitCode> {
    sipedge::topology::parse_duration(text).map(|d| d.as_secs()).ok_or_else(|| {
        say_err!("{name}: \"{text}\" is not a duration (write seconds, or a number with s, m, h or d)");
        ExitCode::from(EX_USAGE)
    })
}

/// `sipedge keys ...`. Exit 1 when the file cannot be used, 64 on bad arguments.
fn keys(action: KeysCommand) -> ExitCode {
    use sipedge::core::keyring::Ring;
    use sipedge::shell::keyfile;
    let now = sipedge::shell::clock::now_unix();
    let result = match action {
        KeysCommand::Init { ring } => keyfile::random_secret()
            .and_then(|secret| keyfile::store(&ring, &Ring::init(secret, now), true))
            .map(|()| {
                format!(
                    "{}: new ring with key k1 (signing now); copy it to every pool member",
                    ring.display()
                )
            }),
        KeysCommand::Rotate { ring, signs_in } => {
            let signs_in = match duration_arg("--signs-in", &signs_in) {
                Ok(d) => d,
                Err(code) => return code,
            };
            keyfile::load(&ring).and_then(|mut r| {
                let secret = keyfile::random_secret()?;
                let pruned = r.prune(now);
                let id = r
                    .rotate(secret, now, signs_in)
                    .map_err(|source| keyfile::KeyFileError::Ring { path: ring.clone(), source })?
                    .id
                    .clone();
                keyfile::store(&ring, &r, false)?;
                Ok(format!(
                    "{}: added {id}, signing in {signs_in} s; pruned {pruned:?}; copy the ring to every pool member now",
                    ring.display()
                ))
            })
        }
        KeysCommand::List { ring } => keyfile::load(&ring).map(|r| {
            let signing = r.signing_key(now).map(|k| k.id.clone());
            let mut out = format!(
                "{:<8} {:>12} {:>12}  status\n",
                "id", "created", "signs_from"
            );
            for k in r.keys() {
                let status = if Some(&k.id) == signing.as_ref() {
                    "signing".to_string()
                } else if k.signs_from > now {
                    format!("signs in {} s", k.signs_from - now)
                } else {
                    match r.retired_at(k, now) {
                        Some(t) => {
                            format!("verifies only (retired {} s ago)", now.saturating_sub(t))
                        }
                        None => "verifies".to_string(),
                    }
                };
                out.push_str(&format!(
                    "{:<8} {:>12} {:>12}  {status}\n",
                    k.id, k.created, k.signs_from
                ));
            }
            out.trim_end().to_string()
        }),
        KeysCommand::Import { ring, secret_file } => std::fs::read_to_string(&secret_file)
            .map_err(|source| keyfile::KeyFileError::Io {
                path: secret_file.clone(),
                source,
            })
            .and_then(|secret| {
                let mut r = if ring.exists() {
                    keyfile::load(&ring)?
                } else {
                    Ring::default()
                };
                let id = r
                    .import(&secret, now)
                    .map_err(|source| keyfile::KeyFileError::Ring {
                        path: ring.clone(),
                        source,
                    })?
                    .id
                    .clone();
                keyfile::store(&ring, &r, false)?;
                Ok(format!(
                    "{}: imported the secret as {id} (signing now)",
                    ring.display()
                ))
            }),
    };
    match result {
        Ok(text) => {
            say!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            say_err!("sipedge keys: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `sipedge token ...`. Verify exits 0 only for a valid credential.
fn token(action: TokenCommand) -> ExitCode {
    use sipedge::core::credentials;
    use sipedge::shell::keyfile;
    let now = sipedge::shell::clock::now_unix();
    match action {
        TokenCommand::Mint { ring, user, ttl } => {
            let ttl = match duration_arg("--ttl", &ttl) {
                Ok(d) => d,
                Err(code) => return code,
            };
            if !(credentials::MIN_LIFETIME_SECS
                ..=sipedge::core::keyring::MAX_CREDENTIAL_LIFETIME_SECS)
                .contains(&ttl)
            {
                say_err!("--ttl: between 1m and 180d");
                return ExitCode::from(EX_USAGE);
            }
            let r = match keyfile::load(&ring) {
                Ok(r) => r,
                Err(e) => {
                    say_err!("sipedge token: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match credentials::mint(&r, &user, ttl, now) {
                Ok(c) => {
                    say!(
                        "username: {}\npassword: {}\nexpires:  {} (unix)",
                        c.username,
                        c.password,
                        c.expires
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    say_err!("sipedge token: {e}");
                    ExitCode::from(EX_USAGE)
                }
            }
        }
        TokenCommand::Verify {
            ring,
            max_lifetime,
            username,
            password,
        } => {
            let max = match duration_arg("--max-lifetime", &max_lifetime) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let r = match keyfile::load(&ring) {
                Ok(r) => r,
                Err(e) => {
                    say_err!("sipedge token: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match credentials::verify(&r, &username, &password, now, max) {
                Ok(user) => {
                    say!("valid: user {user}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    say!("invalid: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn cert(action: CertCommand) -> ExitCode {
    use sipedge::tls::tools;
    match action {
        CertCommand::Request { sans, out, rsa } => {
            let kind = if rsa {
                tools::KeyKind::Rsa2048
            } else {
                tools::KeyKind::EcdsaP256
            };
            match tools::write_request(&out, &sans, kind) {
                Ok((key, csr)) => {
                    say!("key:  {} (keep it here; mode 0600)", key.display());
                    say!("csr:  {} (submit it to your CA)", csr.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    say_err!("sipedge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        CertCommand::Dev { topology, out } => {
            let t = match sipedge::topology::load(&topology) {
                Ok(t) => t,
                Err(e) => {
                    say_err!("Invalid topology: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            let dir = out.unwrap_or_else(|| t.state_dir.join("dev-pki"));
            match sipedge::tls::dev::generate(&dir, &sipedge::shell::dev_names(&t)) {
                Ok(pki) => {
                    say!("dev PKI in {} (NOT FOR PRODUCTION)", pki.dir.display());
                    say!("CA: {}", pki.ca_cert.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    say_err!("sipedge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        CertCommand::Check { topology } => {
            let t = match sipedge::topology::load(&topology) {
                Ok(t) => t,
                Err(e) => {
                    say_err!("Invalid topology: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            let dir = t.state_dir.join("dev-pki");
            let dev = dir
                .join("ca.pem")
                .exists()
                .then(|| sipedge::tls::DevPki::at(&dir));
            let checked = tools::check_topology(&t, dev.as_ref(), sipedge::shell::clock::wall());
            print_cert_table(&checked);
            if checked.iter().all(tools::Checked::ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The red/green table of `cert check` (colours only on a terminal).
fn print_cert_table(checked: &[sipedge::tls::tools::Checked]) {
    use std::io::IsTerminal;
    let colour = std::io::stdout().is_terminal();
    let paint = |code: &str, text: &str| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    say!(
        "{:<9} {:<6} {:>9}  {:<40} subjectAltNames",
        "role",
        "status",
        "days left",
        "subject"
    );
    for c in checked {
        let status = if !c.ok() {
            paint("31", "RED   ")
        } else if c.expiring() {
            paint("33", "YELLOW")
        } else {
            paint("32", "GREEN ")
        };
        let days = c
            .days_left
            .map_or_else(|| "-".to_string(), |d| d.to_string());
        say!(
            "{:<9} {} {:>9}  {:<40} {}",
            c.role,
            status,
            days,
            c.subject,
            c.sans.join(", ")
        );
        for p in &c.problems {
            say!("          - {p}");
        }
    }
}

async fn run(topology: sipedge::topology::Topology, path: Option<PathBuf>, lab: bool) -> ExitCode {
    // Handlers first: SIGHUP's default action is to end the process, and one sent while
    // the edge starts must reload (or wait), not kill it.
    let mut signals = Signals::new();
    let edge = match sipedge::shell::start(&topology).await {
        Ok(edge) => edge,
        Err(e) => {
            say_err!("sipedge: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(pki) = &edge.dev_pki {
        let verb = if edge.dev_pki_created {
            "generated"
        } else {
            "using"
        };
        say!(
            "sipedge: {verb} dev certificates in {} (NOT FOR PRODUCTION)",
            pki.dir.display()
        );
        say!("sipedge: clients trust {}", pki.ca_cert.display());
    }
    if !edge.turn_udp.is_empty() {
        say!("sipedge: TURN over UDP on {:?}", edge.turn_udp);
    }
    if let Some(ops) = edge.operations {
        say!("sipedge: operations on http://{ops}/healthz and http://{ops}/metrics");
    }
    let (lab_stop, lab_shutdown) = tokio::sync::watch::channel(false);
    if lab {
        if let Err(e) = start_lab(&edge, &topology, lab_shutdown).await {
            say_err!("sipedge: {e}");
            edge.stop().await;
            return ExitCode::FAILURE;
        }
    }
    say!(
        "sipedge: external TLS SIP on {}, internal mutual-TLS SIP on {}, next hops {:?}",
        edge.external,
        edge.internal,
        topology.next_hop.members
    );
    let stop = loop {
        match signals.next().await {
            Signal::Stop(stop) => break stop,
            Signal::Reload => reload(&edge, path.as_deref()),
        }
    };
    if stop == Stop::Drain {
        let deadline = edge.drain_timeout();
        say!(
            "sipedge: draining (up to {} s): /healthz answers 503, listeners closed",
            deadline.as_secs()
        );
        if edge.drain(deadline).await {
            say!("sipedge: drained");
        } else {
            say!("sipedge: drain deadline passed");
        }
    }
    say!("sipedge: stopping");
    let _ = lab_stop.send(true);
    edge.stop().await;
    ExitCode::SUCCESS
}

/// The lab Director on the embedded default's next hop, and what a person types into two
/// softphones to call each other through the edge.
async fn start_lab(
    edge: &sipedge::shell::RunningEdge,
    topology: &sipedge::topology::Topology,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let (Some(pki), Some(&at)) = (&edge.dev_pki, topology.next_hop.members.first()) else {
        return Err("the lab needs the embedded default's dev certificates".into());
    };
    let bound = sipedge::shell::lab::start(at, pki, shutdown)
        .await
        .map_err(|e| e.to_string())?;
    let domain = topology
        .edge
        .sip_domains
        .first()
        .cloned()
        .unwrap_or_default();
    let ext = edge.external;
    say!(
        "sipedge: lab Director on {bound} (loopback only, no authentication, NOT FOR \
         PRODUCTION): any user @{domain} registers through the edge and calls any other"
    );
    say!(
        "sipedge: softphone: server {ext}, transport TLS, trust {}",
        pki.ca_cert.display()
    );
    let turn = edge.turn_udp.first();
    let service = edge.shared.credentials.as_ref();
    for user in ["alice", "bob"] {
        let mut account = format!(
            "<sip:{user}@{domain};transport=tls>;outbound=\"sip:{ext};transport=tls\";regint=600;mediaenc=srtp-mand"
        );
        if let (Some(turn), Some(service)) = (turn, service) {
            let ring = service.ring.get();
            let now = sipedge::shell::clock::now_unix();
            let lifetime = service.relay.max_lifetime_secs;
            if let Ok(c) =
                sipedge::core::credentials::mint(&ring, &format!("{user}@{domain}"), lifetime, now)
            {
                account.push_str(&format!(
                    ";medianat=turn;stunserver=\"turn:{turn}\";stunuser={};stunpass={}",
                    c.username, c.password
                ));
            }
        }
        say!("sipedge: baresip account for {user}: {account}");
    }
    Ok(())
}

/// SIGHUP: read the topology again (the file given to `run`, or the embedded default) and
/// reload; a topology that does not load, or a change that needs a restart, is refused
/// whole with a clear line and the running configuration stays.
fn reload(edge: &sipedge::shell::RunningEdge, path: Option<&std::path::Path>) {
    let loaded = match path {
        Some(p) => sipedge::topology::load(p),
        None => sipedge::topology::embedded_default(),
    };
    match loaded {
        Err(e) => {
            say_err!("sipedge: reload refused, the running configuration stays: {e}");
            tracing::warn!(error = %e, "reload refused: invalid topology");
        }
        Ok(t) => match edge.reload(&t) {
            Ok(r) => {
                for table in &r.changed {
                    say!("sipedge: reloaded: [{table}] in force");
                }
                for (role, sans) in &r.certificates {
                    say!(
                        "sipedge: reloaded: {role} certificate for {}",
                        sans.join(", ")
                    );
                }
            }
            Err(e) => {
                say_err!("sipedge: reload refused: {e}");
                tracing::warn!(error = %e, "reload refused");
            }
        },
    }
}

/// What a signal asks for.
enum Signal {
    Stop(Stop),
    Reload,
}

/// How the edge was asked to stop.
#[derive(PartialEq, Eq)]
enum Stop {
    /// SIGTERM (systemd, a rolling upgrade): drain first.
    Drain,
    /// SIGINT (Ctrl-C at a terminal): at once.
    Now,
}

/// SIGTERM and SIGHUP, registered once for the life of the edge (none is missed between
/// two waits); SIGINT through tokio's Ctrl-C.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    async fn next(&mut self) -> Signal {
        let term = async {
            match &mut self.term {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let hup = async {
            match &mut self.hup {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Signal::Stop(Stop::Now),
            _ = term => Signal::Stop(Stop::Drain),
            _ = hup => Signal::Reload,
        }
    }
}
