//! rtmps against the gateway's TLS listener, with a private CA made for the test.

mod common;

use std::path::Path;

use common::{make_certs, round_trip, Certs, Expect, Gateway};
use rtmpx_client::{ClientOptions, Connection, Error, RtmpUrl};

async fn tls_gateway(dir: &Path) -> (Gateway, Certs) {
    let certs = make_certs(dir);
    let listeners = format!(
        "[[listener]]\nproto = \"rtmps\"\naddr = \"127.0.0.1:0\"\ntls = [{{ cert = {:?}, key = {:?} }}]\n\
         [[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[tls]\ncert_dir = {:?}\n",
        certs.cert,
        certs.key,
        dir.join("devcerts"),
    );
    (Gateway::start(&listeners).await, certs)
}

fn trusting(ca: &Path) -> ClientOptions {
    let mut options = ClientOptions::default();
    options.tls.ca_file = Some(ca.to_owned());
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_publish_and_play_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, certs) = tls_gateway(dir.path()).await;
    // By name (SNI and a DNS name check) and by address (an IP address check).
    let by_ip = gw.url("rtmps", "secure");
    let by_name = RtmpUrl::parse(&format!("rtmps://localhost:{}/live/secure", by_ip.port)).unwrap();
    round_trip(&by_name, &by_ip, &trusting(&certs.ca), Expect { metadata_intact: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_publisher_reaches_plain_player() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, certs) = tls_gateway(dir.path()).await;
    let publish = gw.url("rtmps", "bridged");
    let play = gw.url("rtmp", "bridged");
    round_trip(&publish, &play, &trusting(&certs.ca), Expect { metadata_intact: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_refuses_an_unknown_issuer_unless_told_not_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, _certs) = tls_gateway(dir.path()).await;
    let url = gw.url("rtmps", "s");
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
