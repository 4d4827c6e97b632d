//! CPU time per runtime, from `/proc/self/task/*/stat`.

use super::*;

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc

pub(crate) fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// `(comm, utime + stime)` of a `stat` file's contents.
pub(crate) fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // After ") ": state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU ticks per thread name (live threads only) and for the whole process.
#[derive(Clone, Default)]
pub(crate) struct Cpu {
    pub(crate) by_comm: HashMap<String, u64>,
    pub(crate) process: u64,
}

impl Cpu {
    pub(crate) fn now() -> Cpu {
        let mut by_comm = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for task in dir.flatten() {
                let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                    continue;
                };
                if let Some((comm, ticks)) = parse_stat(&stat) {
                    *by_comm.entry(comm).or_insert(0) += ticks;
                }
            }
        }
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
            .map_or(0, |(_, t)| t);
        Cpu { by_comm, process }
    }

    /// Seconds spent between `earlier` and `self` by threads named `comm`, and in total.
    pub(crate) fn since(&self, earlier: &Cpu, tck: f64) -> CpuSecs {
        let of = |comm: &str| {
            let a = self.by_comm.get(comm).copied().unwrap_or(0);
            let b = earlier.by_comm.get(comm).copied().unwrap_or(0);
            a.saturating_sub(b) as f64 / tck
        };
        CpuSecs {
            edge: of(EDGE_THREADS),
            stub: of(STUB_THREADS),
            load: of(LOAD_THREADS),
            process: self.process.saturating_sub(earlier.process) as f64 / tck,
        }
    }
}

#[derive(Clone, Copy, Default)]
pub(crate) struct CpuSecs {
    pub(crate) edge: f64,
    pub(crate) stub: f64,
    pub(crate) load: f64,
    pub(crate) process: f64,
}
