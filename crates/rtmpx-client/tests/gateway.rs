//! The client against the real rtmpx gateway, over every transport it serves.

use rtmpx_client::{ClientOptions, Connection, Error, HandshakeVersion, RtmpUrl};
use rtmpx_testkit::synthetic::{live_url, round_trip, start_gateway, Expect};

const TCP_LISTENER: &str = "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_publish_and_play() {
    let gw = start_gateway(TCP_LISTENER);
    let url = live_url(&gw, "rtmp", "plain");
    round_trip(&url, &url, &ClientOptions::default(), Expect { metadata_intact: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpe_publish_and_play_every_type() {
    let gw = start_gateway(TCP_LISTENER);
    let base = live_url(&gw, "rtmp", "x");
    for (i, version) in
        [HandshakeVersion::Rtmpe, HandshakeVersion::RtmpeXtea, HandshakeVersion::RtmpeBlowfish]
            .into_iter()
            .enumerate()
    {
        let url = RtmpUrl::parse(&format!("rtmpe://127.0.0.1:{}/live/enc{i}", base.port)).unwrap();
        let mut opts = ClientOptions::default();
        opts.rtmpe_version = version;
        round_trip(&url, &url, &opts, Expect { metadata_intact: true }).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpe_publisher_plain_player() {
    let gw = start_gateway(TCP_LISTENER);
    let play = live_url(&gw, "rtmp", "mixed");
    let publish = RtmpUrl::parse(&format!("rtmpe://127.0.0.1:{}/live/mixed", play.port)).unwrap();
    round_trip(&publish, &play, &ClientOptions::default(), Expect { metadata_intact: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_app_is_rejected() {
    let gw = start_gateway(TCP_LISTENER);
    let port = live_url(&gw, "rtmp", "x").port;
    let url = RtmpUrl::parse(&format!("rtmp://127.0.0.1:{port}/nosuchapp/s")).unwrap();
    match Connection::connect(&url, &ClientOptions::default()).await {
        Err(Error::Rejected { code, .. }) => assert!(code.contains("Connect"), "{code}"),
        Err(e) => panic!("expected a rejection, got {e}"),
        Ok(_) => panic!("connect to an unknown app succeeded"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_publisher_of_a_stream_is_rejected() {
    let gw = start_gateway(TCP_LISTENER);
    let url = live_url(&gw, "rtmp", "taken");
    let mut first = Connection::connect(&url, &ClientOptions::default()).await.unwrap();
    first.publish("taken").await.unwrap();
    let mut second = Connection::connect(&url, &ClientOptions::default()).await.unwrap();
    match second.publish("taken").await {
        Err(Error::Rejected { code, .. }) => assert!(code.contains("Publish"), "{code}"),
        other => panic!("expected a rejection, got {:?}", other.map_err(|e| e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_an_io_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = RtmpUrl::parse(&format!("rtmp://127.0.0.1:{port}/live/s")).unwrap();
    assert!(matches!(Connection::connect(&url, &ClientOptions::default()).await, Err(Error::Io { .. })));
}
