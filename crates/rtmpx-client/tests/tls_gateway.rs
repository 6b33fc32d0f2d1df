//! rtmps against the gateway's TLS listener, with a private CA made for the test.

use std::path::Path;

use rtmpx_client::{ClientOptions, Connection, Error, RtmpUrl};
use rtmpx_testkit::certs::{make_certs, Certs};
use rtmpx_testkit::synthetic::{live_url, round_trip, start_gateway, Expect};
use rtmpx_testkit::{Gateway, TempDir};

fn tls_gateway(dir: &Path) -> (Gateway, Certs) {
    let certs = make_certs(dir);
    let listeners = format!(
        "[[listener]]\nproto = \"rtmps\"\naddr = \"127.0.0.1:0\"\ntls = [{{ cert = {:?}, key = {:?} }}]\n\
         [[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[tls]\ncert_dir = {:?}\n",
        certs.cert,
        certs.key,
        dir.join("devcerts"),
    );
    (start_gateway(&listeners), certs)
}

fn trusting(ca: &Path) -> ClientOptions {
    let mut options = ClientOptions::default();
    options.tls.ca_file = Some(ca.to_owned());
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_publish_and_play_with_a_private_ca() {
    let dir = TempDir::new("client-tls");
    let (gw, certs) = tls_gateway(dir.path());
    // By name (SNI and a DNS name check) and by address (an IP address check).
    let by_ip = live_url(&gw, "rtmps", "secure");
    let by_name = RtmpUrl::parse(&format!("rtmps://localhost:{}/live/secure", by_ip.port)).unwrap();
    round_trip(&by_name, &by_ip, &trusting(&certs.ca), Expect { metadata_intact: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_publisher_reaches_plain_player() {
    let dir = TempDir::new("client-tls");
    let (gw, certs) = tls_gateway(dir.path());
    let publish = live_url(&gw, "rtmps", "bridged");
    let play = live_url(&gw, "rtmp", "bridged");
    round_trip(&publish, &play, &trusting(&certs.ca), Expect { metadata_intact: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_refuses_an_unknown_issuer_unless_told_not_to_check() {
    let dir = TempDir::new("client-tls");
    let (gw, _certs) = tls_gateway(dir.path());
    let url = live_url(&gw, "rtmps", "s");
    match Connection::connect(&url, &ClientOptions::default()).await {
        Err(Error::Io { source, .. }) => {
            assert!(source.to_string().to_lowercase().contains("certificate"), "{source}")
        }
        Err(e) => panic!("expected a certificate error, got {e}"),
        Ok(_) => panic!("connected to a server with an unknown issuer"),
    }
    let mut dangerous = ClientOptions::default();
    dangerous.tls.dangerous_accept_any_certificate = true;
    let mut conn = Connection::connect(&url, &dangerous).await.expect("connect without verification");
    conn.publish("s").await.expect("publish");
    conn.close().await.unwrap();
}
