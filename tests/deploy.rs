//! What an operator installs and reads: `--help` for every command, `serve --check`, the
//! systemd unit (checked by `systemd-analyze verify` where systemd is installed), the
//! install script (staged into a directory, twice, as an upgrade would run it) and the
//! Kubernetes manifest (its `.env` checked by the real binary).

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

#[path = "support/harness.rs"]
mod harness;

const BINARY: &str = env!("CARGO_BIN_EXE_superpeer");

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/deploy")
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn help(args: &[&str]) -> String {
    String::from_utf8(run(Command::new(BINARY).args(args)).stdout).unwrap()
}

#[test]
fn every_command_explains_itself_and_serve_help_lists_every_key() {
    let top = help(&["--help"]);
    for command in ["serve", "policy"] {
        assert!(top.contains(command), "--help lists {command}:\n{top}");
    }
    assert!(
        !top.lines().any(|l| l.trim_start().starts_with("worker")),
        "worker is internal:\n{top}"
    );
    let serve = help(&["serve", "--help"]);
    for key in superpeer::master::config::KEYS {
        assert!(serve.contains(key.name), "serve --help explains {}:\n{serve}", key.name);
    }
    for flag in ["--port", "--access-token", "--public-ip", "--check", "--log-format"] {
        assert!(serve.contains(flag), "serve --help has {flag}");
    }
    assert!(help(&["policy", "--help"]).contains("export-default"));
    assert!(help(&["policy", "check", "--help"]).contains("<FILE>"));
    assert!(help(&["policy", "export-default", "--help"]).contains("<FILE>"));
    assert!(help(&["--version"]).starts_with("superpeer "));
}

#[test]
fn the_readme_documents_every_key_route_and_metric_family() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    for key in superpeer::master::config::KEYS {
        assert!(readme.contains(&format!("| `{}`", key.name)), "README's key table: {}", key.name);
    }
    for (method, path) in superpeer::serve::ROUTES {
        assert!(
            readme.contains(&format!("`{method} {path}`")),
            "README's REST table: {method} {path}"
        );
    }
    for family in ["superpeer_worker_segments_served_total", "superpeer_fetch_errors_total"] {
        assert!(readme.contains(family), "README's metrics: {family}");
    }
}

#[test]
fn serve_check_accepts_a_good_configuration_and_names_the_key_of_a_bad_one() {
    let dir = harness::data_dir("check");
    let good = dir.0.join("good.env");
    std::fs::write(&good, "listenPort=9123\naccessToken=x\nsignal1=wss://tracker.example/\n")
        .unwrap();
    let output = run(Command::new(BINARY).args(["serve", "--check", "--env-file"]).arg(&good));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["listen"], "0.0.0.0:9123");
    assert_eq!(summary["accessToken"], "set");
    assert_eq!(summary["policy"]["name"], "pml");
    let bad = dir.0.join("bad.env");
    std::fs::write(&bad, "listenPort=9123\ncacheSize=lots\n").unwrap();
    let output =
        Command::new(BINARY).args(["serve", "--check", "--env-file"]).arg(&bad).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cacheSize"));
}

#[test]
fn policy_check_admits_the_exported_default_and_refuses_what_is_not_a_policy() {
    let dir = harness::data_dir("policy-check");
    let exported = dir.0.join("default.wasm");
    run(Command::new(BINARY).args(["policy", "export-default"]).arg(&exported));
    let output = run(Command::new(BINARY).args(["policy", "check"]).arg(&exported));
    let meta: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(meta["name"], "pml");
    assert_eq!(meta["size"], std::fs::metadata(&exported).unwrap().len());
    let garbage = dir.0.join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm garbage").unwrap();
    let output = Command::new(BINARY).args(["policy", "check"]).arg(&garbage).output().unwrap();
    assert!(!output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).is_empty());
    let missing = Command::new(BINARY)
        .args(["policy", "check"])
        .arg(dir.0.join("missing.wasm"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing.wasm"));
}

/// `systemd-analyze verify` on `unit` with its `ExecStart` binary replaced by the one
/// built here (verify insists the binary exists). It exits 0 even on unknown keys, so
/// any output at all counts as a failure. `None` where systemd is not installed.
fn systemd_verify(unit: &str, dir: &Path) -> Option<()> {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not installed here; the unit was not verified");
        return None;
    }
    let path = dir.join("superpeer.service");
    assert!(unit.contains("ExecStart=/"), "{unit}");
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    let binary = exec.trim_start_matches("ExecStart=").split(' ').next().unwrap();
    std::fs::write(&path, unit.replace(binary, BINARY)).unwrap();
    let output = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Only what it says of this unit: a host's own units may draw warnings of their own.
    let about_ours: Vec<&str> = said.lines().filter(|l| l.contains("superpeer")).collect();
    assert!(about_ours.is_empty(), "systemd-analyze verify complained:\n{said}");
    Some(())
}

#[test]
fn the_systemd_unit_restarts_always_is_hardened_and_passes_systemd_analyze() {
    let unit = std::fs::read_to_string(deploy_dir().join("superpeer.service")).unwrap();
    for line in [
        "Restart=always",
        "User=superpeer",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=superpeer",
        "ExecStart=/usr/local/bin/superpeer serve --env-file /etc/superpeer/.env",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit has {line}");
    }
    // Policies are compiled to native code at run time.
    assert!(!unit.lines().any(|l| l.starts_with("MemoryDenyWriteExecute")));
    let dir = harness::data_dir("unit");
    systemd_verify(&unit, &dir.0);
}

