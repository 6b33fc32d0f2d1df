//! The workspace's own binaries (`rtmpx`, `rtmpx-bench`), built once per test process.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Builds `rtmpx` once per test process (or takes `RTMPX_BIN`) and returns its path.
pub fn rtmpx_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(|| workspace_binary("rtmpx", "RTMPX_BIN")) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// The load generator, `rtmpx-bench` (built like [`rtmpx_binary`]; `RTMPX_BENCH_BIN` overrides).
pub fn rtmpx_bench_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(|| workspace_binary("rtmpx-bench", "RTMPX_BENCH_BIN")) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// Builds the binary `name` of the workspace package of the same name (same profile as the tests)
/// and returns its path; the environment variable `override_var` names a prebuilt one instead.
fn workspace_binary(name: &str, override_var: &str) -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os(override_var) {
        return Ok(PathBuf::from(bin));
    }
    // Cargo sets CARGO for the processes it runs; the compile-time value is the fallback.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = crate::workspace_root().join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args(["build", "-p", name, "--bin", name, "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdin(Stdio::null());
    // Variables cargo sets for this test process would reach build scripts (ring's) and make
    // every later plain `cargo build` redo them: build as a shell would.
    for (var, _) in std::env::vars_os() {
        let var = var.to_string_lossy();
        let set_by_cargo = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_", "CARGO_CRATE_NAME"]
            .iter()
            .any(|prefix| var.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR", "OUT_DIR"]
                .contains(&var.as_ref());
        if set_by_cargo {
            command.env_remove(var.as_ref());
        }
    }
    let output = command.output().map_err(|e| format!("running cargo build -p {name}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p {name} --bin {name} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter_map(json_executable)
        .find(|p| p.file_name().is_some_and(|n| n == name))
        .ok_or_else(|| format!("cargo build -p {name} reported no {name} executable:\n{stdout}"))
}

/// The `"executable":"..."` field of one line of cargo's JSON messages.
fn json_executable(line: &str) -> Option<PathBuf> {
    const KEY: &str = "\"executable\":\"";
    let start = line.find(KEY)? + KEY.len();
    let mut path = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(PathBuf::from(path)),
            '\\' => path.push(chars.next()?),
            c => path.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_json_executable_is_found() {
        let line = r#"{"reason":"compiler-artifact","executable":"/w/target/debug/rtmpx","fresh":true}"#;
        assert_eq!(json_executable(line), Some(PathBuf::from("/w/target/debug/rtmpx")));
        assert_eq!(json_executable(r#"{"executable":null}"#), None);
    }
}
