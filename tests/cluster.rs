//! A cluster end to end: redis-server as the stream directory, rtmpx nodes, and HAProxy in TCP
//! mode (round robin) in front. ffmpeg publishes through the balancer, ffmpeg and rtmpdump
//! players through it land on every node; the origin node dies; Redis stops and comes back.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rtmpx_testkit::{
    admin_addr, assert_good_recording, exclusive, free_port, http, metrics, publish_testsrc, record_ffmpeg,
    record_rtmpdump, require_tool, sample, Gateway, PacketKind, ProbeReport, Proc, TempDir,
};

const LOG_WAIT: Duration = Duration::from_secs(15);
const HEARTBEAT: Duration = Duration::from_millis(500);
const TTL: Duration = Duration::from_millis(1500);

fn require_tools() {
    for tool in ["ffmpeg", "ffprobe", "rtmpdump", "redis-server", "redis-cli", "haproxy"] {
        require_tool(tool);
    }
}

fn wait_line(gw: &Gateway, needles: &[&str]) -> String {
    gw.wait_for_log_line(needles, LOG_WAIT)
        .unwrap_or_else(|| panic!("no log line with {needles:?}; log:\n{}", gw.logs()))
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// A throwaway redis-server on `port`, without persistence (a restart starts empty).
fn start_redis(port: u16) -> Proc {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    let redis = Proc::spawn("redis-server", cmd, None, Duration::from_secs(900));
    wait_until("redis-server answers", Duration::from_secs(10), || redis_cli(port, &["PING"]) == "PONG");
    redis
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out =
        Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Node `index` on `port`; its RTMPT session ids start with `a<index>` (the balancer's rule).
fn node_config(index: usize, port: u16, redis_port: u16) -> String {
    format!(
        r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:{port}"

[[app]]
name = "live"

[relay]
backoff_initial_ms = 200
backoff_max_ms = 1000

[cluster]
redis = "redis://127.0.0.1:{redis_port}/0"
node = "rtmp://127.0.0.1:{port}"
heartbeat_ms = {}
ttl_ms = {}
linger_secs = 1
tunnel_tag = "a{index}"

[admin]
addr = "127.0.0.1:0"
"#,
        HEARTBEAT.as_millis(),
        TTL.as_millis()
    )
}

fn start_nodes(count: usize, redis_port: u16) -> (Vec<Gateway>, Vec<u16>) {
    let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
    let nodes = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| Gateway::start(&node_config(i, port, redis_port)))
        .collect();
    (nodes, ports)
}

/// HAProxy in front of the nodes on `ports`: RTMP in TCP mode, round robin, skipping a dead
/// node at once (health checks every 200 ms, redispatch on a refused connection); RTMPT in HTTP
/// mode, each request balanced on its own, except that a tunnel's requests go to the node whose
/// tag starts the session id (README: "Cluster"). Returns the RTMP and the RTMPT port.
fn start_haproxy(dir: &TempDir, ports: &[u16]) -> (Proc, u16, u16) {
    let (port, http_port) = (free_port(), free_port());
    let pins: String = (0..ports.len())
        .map(|i| format!("  use-server node{i} if {{ path_reg ^/(send|idle|close)/a{i} }}\n"))
        .collect();
    let servers: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("  server node{i} 127.0.0.1:{p} check inter 200 fall 1 rise 2\n"))
        .collect();
    let config = format!(
        "global\n  maxconn 1000\n{CASE_ADJUST}defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  \
         timeout server 60s\n  retries 3\n  option redispatch\nlisten rtmp\n  bind 127.0.0.1:{port}\n  \
         balance roundrobin\n{servers}listen rtmpt\n  mode http\n  bind 127.0.0.1:{http_port}\n  \
         option h1-case-adjust-bogus-client\n  \
         balance roundrobin\n{pins}{servers}"
    );
    let path = dir.file("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let proc = Proc::spawn("haproxy", cmd, None, Duration::from_secs(900));
    wait_until("haproxy listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (proc, port, http_port)
}

/// HAProxy writes header names in lower case; librtmp (rtmpdump) looks for `Content-Length:`.
const CASE_ADJUST: &str = "  h1-case-adjust content-length Content-Length\n  \
    h1-case-adjust content-type Content-Type\n  h1-case-adjust cache-control Cache-Control\n  \
    h1-case-adjust connection Connection\n";

fn largest_video_gap(report: &ProbeReport) -> f64 {
    let times: Vec<f64> =
        report.packets.iter().filter(|p| p.kind == PacketKind::Video).filter_map(|p| p.dts).collect();
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// How many times `node` accepted a publisher of `stream`.
fn publishes(node: &Gateway, stream: &str) -> usize {
    let field = format!("stream={stream}");
    node.logs()
        .lines()
        .filter(|l| l.contains("publishing") && l.split_whitespace().any(|w| w == field))
        .count()
}

fn entry_exists(redis_port: u16, stream: &str) -> bool {
    redis_cli(redis_port, &["EXISTS", &format!("rtmpx:stream:{stream}")]) == "1"
}

#[test]
fn three_nodes_behind_haproxy_serve_every_player_and_survive_the_origin() {
    let _serial = exclusive();
    require_tools();
    let dir = TempDir::new("cluster");
    let redis_port = free_port();
    let _redis = start_redis(redis_port);
    let (nodes, ports) = start_nodes(3, redis_port);
    let (_haproxy, lb, lb_http) = start_haproxy(&dir, &ports);
    let via_lb = format!("rtmp://127.0.0.1:{lb}/live/s");

    let mut publisher = publish_testsrc(&via_lb, 90.0);
    wait_until("a node publishes live/s", LOG_WAIT, || nodes.iter().any(|n| publishes(n, "live/s") > 0));
    let origin = nodes.iter().position(|n| publishes(n, "live/s") > 0).unwrap();
    let owner = redis_cli(redis_port, &["HGET", "rtmpx:stream:live/s", "node"]);
    assert_eq!(owner, format!("rtmp://127.0.0.1:{}", ports[origin]), "the directory names the origin");
    thread::sleep(Duration::from_secs(2));

    // Six players through the balancer: round robin puts two on each node.
    let mut players = Vec::new();
    for i in 0..3 {
        let out = dir.file(&format!("ffmpeg-{i}.flv"));
        players.push((format!("ffmpeg player {i}"), record_ffmpeg(&via_lb, &out, 6.0), out, 60, 100));
        let out = dir.file(&format!("rtmpdump-{i}.flv"));
        players.push((format!("rtmpdump player {i}"), record_rtmpdump(&via_lb, &out, 8.0), out, 50, 80));
    }
    for (label, mut player, out, video, audio) in players {
        player.finish();
        assert_good_recording(&label, &out, video, audio);
    }
    for (i, node) in nodes.iter().enumerate() {
        assert!(node.count_log("playing") >= 1, "node {i} had no player; log:\n{}", node.logs());
        let pulled = node
            .logs()
            .lines()
            .any(|l| l.contains("relay pull live/s <-") && l.contains("connected over rtmp"));
        assert_eq!(
            pulled,
            i != origin,
            "node {i} pulls exactly when it is not the origin; log:\n{}",
            node.logs()
        );
    }

    // RTMPT and RTMPTE through the HTTP balancer: each request may go to any node but those of
    // a session, pinned by the tag in its id. Opens go round robin: the players land on every node.
    let mut tunnels = Vec::new();
    for i in 0..3 {
        for scheme in ["rtmpt", "rtmpte"] {
            let out = dir.file(&format!("{scheme}-{i}.flv"));
            let url = format!("{scheme}://127.0.0.1:{lb_http}/live/s");
            // Debian's ffmpeg has no rtmpte: librtmp's rtmpdump plays that one.
            let player = if scheme == "rtmpt" {
                record_ffmpeg(&url, &out, 5.0)
            } else {
                record_rtmpdump(&url, &out, 6.0)
            };
            tunnels.push((format!("{scheme} player {i}"), player, out));
            thread::sleep(Duration::from_millis(300));
        }
    }
    for (label, mut player, out) in tunnels {
        player.finish();
        assert_good_recording(&label, &out, 50, 80);
    }
    let tunnelled: Vec<usize> = (0..3)
        .filter(|&i| nodes[i].logs().lines().any(|l| l.contains("playing") && l.contains("variant=\"rtmpt")))
        .collect();
    assert!(tunnelled.len() >= 2, "RTMPT players on nodes {tunnelled:?} only");

    // Every node's API and metrics show the directory.
    let edge = (origin + 1) % 3;
    thread::sleep(HEARTBEAT * 2);
    let reply = http(admin_addr(&nodes[edge]), "GET", "/api/v1/cluster", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let view: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(3), "{view}");
    assert_eq!(view["redis_up"], true, "{view}");
    let entry = &view["streams"][0];
    assert_eq!((entry["app"].as_str(), entry["stream"].as_str()), (Some("live"), Some("s")), "{view}");
    assert_eq!(entry["node"].as_str(), Some(owner.as_str()), "{view}");
    assert_eq!(entry["codecs"].as_str(), Some("h264,aac"), "{view}");
    let text = metrics(admin_addr(&nodes[edge]));
    assert_eq!(sample(&text, "rtmpx_cluster_redis_up"), 1);
    assert_eq!(sample(&text, "rtmpx_cluster_nodes"), 3);
    assert_eq!(sample(&text, &format!("rtmpx_cluster_streams{{node=\"{owner}\"}}")), 1);
    assert!(sample(&text, "rtmpx_cluster_pulls_started_total") >= 1, "{text}");
    let text = metrics(admin_addr(&nodes[origin]));
    assert_eq!(sample(&text, "rtmpx_cluster_pulls_started_total"), 0, "the origin pulls nothing");

    // Long players on the other nodes, then the origin dies.
    let others: Vec<usize> = (0..3).filter(|&i| i != origin).collect();
    let mut survivors = Vec::new();
    for &i in &others {
        let url = format!("rtmp://127.0.0.1:{}/live/s", ports[i]);
        let out = dir.file(&format!("long-ffmpeg-{i}.flv"));
        survivors.push((format!("ffmpeg on node {i}"), record_ffmpeg(&url, &out, 60.0), out));
        let out = dir.file(&format!("long-rtmpdump-{i}.flv"));
        survivors.push((format!("rtmpdump on node {i}"), record_rtmpdump(&url, &out, 60.0), out));
    }
    thread::sleep(Duration::from_secs(4));
    nodes[origin].signal("KILL");
    let killed = Instant::now();
    let gone = wait_until("the origin's entry leaves the directory", TTL * 3, || {
        !entry_exists(redis_port, "live/s")
    });
    eprintln!("[e2e] directory entry gone {gone:?} after the origin died");
    assert!(gone <= TTL + HEARTBEAT, "entry outlived the TTL: {gone:?}");
    let node_key = format!("rtmpx:node:rtmp://127.0.0.1:{}", ports[origin]);
    wait_until("the origin's node entry expires", TTL * 2, || {
        redis_cli(redis_port, &["EXISTS", &node_key]) == "0"
    });
    for (label, mut player, out) in survivors {
        wait_until(&format!("{label} ends by itself"), Duration::from_secs(15), || {
            player.try_status().is_some()
        });
        eprintln!("[e2e] {label} ended {:?} after the origin died: {}", killed.elapsed(), player.describe());
        assert_good_recording(&label, &out, 40, 60);
    }
    let _ = publisher.finish();

    // The publisher comes back through the balancer, lands on a live node; new players find it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_origin = loop {
        assert!(Instant::now() < deadline, "no node took the publisher back");
        publisher = publish_testsrc(&via_lb, 40.0);
        let started = Instant::now();
        let found = loop {
            if let Some(&i) = others.iter().find(|&&i| publishes(&nodes[i], "live/s") > 0) {
                break Some(i);
            }
            if publisher.try_status().is_some() || started.elapsed() > Duration::from_secs(5) {
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        if let Some(i) = found {
            break i;
        }
        let _ = publisher.stop();
    };
    wait_until("the new origin is in the directory", LOG_WAIT, || {
        redis_cli(redis_port, &["HGET", "rtmpx:stream:live/s", "node"])
            == format!("rtmp://127.0.0.1:{}", ports[new_origin])
    });
    thread::sleep(Duration::from_secs(2));
    let mut players = Vec::new();
    for i in 0..2 {
        let out = dir.file(&format!("after-{i}.flv"));
        players.push((format!("ffmpeg player {i} after the move"), record_ffmpeg(&via_lb, &out, 5.0), out));
    }
    for (label, mut player, out) in players {
        player.finish();
        assert_good_recording(&label, &out, 50, 80);
    }
    let other = others.iter().copied().find(|&i| i != new_origin).unwrap();
    let from_new = format!("relay pull live/s <- rtmp://127.0.0.1:{}/live/s", ports[new_origin]);
    wait_line(&nodes[other], &[&from_new, "connected over rtmp"]);
    let _ = publisher.stop();
}

#[test]
fn redis_outage_keeps_local_streams_and_lookups_recover_after_it() {
    let _serial = exclusive();
    require_tools();
    let dir = TempDir::new("cluster-redis");
    let redis_port = free_port();
    let mut redis = start_redis(redis_port);
    let (nodes, ports) = start_nodes(2, redis_port);
    let url = |node: usize, stream: &str| format!("rtmp://127.0.0.1:{}/live/{stream}", ports[node]);

    let mut publisher = publish_testsrc(&url(0, "s"), 60.0);
    wait_until("node 0 publishes live/s", LOG_WAIT, || publishes(&nodes[0], "live/s") > 0);
    thread::sleep(Duration::from_secs(1));
    let local_out = dir.file("local.flv");
    let remote_out = dir.file("remote.flv");
    let local = record_ffmpeg(&url(0, "s"), &local_out, 20.0);
    let remote = record_ffmpeg(&url(1, "s"), &remote_out, 20.0);
    wait_line(&nodes[1], &["relay pull live/s <-", "connected over rtmp"]);
    thread::sleep(Duration::from_secs(3));

    // Redis goes away: publishing and playing go on.
    redis.stop();
    wait_line(&nodes[0], &["Redis at", "unavailable"]);
    let mut second = publish_testsrc(&url(0, "s2"), 40.0);
    wait_line(&nodes[0], &["live/s2 is published here unregistered"]);
    let mut blind = record_ffmpeg(&url(1, "s2"), &dir.file("blind.flv"), 3.0);
    wait_line(&nodes[1], &["look-up of live/s2 failed"]);
    let _ = blind.stop();
    let text = metrics(admin_addr(&nodes[1]));
    assert_eq!(sample(&text, "rtmpx_cluster_redis_up"), 0, "{text}");
    assert!(sample(&text, "rtmpx_cluster_lookups_failed_total") >= 1, "{text}");
    assert_eq!(nodes[1].count_log("relay pull live/s2"), 0, "failed look-ups pull nothing");
    thread::sleep(Duration::from_secs(3));

    // Redis returns (empty): the node registers its streams within a heartbeat or so.
    let _redis = start_redis(redis_port);
    let back = Instant::now();
    let registered =
        wait_until("live/s2 is registered again", HEARTBEAT * 4, || entry_exists(redis_port, "live/s2"));
    eprintln!("[e2e] re-registered {registered:?} after Redis returned");
    assert!(entry_exists(redis_port, "live/s"));
    let found_out = dir.file("found.flv");
    let mut found = record_ffmpeg(&url(1, "s2"), &found_out, 4.0);
    found.finish();
    eprintln!("[e2e] a remote look-up served {:?} after Redis returned", back.elapsed());
    assert_good_recording("player of live/s2 on node 1 after the outage", &found_out, 40, 60);

    for (label, mut player, out) in
        [("local player", local, local_out), ("remote player", remote, remote_out)]
    {
        player.finish();
        let report = assert_good_recording(label, &out, 400, 700);
        let gap = largest_video_gap(&report);
        assert!(gap < 0.5, "{label}: the stream stopped for {gap:.2}s during the Redis outage");
    }
    let _ = second.stop();
    let _ = publisher.stop();
}

/// Players waiting on one node for a stream published nowhere yet get it once it is published on
/// another node: the node looks the stream up again every heartbeat while its players wait. An
/// HTTP-FLV player of a stream published on another node is served through a pull like an RTMP
/// player, where one of a stream published nowhere gets 404 at once.
#[test]
fn waiting_players_and_http_flv_players_reach_a_stream_published_on_another_node() {
    let _serial = exclusive();
    require_tools();
    let dir = TempDir::new("cluster-wait");
    let redis_port = free_port();
    let _redis = start_redis(redis_port);
    let (nodes, ports) = start_nodes(3, redis_port);
    let rtmp = |node: usize| format!("rtmp://127.0.0.1:{}/live/w", ports[node]);
    let node_addr = |node: usize| std::net::SocketAddr::from(([127, 0, 0, 1], ports[node]));

    // Published nowhere: an HTTP-FLV player gets 404 at once.
    let reply = http(node_addr(2), "GET", "/live/w.flv", None);
    assert_eq!(reply.status, 404, "{}", reply.body);

    // Two players on node 1 wait for it through several heartbeats.
    let ffmpeg_out = dir.file("waiting-ffmpeg.flv");
    let ffmpeg_player = record_ffmpeg(&rtmp(1), &ffmpeg_out, 5.0);
    let rtmpdump_out = dir.file("waiting-rtmpdump.flv");
    let rtmpdump_player = record_rtmpdump(&rtmp(1), &rtmpdump_out, 10.0);
    wait_until("two players wait on node 1", LOG_WAIT, || nodes[1].count_log("stream=live/w") >= 2);
    thread::sleep(HEARTBEAT * 4);
    assert_eq!(nodes[1].count_log("relay pull live/w"), 0, "nothing to pull yet:\n{}", nodes[1].logs());

    // Published on node 0: node 1 finds it on its next look-up and pulls it for its players.
    let mut publisher = publish_testsrc(&rtmp(0), 30.0);
    let published = Instant::now();
    let from_origin = format!("relay pull live/w <- rtmp://127.0.0.1:{}/live/w", ports[0]);
    wait_line(&nodes[1], &[&from_origin, "connected over rtmp"]);
    eprintln!("[e2e] the waiting players' node pulls {:?} after the publish", published.elapsed());

    // Node 2 serves an HTTP-FLV player from a pull of its own.
    thread::sleep(Duration::from_secs(1));
    let flv_out = dir.file("http-flv.flv");
    let flv_player = record_ffmpeg(&format!("http://127.0.0.1:{}/live/w.flv", ports[2]), &flv_out, 4.0);
    for (label, mut player, out, video, audio) in [
        ("ffmpeg waiting on node 1", ffmpeg_player, ffmpeg_out, 50, 80),
        ("rtmpdump waiting on node 1", rtmpdump_player, rtmpdump_out, 30, 50),
        ("HTTP-FLV player on node 2", flv_player, flv_out, 40, 60),
    ] {
        player.finish();
        assert_good_recording(label, &out, video, audio);
    }
    wait_line(&nodes[2], &[&from_origin, "connected over rtmp"]);
    wait_line(&nodes[2], &["playing", "variant=\"http-flv\"", "stream=live/w"]);
    let _ = publisher.stop();
}

/// When the directory names another owner while a pull runs (two nodes publish one name after a
/// Redis split heals; here redis-cli hands the entry over), the pull moves to the new owner
/// make-before-break, as for a reconnect request: its player goes on without a gap.
#[test]
fn a_running_pull_follows_the_directory_to_a_new_owner() {
    let _serial = exclusive();
    require_tools();
    let dir = TempDir::new("cluster-move");
    let redis_port = free_port();
    let _redis = start_redis(redis_port);
    let (nodes, ports) = start_nodes(3, redis_port);
    let node_url = |node: usize| format!("rtmp://127.0.0.1:{}", ports[node]);
    let rtmp = |node: usize| format!("{}/live/m", node_url(node));
    let owner = || redis_cli(redis_port, &["HGET", "rtmpx:stream:live/m", "node"]);

    let mut first = publish_testsrc(&rtmp(0), 40.0);
    wait_until("node 0 owns live/m", LOG_WAIT, || owner() == node_url(0));
    thread::sleep(Duration::from_secs(1));
    let out = dir.file("across-the-move.flv");
    let mut player = record_ffmpeg(&rtmp(2), &out, 12.0);
    wait_line(&nodes[2], &[&format!("relay pull live/m <- {}", rtmp(0)), "connected over rtmp"]);
    thread::sleep(Duration::from_secs(3));

    // The entry goes to node 1, which then publishes the same name (its claim is its own now).
    redis_cli(redis_port, &["HSET", "rtmpx:stream:live/m", "node", &node_url(1)]);
    let mut second = publish_testsrc(&rtmp(1), 40.0);
    wait_until("node 1 publishes live/m", LOG_WAIT, || publishes(&nodes[1], "live/m") > 0);
    wait_line(&nodes[0], &["live/m is published here and on", &node_url(1)]);
    let moved = wait_line(&nodes[2], &["relay pull live/m: moved to", &format!("{}/live ", node_url(1))]);
    eprintln!("[e2e] {moved}");

    player.finish();
    let report = assert_good_recording("player on node 2 across the move", &out, 250, 400);
    let gap = largest_video_gap(&report);
    assert!(gap < 0.5, "the player's video stopped for {gap:.2}s when the pull moved");
    assert_eq!(nodes[2].count_log("starting (a player asked for it)"), 1, "one pull, moved, not a new one");
    let _ = second.stop();
    let _ = first.stop();
}