fn env_value(env: &str, key: &str) -> Option<String> {
    env.lines().filter_map(|l| l.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.into())
}

#[test]
fn the_install_script_stages_binary_env_and_unit_and_keeps_the_env_on_upgrade() {
    let dir = harness::data_dir("install");
    let root = dir.0.join("root");
    let script = deploy_dir().join("install.sh");
    let install = |args: &[&str]| {
        run(Command::new("bash")
            .arg(&script)
            .arg("--root")
            .arg(&root)
            .args(["--binary", BINARY])
            .args(args))
    };
    install(&["--port", "8080", "--signal", "wss://tracker.example/"]);
    let binary = root.join("usr/local/bin/superpeer");
    assert!(binary.is_file());
    let env_file = root.join("etc/superpeer/.env");
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(env_value(&env, "listenPort").as_deref(), Some("8080"));
    assert_eq!(env_value(&env, "signal1").as_deref(), Some("wss://tracker.example/"));
    assert_eq!(env_value(&env, "dataDir").as_deref(), Some("/var/lib/superpeer"));
    let token = env_value(&env, "accessToken").unwrap();
    assert!(token.len() >= 24, "a generated token: {token:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the token is not world-readable");

    // An upgrade with another port: the port changes, the token and the rest stay.
    std::fs::write(&env_file, format!("{env}cacheSize=2G\n")).unwrap();
    install(&["--port", "9090"]);
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(env_value(&env, "listenPort").as_deref(), Some("9090"));
    assert_eq!(env_value(&env, "accessToken"), Some(token));
    assert_eq!(env_value(&env, "cacheSize").as_deref(), Some("2G"));
    assert_eq!(env.matches("listenPort=").count(), 1);
    // What was staged starts: the binary accepts its .env.
    let output = run(Command::new(&binary).args(["serve", "--check", "--env-file"]).arg(&env_file));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["listen"], "0.0.0.0:9090");
    assert_eq!(summary["fleet"], Value::Null, "one machine on its own");

    // Into a fleet: the etcd and this machine's name in it.
    install(&["--etcd", "http://10.0.0.5:2379,http://10.0.0.6:2379", "--node-name", "edge-3"]);
    let output = run(Command::new(&binary).args(["serve", "--check", "--env-file"]).arg(&env_file));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["fleet"]["etcdEndpoints"][1], "http://10.0.0.6:2379");
    assert_eq!(summary["fleet"]["nodeName"], "edge-3");
    let env = std::fs::read_to_string(&env_file).unwrap();

    let unit = std::fs::read_to_string(root.join("etc/systemd/system/superpeer.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/superpeer serve"));
    systemd_verify(&unit, &dir.0);

    // Bad input is refused before anything changes: by the script, or by the binary's
    // check of the new .env.
    for bad in [
        &["--port", "eighty"][..],
        &["--port", "0"],
        &["--signal", "http://not-a-tracker/"],
        &["--etcd", "etcd:2379"],
    ] {
        let refused = Command::new("bash")
            .arg(&script)
            .arg("--root")
            .arg(&root)
            .args(["--binary", BINARY])
            .args(bad)
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{bad:?} was accepted");
        assert_eq!(std::fs::read_to_string(&env_file).unwrap(), env, "{bad:?} changed the .env");
        assert!(!root.join("etc/superpeer/.env.new").exists(), "{bad:?} left its draft");
    }
}

fn find<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter().find(|d| d["kind"].as_str() == Some(kind)).unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_kubernetes_manifest_runs_on_host_networking_with_a_readiness_probe_and_a_valid_env() {
    let text = std::fs::read_to_string(deploy_dir().join("kubernetes.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let env = find(&docs, "ConfigMap")["data"][".env"].as_str().unwrap().to_string();
    let port: i64 = env_value(&env, "listenPort").unwrap().parse().unwrap();

    let daemon_set = find(&docs, "DaemonSet");
    let pod = &daemon_set["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true), "viewers reach the UDP ports directly");
    let container = &pod["containers"][0];
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"].as_str(), Some("/health"));
    assert_eq!(probe["port"].as_i64(), Some(port));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/health"));
    let args: Vec<&str> =
        container["args"].as_vec().unwrap().iter().filter_map(Yaml::as_str).collect();
    assert_eq!(args, ["serve", "--env-file", "/etc/superpeer/.env"]);
    let env_vars: Vec<&str> =
        container["env"].as_vec().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    for name in ["SUPERPEER_ACCESS_TOKEN", "SUPERPEER_PUBLIC_IP"] {
        assert!(env_vars.contains(&name), "{name} is set");
        assert!(help(&["serve", "--help"]).contains(name), "{name} is read by superpeer");
    }

    // The ConfigMap's .env is one the binary starts with.
    let dir = harness::data_dir("manifest");
    let path = dir.0.join(".env");
    std::fs::write(&path, &env).unwrap();
    let output = run(Command::new(BINARY)
        .args(["serve", "--check", "--env-file"])
        .arg(&path)
        .env("SUPERPEER_ACCESS_TOKEN", "from-the-secret")
        .env("SUPERPEER_PUBLIC_IP", "192.0.2.7"));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["listen"], format!("0.0.0.0:{port}"));
    assert_eq!(summary["accessToken"], "set");
    assert_eq!(summary["publicIp"], "192.0.2.7");
    // A fleet: every pod on the same etcd, each named by its host.
    assert_eq!(
        summary["fleet"]["etcdEndpoints"][0],
        "http://etcd.superpeer.svc.cluster.local:2379"
    );
    assert!(summary["fleet"]["nodeName"].as_str().is_some_and(|name| !name.is_empty()));
}
