//! The client tools the tests run, and the check that they are installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::nginx::NGINX_RTMP_MODULE;

/// Panics unless `name` is installed and usable. Known names: `ffmpeg`, `ffprobe`, `rtmpdump`,
/// `nginx` (with the RTMP module), `python3-librtmp` (a python3 that can `import librtmp`),
/// `ffmpeg9` and `ffmpeg7` (see [`ffmpeg9`], [`ffmpeg7`]).
pub fn require_tool(name: &str) {
    let ok = match name {
        "ffmpeg" | "ffprobe" => runs(Command::new(name).arg("-version")),
        // rtmpdump has no version flag that exits 0; being able to start it is enough.
        "rtmpdump" => Command::new("rtmpdump").arg("--help").output().is_ok(),
        // GStreamer 1.22's own RTMP client (gst-plugins-bad), a legacy player.
        "gstreamer" => runs(Command::new("gst-inspect-1.0").args(["--exists", "rtmp2src"])),
        "nginx" => nginx_binary().is_some() && Path::new(NGINX_RTMP_MODULE).exists(),
        "python3-librtmp" => python3_with_librtmp().is_some(),
        "chromium" => runs(Command::new("chromium").arg("--version")),
        "openssl" => runs(Command::new("openssl").arg("version")),
        "curl" => runs(Command::new("curl").arg("--version")),
        "ffmpeg9" => ffmpeg9_lookup().is_some(),
        "ffmpeg7" => ffmpeg7_lookup().is_some(),
        "redis-server" | "redis-cli" | "haproxy" => runs(Command::new(name).arg("-v")),
        other => panic!("require_tool: unknown tool {other:?}"),
    };
    if ok {
        return;
    }
    if std::env::var_os("CI").is_some() {
        panic!("required tool {name:?} is missing (CI is set: a missing client is a failure)");
    }
    panic!(
        "required tool {name:?} is missing. Run scripts/test.sh, which installs the clients the end-to-end \
         tests use (Debian: ffmpeg rtmpdump python3-librtmp nginx-light libnginx-mod-rtmp chromium openssl)"
    );
}

/// A current FFmpeg (≥ 7; PyPI's `imageio-ffmpeg` wheel ships 9.x) with its own RTMP stack:
/// every variant including rtmpe/rtmpte, Enhanced RTMP, libx265, libsvtav1, libopus.
/// `scripts/test.sh` installs it into a virtualenv under `target/` and sets `RTMPX_FFMPEG9`.
pub fn ffmpeg9() -> PathBuf {
    require_tool("ffmpeg9");
    ffmpeg9_lookup().expect("checked by require_tool")
}

/// FFmpeg 7.0 (`imageio-ffmpeg` 0.6.0 ships 7.0.2, a static build with GnuTLS and gmp): the
/// release whose RTMPTS still works (later ones refuse their own tunnel requests, see
/// `tests/ffmpeg9.rs`). `scripts/test.sh` installs it beside FFmpeg 9 and sets `RTMPX_FFMPEG7`.
/// Being static, it cannot resolve names through glibc's NSS: give it IP addresses.
pub fn ffmpeg7() -> PathBuf {
    require_tool("ffmpeg7");
    ffmpeg7_lookup().expect("checked by require_tool")
}

fn ffmpeg9_lookup() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND.get_or_init(|| pypi_ffmpeg("RTMPX_FFMPEG9", "ffmpeg9-venv", |major| major >= 7)).clone()
}

fn ffmpeg7_lookup() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND.get_or_init(|| pypi_ffmpeg("RTMPX_FFMPEG7", "ffmpeg7-venv", |major| major == 7)).clone()
}

/// The FFmpeg named by `env_var`, or else the one in the `imageio-ffmpeg` virtualenv `venv` under
/// `target/` (cargo test run by hand), if its major version passes `wanted`.
fn pypi_ffmpeg(env_var: &str, venv: &str, wanted: fn(u32) -> bool) -> Option<PathBuf> {
    let from_env = std::env::var_os(env_var).map(PathBuf::from);
    let from_venv = || {
        let python = crate::target_dir().join(venv).join("bin/python");
        let out = Command::new(python)
            .args(["-c", "import imageio_ffmpeg as i; print(i.get_ffmpeg_exe())"])
            .output()
            .ok()?;
        out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    };
    let path = from_env.or_else(from_venv)?;
    let out = Command::new(&path).arg("-version").output().ok()?;
    let first = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned();
    // "ffmpeg version n9.0.2-17-g...", "ffmpeg version 7.0.2-static ..."
    let major: u32 = first
        .strip_prefix("ffmpeg version ")?
        .trim_start_matches('n')
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    wanted(major).then_some(path)
}

pub(crate) fn runs(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The python3 that has python-librtmp (Debian's /usr/bin/python3; a pyenv python3 on PATH
/// usually does not).
pub fn python3_with_librtmp() -> Option<PathBuf> {
    ["/usr/bin/python3", "python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| runs(Command::new(p).args(["-c", "import librtmp"])))
}

pub(crate) fn nginx_binary() -> Option<PathBuf> {
    ["nginx", "/usr/sbin/nginx"].into_iter().map(PathBuf::from).find(|p| runs(Command::new(p).arg("-v")))
}
