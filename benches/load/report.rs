//! The report: rates, CPU-seconds, latency percentiles, as text and JSON.

use super::*;

// ---------------------------------------------------------------------------------------------
// Report

/// Nearest-rank percentile of sorted values.
pub(crate) fn pct(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

pub(crate) fn fmt_us(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub(crate) fn diff(a: Option<u32>, b: Option<u32>) -> Option<i64> {
    Some(i64::from(a?) - i64::from(b?))
}

pub(crate) fn json_opt(v: Option<i64>) -> String {
    v.map_or_else(|| "null".into(), |v| v.to_string())
}

pub(crate) struct EdgeCounters {
    pub(crate) forwarded: u64,
    pub(crate) rejected: u64,
    pub(crate) dropped: u64,
}

pub(crate) fn edge_counters(shared: &sipedge::shell::Shared) -> EdgeCounters {
    let s = &shared.stats;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    EdgeCounters {
        forwarded: get(&s.forwarded_from_external) + get(&s.forwarded_from_internal),
        rejected: get(&s.rejected_external) + get(&s.rejected_internal),
        dropped: get(&s.dropped_responses),
    }
}

pub(crate) fn report(
    args: &Args,
    edge: &PhaseResult,
    base: Option<&PhaseResult>,
    forwarded: u64,
    failures: &Failures,
) {
    let secs = edge.elapsed_secs;
    println!();
    println!(
        "sipedge load: {} users from {} source IPs, limits {} s and {} rounds per user \
         (round = REGISTER, OPTIONS, MESSAGE, INVITE+ACK+BYE), {}",
        args.users,
        SOURCE_IPS.min(u8::try_from(args.users).unwrap_or(u8::MAX)),
        args.seconds,
        args.dialogs_per_user,
        if args.rate > 0.0 {
            format!("paced at {} rounds/s per user", args.rate)
        } else {
            "closed loop".to_string()
        }
    );
    println!();
    println!("phase      connected  connect  elapsed   messages  msgs/s   CPU-s: edge   stub  load-gen  process");
    let row = |name: &str, p: &PhaseResult| {
        println!(
            "{name:<10} {:>5}/{:<5} {:>6.2}s {:>7.2}s {:>10} {:>7.0}        {:>6.2} {:>6.2} {:>8.2} {:>8.2}",
            p.connected,
            p.users,
            p.connect_secs,
            p.elapsed_secs,
            p.messages(),
            p.messages() as f64 / p.elapsed_secs,
            p.cpu.edge,
            p.cpu.stub,
            p.cpu.load,
            p.cpu.process
        )
    };
    row("with edge", edge);
    if let Some(b) = base {
        row("baseline", b);
    }
    println!();
    println!(
        "latency request -> final response, µs (client side; 'added' = with edge minus baseline)"
    );
    println!(
        "type        requests  msgs/s(edge)   p50 edge  p99 edge   p50 base  p99 base   added p50  added p99"
    );
    let line = |name: &str, count: u64, msgs: u64, e: &[u32], b: Option<&[u32]>| {
        let (e50, e99) = (pct(e, 50.0), pct(e, 99.0));
        let (b50, b99) = b.map_or((None, None), |b| (pct(b, 50.0), pct(b, 99.0)));
        println!(
            "{name:<10} {count:>9} {:>13.0} {:>10} {:>9} {:>10} {:>9} {:>11} {:>10}",
            msgs as f64 / secs,
            fmt_us(e50.map(i64::from)),
            fmt_us(e99.map(i64::from)),
            fmt_us(b50.map(i64::from)),
            fmt_us(b99.map(i64::from)),
            fmt_us(diff(e50, b50)),
            fmt_us(diff(e99, b99)),
        );
    };
    for (t, name) in TYPES.iter().enumerate() {
        let b = base.map(|b| b.latency_us[t].as_slice());
        line(
            name,
            edge.sent[t],
            edge.sent[t] * messages_per_request(t),
            &edge.latency_us[t],
            b,
        );
    }
    let all_e = edge.all_latencies();
    let all_b = base.map(PhaseResult::all_latencies);
    let total: u64 = edge.sent.iter().sum();
    line("all", total, edge.messages(), &all_e, all_b.as_deref());

    let per_cpu = if edge.cpu.edge > 0.0 {
        forwarded as f64 / edge.cpu.edge
    } else {
        0.0
    };
    println!();
    println!(
        "edge: {forwarded} messages forwarded (its own counter; users' count {}), {:.2} CPU-s \
         = {per_cpu:.0} messages per edge CPU-second ({:.1} µs CPU per message); \
         {} TLS handshakes took {:.2} edge CPU-s",
        edge.messages(),
        edge.cpu.edge,
        if forwarded > 0 {
            edge.cpu.edge * 1e6 / forwarded as f64
        } else {
            0.0
        },
        edge.connected,
        edge.connect_cpu.edge
    );
    println!("failures: {}", failures.count);
    for f in &failures.first {
        println!("  {f}");
    }

    // One-line JSON summary.
    let mut j = String::new();
    let _ = write!(
        j,
        "{{\"users\":{},\"seconds_limit\":{},\"rounds_limit\":{},\"rate\":{},\"elapsed_s\":{:.3},\"connected\":{},\
         \"requests\":{total},\"messages\":{},\"messages_per_s\":{:.1},\"edge_forwarded\":{forwarded},\
         \"edge_cpu_s\":{:.3},\"messages_per_edge_cpu_s\":{per_cpu:.1},\"handshake_edge_cpu_s\":{:.3},\
         \"stub_cpu_s\":{:.3},\"load_cpu_s\":{:.3},\"process_cpu_s\":{:.3}",
        args.users,
        args.seconds,
        args.dialogs_per_user,
        args.rate,
        edge.elapsed_secs,
        edge.connected,
        edge.messages(),
        edge.messages() as f64 / secs,
        edge.cpu.edge,
        edge.connect_cpu.edge,
        edge.cpu.stub,
        edge.cpu.load,
        edge.cpu.process
    );
    let lat = |e: &[u32], b: Option<&[u32]>| {
        let (e50, e99) = (pct(e, 50.0), pct(e, 99.0));
        let (b50, b99) = b.map_or((None, None), |b| (pct(b, 50.0), pct(b, 99.0)));
        format!(
            "\"p50_us\":{},\"p99_us\":{},\"base_p50_us\":{},\"base_p99_us\":{},\"added_p50_us\":{},\"added_p99_us\":{}",
            json_opt(e50.map(i64::from)),
            json_opt(e99.map(i64::from)),
            json_opt(b50.map(i64::from)),
            json_opt(b99.map(i64::from)),
            json_opt(diff(e50, b50)),
            json_opt(diff(e99, b99))
        )
    };
    let _ = write!(j, ",{}", lat(&all_e, all_b.as_deref()));
    j.push_str(",\"types\":{");
    for (t, name) in TYPES.iter().enumerate() {
        if t > 0 {
            j.push(',');
        }
        let b = base.map(|b| b.latency_us[t].as_slice());
        let _ = write!(j, "\"{name}\":{{\"requests\":{}", edge.sent[t]);
        if t != ACK {
            let _ = write!(j, ",{}", lat(&edge.latency_us[t], b));
        }
        j.push('}');
    }
    let _ = write!(j, "}},\"failures\":{}}}", failures.count);
    println!("{j}");
}

// ---------------------------------------------------------------------------------------------
