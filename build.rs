//! Builds the kernel fast path's BPF program (`src/shell/turn/kernel/turn_relay.bpf.c`,
//! `relay.kernel_offload`) with clang, when clang and the kernel's UAPI and libbpf headers
//! are there (Debian: `clang libbpf-dev`; `scripts/test` installs them). Without them the
//! edge still builds and runs, with the offload unavailable and the reason given at start:
//! the README's two commands must work on a fresh machine.
//!
//! The object is written to `$OUT_DIR/turn_relay.bpf.o` (empty when not built), and the
//! reason it was not built to `SIPEDGE_BPF_UNAVAILABLE` (empty when it was).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "src/shell/turn/kernel/turn_relay.bpf.c";

/// The libbpf header the program needs (Debian's libbpf-dev puts it here).
const LIBBPF_HEADER: &str = "/usr/include/bpf/bpf_helpers.h";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=SIPEDGE_CLANG");
    // The tools are watched too. Cargo counts a watched path that is missing as changed, so
    // while clang or libbpf-dev is not installed this script runs at every build, and
    // installing them (as the warning and the edge's log say) takes effect at the next
    // `cargo build`: without this the first build's verdict stood until `cargo clean`.
    println!("cargo:rerun-if-changed={}", clang_path().display());
    println!("cargo:rerun-if-changed={LIBBPF_HEADER}");
    let Some(out_dir) = env::var_os("OUT_DIR") else {
        println!("cargo:warning=OUT_DIR is not set");
        return;
    };
    let object = PathBuf::from(out_dir).join("turn_relay.bpf.o");
    let why_not = match compile(&object) {
        Ok(()) => String::new(),
        Err(why) => {
            println!("cargo:warning=the kernel fast path is not built: {why}");
            if let Err(e) = std::fs::write(&object, b"") {
                println!("cargo:warning=cannot write {}: {e}", object.display());
            }
            why
        }
    };
    println!("cargo:rustc-env=SIPEDGE_BPF_UNAVAILABLE={why_not}");
}

fn clang() -> String {
    env::var("SIPEDGE_CLANG").unwrap_or_else(|_| "clang".into())
}

/// Where `clang()` is found on `PATH` (or the path it names), else where Debian puts it.
fn clang_path() -> PathBuf {
    let clang = clang();
    if clang.contains('/') {
        return PathBuf::from(clang);
    }
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .map(|dir| dir.join(&clang))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/clang"))
}

fn compile(object: &std::path::Path) -> Result<(), String> {
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return Err("eBPF is Linux's".into());
    }
    let clang = clang();
    // The BPF target of the host's byte order; the multiarch directory for <asm/types.h>.
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb",
        _ => "bpfel",
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let output = Command::new(&clang)
        .args([
            "-O2", "-g", "-Wall", "-Werror", "-mcpu=v3", "-target", target,
        ])
        .arg(format!("-I{multiarch}"))
        .args(["-c", SOURCE, "-o"])
        .arg(object)
        .output()
        .map_err(|e| format!("{clang}: {e} (install clang and libbpf-dev)"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or("").to_string();
        Err(format!("{clang} failed: {first}"))
    }
}
