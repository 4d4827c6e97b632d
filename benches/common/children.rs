//! The processes a bench starts (servers, the edge, client workers), registered while they
//! run so that an interrupted bench kills each by its own PID (SIGINT/SIGTERM skip the
//! destructors). Shared by the benches that start processes, each taking this file with
//! `#[path]`.

#![allow(dead_code)] // each bench uses what it needs

use std::process::{Child, Command};
use std::sync::Mutex;

/// The PIDs of the processes started and still running. A process is spawned, and taken out
/// again, under the lock, so a PID here is always a live child of ours.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<u32>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns `cmd` and registers it before the lock is let go: an interrupt from here on kills
/// it.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let mut running = running();
    let child = cmd.spawn()?;
    running.push(child.id());
    Ok(child)
}

/// Registers a process started otherwise.
pub fn register(pid: u32) {
    running().push(pid);
}

/// Takes `pid` out (it has ended, or is being killed and reaped by its owner).
pub fn unregister(pid: u32) {
    running().retain(|&p| p != pid);
}

/// Kills and reaps `child` and takes it out, under the lock.
pub fn kill(child: &mut Child) {
    let mut running = running();
    let pid = child.id();
    running.retain(|&p| p != pid);
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL to every process still running, each by its own PID, and reaps it; holds the
/// registry locked for good (the bench is exiting), so nothing starts or is reaped after.
pub fn kill_running() {
    let running = running();
    for &pid in running.iter() {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            if rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok() {
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            }
        }
    }
    std::mem::forget(running);
}
