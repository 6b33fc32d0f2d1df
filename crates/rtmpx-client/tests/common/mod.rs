//! Shared test support: the real gateway and nginx-rtmp as servers, a synthetic stream, and a
//! publish → play round trip that checks every frame.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use rtmpx_client::{ClientEvent, ClientOptions, Connection, MediaKind, RtmpUrl};
use rtmpx_core::amf::{encode_amf0, Amf0Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Builds the gateway binary once per test process (cargo's lock serialises parallel builds),
/// unless `RTMPX_BIN` names one to use.
fn gateway_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RTMPX_BIN") {
        return PathBuf::from(path);
    }
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "rtmpx", "--bin", "rtmpx"]).current_dir(env!("CARGO_MANIFEST_DIR"));
    // Variables cargo sets for this test process would reach build scripts (ring's) and make
    // every later plain `cargo build` redo them: build as a shell would.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_", "CARGO_CRATE_NAME"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR", "OUT_DIR"]
                .contains(&name.as_ref());
        if set_by_cargo {
            cmd.env_remove(name.as_ref());
        }
    }
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build for the gateway");
    assert!(status.success(), "building the rtmpx gateway failed");
    // The test binary is target/<profile>/deps/<name>; the gateway is target/<profile>/rtmpx.
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join("rtmpx");
    assert!(path.exists(), "{} not found after building", path.display());
    *built = Some(path.clone());
    path
}

/// The rtmpx gateway running on loopback with an app `live`.
pub(crate) struct Gateway {
    _child: Child,
    _dir: tempfile::TempDir,
    /// scheme → `scheme://127.0.0.1:port/live`.
    pub bases: HashMap<String, String>,
}

impl Gateway {
    /// Starts the gateway with these `[[listener]]` tables (addresses on 127.0.0.1:0) and waits
    /// until it is ready.
    pub(crate) async fn start(listeners: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("rtmpx.toml");
        let text = format!("{listeners}\n[[app]]\nname = \"live\"\npublish = true\nplay = true\n");
        std::fs::write(&config, text).expect("writing the gateway config");
        let mut child = Command::new(gateway_binary())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the gateway");
        let mut lines = BufReader::new(child.stdout.take().expect("gateway stdout")).lines();
        let mut bases = HashMap::new();
        let ready = async {
            while let Some(line) = lines.next_line().await.expect("reading gateway output") {
                if line.contains("rtmpx ready") {
                    return;
                }
                // "... listener on 127.0.0.1:PORT: publish and play at SCHEME://127.0.0.1:PORT/live/<stream>"
                if let Some(url) =
                    line.split_whitespace().find(|w| w.contains("://") && w.ends_with("/<stream>"))
                {
                    let base = url.trim_end_matches("/<stream>").to_owned();
                    let scheme = base.split("://").next().unwrap_or_default().to_owned();
                    bases.insert(scheme, base);
                }
            }
            panic!("the gateway exited before it was ready");
        };
        tokio::time::timeout(Duration::from_secs(30), ready).await.expect("gateway ready in time");
        // Keep draining its log so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Gateway { _child: child, _dir: dir, bases }
    }

    pub(crate) fn url(&self, scheme: &str, stream: &str) -> RtmpUrl {
        let base =
            self.bases.get(scheme).unwrap_or_else(|| panic!("no {scheme} listener in {:?}", self.bases));
        RtmpUrl::parse(&format!("{base}/{stream}")).expect("gateway URL")
    }
}

/// nginx with the RTMP module on a loopback port, application `live` (with `publish_notify`, so
/// players hear of unpublishing as they do from the gateway).
pub(crate) struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Nginx {
    pub(crate) async fn start() -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = dir.path().join("nginx.conf");
        let p = dir.path().display();
        let text = format!(
            "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\ndaemon off;\nmaster_process off;\n\
             pid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{}}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; publish_notify on; }} }} }}\n"
        );
        std::fs::write(&conf, text).expect("writing the nginx config");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting nginx");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Nginx { child, _dir: dir, port };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nginx-rtmp did not start listening on {port}");
    }

    pub(crate) fn url(&self, stream: &str) -> RtmpUrl {
        RtmpUrl::parse(&format!("rtmp://127.0.0.1:{}/live/{stream}", self.port)).unwrap()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

pub(crate) struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and a server certificate it signed, for localhost and 127.0.0.1.
pub(crate) fn make_certs(dir: &Path) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "rtmpx-client test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let certs = Certs { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") };
    std::fs::write(&certs.ca, ca.pem()).unwrap();
    std::fs::write(&certs.cert, cert.pem()).unwrap();
    std::fs::write(&certs.key, key.serialize_pem()).unwrap();
    certs
}

/// One message of the synthetic stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    pub kind: MediaKind,
    pub timestamp: u32,
    pub payload: Vec<u8>,
}

pub(crate) fn metadata() -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_amf0(&Amf0Value::from("onMetaData"), &mut buf);
    let fields = Amf0Value::object([
        ("width", Amf0Value::from(640.0)),
        ("height", 360.0.into()),
        ("framerate", 25.0.into()),
    ]);
    encode_amf0(&fields, &mut buf);
    buf.to_vec()
}

/// AVC and AAC sequence headers: what a player needs before frames.
pub(crate) fn sequence_headers() -> Vec<Frame> {
    let avc =
        vec![0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, 0x04, 0x67, 0x64, 0x00, 0x1f];
    let aac = vec![0xaf, 0x00, 0x12, 0x10];
    vec![
        Frame { kind: MediaKind::Video, timestamp: 0, payload: avc },
        Frame { kind: MediaKind::Audio, timestamp: 0, payload: aac },
    ]
}

