//! Builds the policy components (the `guest/` workspace) for `wasm32-wasip2`, so that
//! the default policy can be embedded in the binary and tests can load the test
//! policies. Their directory is exported as `SUPERPEER_GUEST_DIR`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("host/ sits in the workspace root");
    let guest = root.join("guest");
    for watched in [
        "Cargo.toml",
        "Cargo.lock",
        "sdk",
        "sdk-0.1.0",
        "hls",
        "segments",
        "segments-0.1.0",
        "pml",
        "swarmcloud",
        "testing",
    ] {
        println!("cargo:rerun-if-changed={}", guest.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    // Shared with `just guests` and `just lint`, so each builds on the other's work.
    let target_dir = match env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        // Cargo reads a relative target dir from where it was started: the root, for
        // every entry point this repository has.
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
    .join("guest");
    build_guests(&guest, &target_dir);
    let out = target_dir.join(TARGET).join("release");
    println!("cargo:rustc-env=SUPERPEER_GUEST_DIR={}", out.display());
}

fn build_guests(guest: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--workspace")
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's flags and wrappers (clippy's, coverage's) are for native code
    // and would break or slow the wasm build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_TARGET_")
            || key.starts_with("CARGO_ENCODED_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || matches!(&*key, "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER")
        {
            command.env_remove(&*key);
        }
    }
    let status = command.status().expect("could not run cargo to build the policy components");
    if !status.success() {
        panic!(
            "building the policy components in guest/ failed (see above). If the \
             `{TARGET}` target is missing, run `rustup target add {TARGET}` (`just` does it \
             for you)."
        );
    }
}
