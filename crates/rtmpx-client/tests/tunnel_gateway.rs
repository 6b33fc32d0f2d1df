//! rtmpt, rtmpte and rtmpts against the gateway's HTTP tunnel listeners (and its rtmp and rtmps
//! ports, which also answer HTTP).

use rtmpx_client::{ClientOptions, Connection, HandshakeVersion, RtmpUrl};
use rtmpx_testkit::certs::make_certs;
use rtmpx_testkit::synthetic::{live_url, round_trip, start_gateway, Expect};
use rtmpx_testkit::{Gateway, TempDir};

const LISTENERS: &str = "[[listener]]\nproto = \"rtmpt\"\naddr = \"127.0.0.1:0\"\n\
                         [[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpt_publish_and_play() {
    let gw = start_gateway(LISTENERS);
    let url = live_url(&gw, "rtmpt", "tunnelled");
    round_trip(&url, &url, &ClientOptions::default(), Expect { metadata_intact: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpte_publish_and_play() {
    let gw = start_gateway(LISTENERS);
    let port = live_url(&gw, "rtmpt", "x").port;
    for (i, version) in [HandshakeVersion::Rtmpe, HandshakeVersion::RtmpeXtea].into_iter().enumerate() {
        let url = RtmpUrl::parse(&format!("rtmpte://127.0.0.1:{port}/live/enc{i}")).unwrap();
        let mut opts = ClientOptions::default();
        opts.rtmpe_version = version;
        round_trip(&url, &url, &opts, Expect { metadata_intact: true }).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpt_publisher_reaches_rtmp_player() {
    let gw = start_gateway(LISTENERS);
    let publish = live_url(&gw, "rtmpt", "across");
    let play = live_url(&gw, "rtmp", "across");
    round_trip(&publish, &play, &ClientOptions::default(), Expect { metadata_intact: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpt_on_the_rtmp_port() {
    let gw = start_gateway(LISTENERS);
    let port = live_url(&gw, "rtmp", "x").port;
    let url = RtmpUrl::parse(&format!("rtmpt://127.0.0.1:{port}/live/shared")).unwrap();
    let mut conn =
        Connection::connect(&url, &ClientOptions::default()).await.expect("rtmpt on the rtmp port");
    conn.publish("shared").await.expect("publish");
    conn.close().await.unwrap();
}

/// The gateway with an rtmpts and an rtmps listener using a test CA's certificate.
fn https_gateway(dir: &std::path::Path) -> (Gateway, ClientOptions) {
    let certs = make_certs(dir);
    let tls = format!("tls = [{{ cert = {:?}, key = {:?} }}]", certs.cert, certs.key);
    let listeners = format!(
        "[[listener]]\nproto = \"rtmpts\"\naddr = \"127.0.0.1:0\"\n{tls}\n\
         [[listener]]\nproto = \"rtmps\"\naddr = \"127.0.0.1:0\"\n{tls}\n[tls]\ncert_dir = {:?}\n",
        dir.join("devcerts"),
    );
    let mut opts = ClientOptions::default();
    opts.tls.ca_file = Some(certs.ca);
    (start_gateway(&listeners), opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpts_publish_and_play() {
    let dir = TempDir::new("client-tunnel-tls");
    let (gw, opts) = https_gateway(dir.path());
    let url = live_url(&gw, "rtmpts", "secret");
    let by_name = RtmpUrl::parse(&format!("rtmpts://localhost:{}/live/secret", url.port)).unwrap();
    round_trip(&by_name, &url, &opts, Expect { metadata_intact: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpts_on_the_rtmps_port_reaches_rtmps_player() {
    let dir = TempDir::new("client-tunnel-tls");
    let (gw, opts) = https_gateway(dir.path());
    let play = live_url(&gw, "rtmps", "shared");
    let publish = RtmpUrl::parse(&format!("rtmpts://127.0.0.1:{}/live/shared", play.port)).unwrap();
    round_trip(&publish, &play, &opts, Expect { metadata_intact: true }).await;
}