/// `count` video frames at 25 fps (a keyframe every 25, sizes from 50 bytes to 120 KB so that
/// messages span many chunks) interleaved with AAC frames every 23 ms. Each payload carries its
/// index, so every frame is distinct.
pub(crate) fn frames(count: u32) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut audio_ts = 0;
    for i in 0..count {
        let video_ts = i * 40;
        while audio_ts < video_ts {
            let mut payload = vec![0xaf, 0x01];
            payload.extend_from_slice(&audio_ts.to_be_bytes());
            payload.extend((0..180u32).map(|b| (b * 7 + audio_ts) as u8));
            out.push(Frame { kind: MediaKind::Audio, timestamp: audio_ts, payload });
            audio_ts += 23;
        }
        let key = i.is_multiple_of(25);
        let size = if i == 0 { 120_000 } else { 50 + (i as usize * 7919) % 30_000 };
        let mut payload = vec![if key { 0x17 } else { 0x27 }, 0x01, 0, 0, 0];
        payload.extend_from_slice(&i.to_be_bytes());
        payload.extend((0..size).map(|b| (b as u32 ^ i.wrapping_mul(31)) as u8));
        out.push(Frame { kind: MediaKind::Video, timestamp: video_ts, payload });
    }
    out
}

fn is_sequence_header(kind: MediaKind, payload: &[u8]) -> bool {
    match kind {
        MediaKind::Video => payload.get(1) == Some(&0),
        MediaKind::Audio => payload.get(1) == Some(&0),
        MediaKind::Data => true,
    }
}

/// What a round trip should check beyond frame order and payloads.
pub(crate) struct Expect {
    /// The server passes metadata through unchanged (nginx-rtmp rewrites it).
    pub metadata_intact: bool,
}

/// Publishes the synthetic stream on `publish_url`, plays it on `play_url`, and checks that the
/// player gets every frame, in order, intact, with the publisher's timestamp spacing; then that
/// the player hears of the unpublish.
pub(crate) async fn round_trip(
    publish_url: &RtmpUrl,
    play_url: &RtmpUrl,
    opts: &ClientOptions,
    expect: Expect,
) {
    let mut publisher = Connection::connect(publish_url, opts).await.expect("publisher connect");
    let pub_id = publisher.publish(&publish_url.stream).await.expect("publish");
    let mut player = Connection::connect(play_url, opts).await.expect("player connect");
    let play_id = player.play(&play_url.stream).await.expect("play");
    assert_eq!(publisher.handshake_version().is_encrypted(), publish_url.scheme.is_encrypted());
    assert_eq!(player.handshake_version().is_encrypted(), play_url.scheme.is_encrypted());

    let sent = frames(150);
    let meta = metadata();
    let publish = async move {
        publisher.send(pub_id, MediaKind::Data, 0, &meta).await.expect("send metadata");
        for f in sequence_headers() {
            publisher.send(pub_id, f.kind, f.timestamp, &f.payload).await.expect("send header");
        }
        for (i, f) in frames(150).iter().enumerate() {
            publisher.send(pub_id, f.kind, f.timestamp, &f.payload).await.expect("send frame");
            if i % 8 == 7 {
                // Paced a little, so a server with short player queues (nginx-rtmp) drops nothing.
                publisher.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        publisher.flush().await.expect("flush");
        publisher
    };
    let play = async {
        let mut got = Vec::new();
        let mut metadata = Vec::new();
        let mut headers = 0;
        let want = sent.len();
        while got.len() < want {
            let event = tokio::time::timeout(Duration::from_secs(20), player.next_event())
                .await
                .unwrap_or_else(|_| panic!("timed out after {} of {want} frames", got.len()))
                .expect("player event")
                .expect("player connection closed early");
            match event {
                ClientEvent::Media(m) => {
                    assert_eq!(m.stream_id, play_id);
                    if m.kind == MediaKind::Data {
                        metadata.push(m.payload.to_vec());
                    } else if is_sequence_header(m.kind, &m.payload) {
                        headers += 1;
                    } else {
                        got.push(Frame { kind: m.kind, timestamp: m.timestamp, payload: m.payload.to_vec() });
                    }
                }
                ClientEvent::Status { .. } => {}
                other => panic!("unexpected player event {other:?}"),
            }
        }
        (got, metadata, headers)
    };
    let (publisher, (got, metadata, headers)) = tokio::join!(publish, play);

    assert_eq!(got.len(), sent.len());
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert_eq!((g.kind, g.payload.len()), (s.kind, s.payload.len()), "frame {i}");
        assert!(g.payload == s.payload, "frame {i}: payload differs");
        // Servers may rebase timestamps, but never change their spacing.
        assert_eq!(
            g.timestamp.wrapping_sub(got[0].timestamp),
            s.timestamp - sent[0].timestamp,
            "frame {i}: timestamp spacing"
        );
    }
    assert!(headers >= 2, "sequence headers missing ({headers})");
    assert!(!metadata.is_empty(), "metadata missing");
    if expect.metadata_intact {
        assert_eq!(metadata[0], self::metadata());
    }

    // The publisher leaves: the player is told.
    let mut publisher = publisher;
    publisher.close_stream(pub_id).await.expect("close stream");
    publisher.close().await.expect("close publisher");
    let told = async {
        loop {
            match player.next_event().await.expect("player event") {
                Some(ClientEvent::Status { code, .. }) if code.contains("Unpublish") => return,
                Some(_) => {}
                None => panic!("player closed before the unpublish notice"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), told).await.expect("unpublish notice in time");
    player.close().await.expect("close player");
}
