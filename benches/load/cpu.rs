//! CPU time per runtime, from `/proc/self/task/*/stat`.

use super::*;

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc

pub(crate) use crate::proc_stats::{clock_ticks_per_second, parse_stat};

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
