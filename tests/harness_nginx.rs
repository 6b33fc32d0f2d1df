//! The harness itself, checked against a reference server (nginx-rtmp): if this fails, the
//! clients or helpers are broken, not rtmpx.

use std::thread;
use std::time::Duration;

use rtmpx_testkit::{
    assert_good_recording, exclusive, publish_testsrc, record_ffmpeg, record_rtmpdump, require_tool,
    NginxRtmp,
};

#[test]
fn helpers_record_and_probe_a_stream_through_nginx_rtmp() {
    let _serial = exclusive();
    for tool in ["ffmpeg", "ffprobe", "rtmpdump", "nginx"] {
        require_tool(tool);
    }
    let nginx = NginxRtmp::start();
    let dir = rtmpx_testkit::TempDir::new("harness");
    let url = nginx.url("live", "check");

    let mut publisher = publish_testsrc(&url, 6.0);
    thread::sleep(Duration::from_secs(1));
    let ff_out = dir.file("ffmpeg.flv");
    let rd_out = dir.file("rtmpdump.flv");
    let mut ffmpeg = record_ffmpeg(&url, &ff_out, 3.0);
    let mut rtmpdump = record_rtmpdump(&url, &rd_out, 3.0);

    assert!(ffmpeg.finish().success(), "{}", ffmpeg.describe());
    rtmpdump.finish();
    assert!(publisher.finish().success(), "{}", publisher.describe());

    // 3 s at 25 fps and 43 AAC frames/s, minus what a late start costs (nginx has no GOP cache).
    let ff = assert_good_recording("ffmpeg via nginx", &ff_out, 60, 100);
    let rd = assert_good_recording("rtmpdump via nginx", &rd_out, 40, 70);
    assert!(rd.has_metadata, "rtmpdump keeps onMetaData: {}", rd.summary());
    assert!(ff.video_span() > 2.5, "ffmpeg -t 3 spans about 3 s: {}", ff.summary());
}
