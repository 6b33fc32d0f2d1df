//! Interop with a third-party server: nginx-rtmp (Debian's nginx + libnginx-mod-rtmp).

use rtmpx_client::{ClientOptions, RtmpUrl};
use rtmpx_testkit::synthetic::{round_trip, Expect};
use rtmpx_testkit::NginxRtmp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_play_through_nginx_rtmp() {
    // publish_notify: players hear of unpublishing as they do from the gateway.
    let nginx = NginxRtmp::start_with("    application notify { live on; publish_notify on; }");
    let url = RtmpUrl::parse(&nginx.url("notify", "interop")).unwrap();
    round_trip(&url, &url, &ClientOptions::default(), Expect { metadata_intact: false }).await;
}
