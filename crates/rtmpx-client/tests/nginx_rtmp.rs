//! Interop with a third-party server: nginx-rtmp (Debian's nginx + libnginx-mod-rtmp).

mod common;

use common::{round_trip, Expect, Nginx};
use rtmpx_client::ClientOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_play_through_nginx_rtmp() {
    let nginx = Nginx::start().await;
    let url = nginx.url("interop");
    round_trip(&url, &url, &ClientOptions::default(), Expect { metadata_intact: false }).await;
}
