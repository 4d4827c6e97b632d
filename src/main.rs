//! `sipedge`: the command line. Only argument handling lives here.
//!
//! Exit codes: 0 success, 64 (EX_USAGE) bad topology or usage, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Run the edge (the embedded loopback default without --topology).
    Run {
        /// Topology file (TOML).
        #[arg(long, short)]
        topology: Option<PathBuf>,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
    },
    /// Validate a topology without binding any port; prints every problem, exits 64 if any.
    Check {
        #[arg(long, short)]
        topology: PathBuf,
    },
    /// Print the version.
    Version,
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
            println!("sipedge {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { topology } => check(&topology),
        Command::Run {
            topology,
            json_logs,
        } => {
            sipedge::obs::init_logging(json_logs);
            // Load the topology before binding anything (linkerd: config errors are usage errors).
            let topology = match topology {
                Some(path) => match sipedge::topology::load(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("Invalid topology: {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                },
                None => match sipedge::topology::embedded_default() {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("Invalid embedded topology: {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                },
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(topology))
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
            eprintln!("{e}");
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
        eprintln!(
            "{}: {} certificate problem(s)",
            path.display(),
            problems.len()
        );
        for p in problems {
            eprintln!("  {}: {p}", path.display());
        }
        return ExitCode::from(EX_USAGE);
    }
    println!(
        "{}: ok (edge {}, external {}, internal {}, {} next hop(s))",
        path.display(),
        t.edge.name,
        t.external.sip_bind,
        t.internal.sip_bind,
        t.next_hop.members.len()
    );
    ExitCode::SUCCESS
}

async fn run(topology: sipedge::topology::Topology) -> ExitCode {
    let edge = match sipedge::shell::start(&topology).await {
        Ok(edge) => edge,
        Err(e) => {
            eprintln!("sipedge: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(pki) = &edge.dev_pki {
        let verb = if edge.dev_pki_created {
            "generated"
        } else {
            "using"
        };
        println!(
            "sipedge: {verb} dev certificates in {} (NOT FOR PRODUCTION)",
            pki.dir.display()
        );
        println!("sipedge: clients trust {}", pki.ca_cert.display());
    }
    if let Some(ops) = edge.operations {
        println!("sipedge: operations on http://{ops}/healthz and http://{ops}/metrics");
    }
    println!(
        "sipedge: external TLS SIP on {}, internal mutual-TLS SIP on {}, next hops {:?}",
        edge.external, edge.internal, topology.next_hop.members
    );
    wait_for_signal().await;
    println!("sipedge: stopping");
    edge.stop().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
