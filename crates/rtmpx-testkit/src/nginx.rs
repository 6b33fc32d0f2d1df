//! nginx-rtmp: a reference server and relay origin.

use std::fs;
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::tools::nginx_binary;
use crate::{free_port, require_tool, Proc, TempDir};

/// Where Debian's libnginx-mod-rtmp puts the module.
pub const NGINX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// nginx with the RTMP module on a free loopback port, `application live` (players start on a
/// keyframe: `wait_key`, `wait_video`) plus
/// whatever `extra_apps` adds. Killed on drop.
pub struct NginxRtmp {
    proc: Proc,
    port: u16,
    dir: TempDir,
}

impl NginxRtmp {
    pub fn start() -> NginxRtmp {
        NginxRtmp::start_with("")
    }

    /// `extra_apps`: more `application NAME { ... }` blocks inside the rtmp `server`.
    pub fn start_with(extra_apps: &str) -> NginxRtmp {
        require_tool("nginx");
        let nginx = nginx_binary().expect("nginx checked above");
        let mut last_error = String::new();
        // The port is picked by binding and releasing it; another process may take it in
        // between, so a failed start is retried on a new port.
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new("nginx");
            let d = dir.path().display();
            let conf = format!(
                "load_module {NGINX_RTMP_MODULE};\n\
                 daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 1024; }}\n\
                 rtmp {{\n  access_log {d}/access.log;\n  server {{\n    listen 127.0.0.1:{port};\n    \
                 chunk_size 4096;\n    application live {{ live on; wait_key on; wait_video on; }}\n{extra_apps}\n  }}\n}}\n"
            );
            fs::write(dir.file("nginx.conf"), conf).expect("writing nginx.conf");
            let mut cmd = Command::new(&nginx);
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.file("nginx.conf"))
                .arg("-e")
                .arg(dir.file("error.log"));
            let mut proc = Proc::spawn("nginx", cmd, None, Duration::from_secs(3600));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && proc.try_status().is_none() {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return NginxRtmp { proc, port, dir };
                }
                thread::sleep(Duration::from_millis(50));
            }
            last_error = format!(
                "{}\nerror.log:\n{}",
                proc.describe(),
                fs::read_to_string(dir.file("error.log")).unwrap_or_default()
            );
        }
        panic!("nginx-rtmp did not start: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, app: &str, stream: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{app}/{stream}", self.port)
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.file("error.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }
}

impl Drop for NginxRtmp {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("[e2e] nginx error.log:\n{}", self.error_log());
        }
    }
}
