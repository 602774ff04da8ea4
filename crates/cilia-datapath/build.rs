//! Builds every `ebpf/*.c` with clang (`-target bpf`, BTF on) into OUT_DIR, and generates the C-side
//! layout constants that the `#[repr(C)]` mirrors are checked against.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn clang() -> String {
    env::var("CLANG").unwrap_or_else(|_| "clang".to_string())
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot run {:?}: {e} (install clang: `make deps`)",
            cmd.get_program()
        )
    });
    if !out.status.success() {
        panic!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf = manifest
        .join("../../ebpf")
        .canonicalize()
        .expect("ebpf/ next to crates/");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", ebpf.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    let arch_inc = format!("/usr/include/{}-linux-gnu", env::consts::ARCH);
    let mut programs = Vec::new();
    for entry in std::fs::read_dir(&ebpf).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "c") {
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            let obj = out.join(format!("{stem}.o"));
            run(
                Command::new(clang())
                    .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
                    .arg("-I")
                    .arg(ebpf.join("lib"))
                    .arg("-I")
                    .arg(&arch_inc)
                    .arg("-c")
                    .arg(&path)
                    .arg("-o")
                    .arg(&obj),
                &format!("compiling {}", path.display()),
            );
            programs.push(stem);
        }
    }
    programs.sort();
    let mut list = String::from(
        "/// Every program object built from `ebpf/*.c`, by file stem.\npub const OBJECTS: &[&str] = &[",
    );
    for p in &programs {
        list.push_str(&format!("{p:?}, "));
    }
    list.push_str("];\n");
    std::fs::write(out.join("objects.rs"), list).unwrap();

    probe_layouts(&ebpf, &out, &arch_inc);
}

fn probe_layouts(ebpf: &Path, out: &Path, arch_inc: &str) {
    let exe = out.join("layout_probe");
    run(
        Command::new(clang())
            .arg("-I")
            .arg(ebpf.join("lib"))
            .arg("-I")
            .arg(arch_inc)
            .arg(ebpf.join("lib/layout_probe.c"))
            .arg("-o")
            .arg(&exe),
        "building the layout probe",
    );
    let o = Command::new(&exe)
        .output()
        .expect("running the layout probe");
    assert!(o.status.success(), "layout probe failed");
    std::fs::write(out.join("c_layouts.rs"), o.stdout).unwrap();
}
