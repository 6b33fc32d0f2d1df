#!/usr/bin/env bash
# Benchmarks rtmpx against nginx-rtmp on loopback, same scenarios, one run, ratios at the end.
#
# Both servers get one core and one worker: nginx-rtmp `worker_processes 1` (single process),
# rtmpx `serve --threads 1`. The server is pinned to CPU $SERVER_CPU and the load tool
# (rtmpx-bench, one runtime thread) to CPU $TOOL_CPU with taskset, so they do not compete.
# Every scenario starts a fresh server on fresh ports. Server CPU is utime+stime from
# /proc/PID/stat over the measurement window; memory is VmRSS.
#
# Knobs (environment): OUT, DURATION, WARMUP, FANOUT ("200 1000 5000"), IDLE (10000), IDLE_FLV (1000),
# INGEST (200), VARIANT_PLAYERS (200), VARIANT_REPEAT (3), HANDSHAKES (500), VARIANTS ("rtmp rtmps rtmpt rtmpe"; also http-flv ws-flv),
# SERVERS ("nginx rtmpx"; rtmpx-cN = rtmpx with write_coalesce_ms N, rtmpx-nobatch = rtmpx that
# never batches on load: write_coalesce_under_load_ms 0), SCENARIOS ("fanout fanout-ffmpeg idle ingest variants handshakes"; also idle-flv, hot),
# SERVER_CPU (0), TOOL_CPU (1), FLV (a file to publish instead of synthetic frames).
# Scenario "fanout-ffmpeg" (in the default list): the fan-out of FANOUT_FFMPEG ("200 1000") players
# with FFmpeg publishing (FFMPEG, default `ffmpeg`: -re, stream copy of a generated 2.5 Mbit/s
# H.264/AAC file) instead of the load tool: a real encoder's write pattern, where frames often
# arrive together. Latency there is each video frame's delay beyond the least seen (no stamps).
# Scenario "hot" (not in the default list): one stream to HOT (2000) players on rtmpx with
# --threads N for each N in HOT_THREADS ("1 2"), as each of HOT_SERVERS ("rtmpx rtmpx-nobatch"), server on HOT_SERVER_CPUS and the tool on
# HOT_TOOL_CPUS (default: every CPU for both; give the server N cores of its own where there are
# more); reports CPU per delivered GB and each worker thread's share of the workers' CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

OUT=${OUT:-$ROOT/bench-results/$(date +%Y%m%d-%H%M%S)}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
FANOUT=${FANOUT:-"200 1000 5000"}
IDLE=${IDLE:-10000}
IDLE_FLV=${IDLE_FLV:-1000}
INGEST=${INGEST:-200}
VARIANT_PLAYERS=${VARIANT_PLAYERS:-200}
VARIANT_REPEAT=${VARIANT_REPEAT:-3}
HANDSHAKES=${HANDSHAKES:-500}
VARIANTS=${VARIANTS:-"rtmp rtmps rtmpt rtmpe"}
SERVERS=${SERVERS:-"nginx rtmpx"}
SCENARIOS=${SCENARIOS:-"fanout fanout-ffmpeg idle ingest variants handshakes"}
FANOUT_FFMPEG=${FANOUT_FFMPEG:-"200 1000"}
FFMPEG=${FFMPEG:-ffmpeg}
SERVER_CPU=${SERVER_CPU:-0}
TOOL_CPU=${TOOL_CPU:-1}
FLV=${FLV:-}
HOT=${HOT:-2000}
HOT_THREADS=${HOT_THREADS:-"1 2"}
HOT_SERVERS=${HOT_SERVERS:-"rtmpx rtmpx-nobatch"}
HOT_SERVER_CPUS=${HOT_SERVER_CPUS:-0-$(($(nproc) - 1))}
HOT_TOOL_CPUS=${HOT_TOOL_CPUS:-$HOT_SERVER_CPUS}
NGINX_MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so

command -v nginx >/dev/null || { echo "bench.sh: nginx not found (apt-get install nginx-light libnginx-mod-rtmp)" >&2; exit 1; }
[ -f "$NGINX_MODULE" ] || { echo "bench.sh: $NGINX_MODULE missing (apt-get install libnginx-mod-rtmp)" >&2; exit 1; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cargo build --release -q -p rtmpx -p rtmpx-bench
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
RTMPX=$TARGET/release/rtmpx
BENCH=$TARGET/release/rtmpx-bench
ulimit -n "$(ulimit -Hn)"

{
    echo "date: $(date -Is)"
    echo "host: $(uname -srm), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "memory: $(free -m | awk '/Mem:/{print $2}') MiB"
    echo "rtmpx: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo -dirty)"
    echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2), libnginx-mod-rtmp $(dpkg-query -W -f='${Version}' libnginx-mod-rtmp 2>/dev/null || echo '?')"
    echo "server on CPU $SERVER_CPU, load tool on CPU $TOOL_CPU; duration ${DURATION}s, warm-up ${WARMUP}s"
} | tee "$OUT/machine.txt"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "bench.sh: nothing listens on port $1" >&2
    return 1
}

SPID=
# start_server nginx|rtmpx|rtmpx-cN|rtmpx-nobatch|rtmpx-tN: sets SPID and the ports RTMP_PORT (rtmpx also
# RTMPS_PORT, RTMPT_PORT). rtmpx-cN is rtmpx with server.write_coalesce_ms = N; rtmpx-nobatch
# has server.write_coalesce_under_load_ms = 0 (every frame written at once, whatever the load);
# a suffix -tN (rtmpx-tN, rtmpx-nobatch-tN) runs N worker threads. The server runs on SERVER_CPUS if set, else on SERVER_CPU.
start_server() {
    local kind=$1 dir=$OUT/servers/$2 coalesce=0 under_load=20 threads=1
    if [[ $kind =~ ^(rtmpx.*)-t([0-9]+)$ ]]; then
        kind=${BASH_REMATCH[1]}
        threads=${BASH_REMATCH[2]}
    fi
    if [[ $kind == rtmpx-c* ]]; then
        coalesce=${kind#rtmpx-c}
        kind=rtmpx
    elif [[ $kind == rtmpx-nobatch ]]; then
        under_load=0
        kind=rtmpx
    fi
    mkdir -p "$dir/logs"
    RTMP_PORT=$(free_port)
    case $kind in
    nginx)
        cat >"$dir/nginx.conf" <<EOF
load_module $NGINX_MODULE;
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
error_log $dir/logs/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 20000; }
rtmp {
    server {
        listen 127.0.0.1:$RTMP_PORT;
        chunk_size 4096;
        application live { live on; }
    }
}
EOF
        taskset -c "$SERVER_CPU" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" \
            >"$dir/logs/stdout.log" 2>&1 &
        SPID=$!
        ;;
    rtmpx)
        RTMPS_PORT=$(free_port)
        RTMPT_PORT=$(free_port)
        cat >"$dir/rtmpx.toml" <<EOF
[server]
chunk_size = 4096
worker_threads = $threads
write_coalesce_ms = $coalesce
write_coalesce_under_load_ms = $under_load
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:$RTMP_PORT"
[[listener]]
proto = "rtmps"
addr = "127.0.0.1:$RTMPS_PORT"
[[listener]]
proto = "rtmpt"
addr = "127.0.0.1:$RTMPT_PORT"
[[app]]
name = "live"
[limits]
max_connections = 20000
max_connections_per_ip = 20000
# The load tool is one address: no per-address RTMPE budget.
rtmpe_handshakes_per_ip = 0
# Every load client shares 127.0.0.1: hundreds of publishers' GOPs from one address.
max_memory_per_ip = 8589934592
[timeouts]
# The idle case holds players of an unpublished stream, as nginx-rtmp does.
unpublished_play_secs = 0
[rtmpt]
max_sessions = 20000
max_sessions_per_ip = 20000
[tls]
cert_dir = "$OUT/certs"
[http_flv]
# Idle HTTP-FLV players (idle-flv) wait for a publisher like RTMP players.
wait_for_publisher = true
EOF
        RUST_LOG=warn taskset -c "${SERVER_CPUS:-$SERVER_CPU}" "$RTMPX" serve --config "$dir/rtmpx.toml" --threads "$threads" \
            >"$dir/logs/stdout.log" 2>&1 &
        SPID=$!
        ;;
    esac
    wait_port "$RTMP_PORT"
}

stop_server() {
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
}

# run_case NAME SERVER [rtmpx-bench args...]: a fresh server, one load run, its JSON in $OUT.
run_case() {
    local name=$1 server=$2
    shift 2
    echo "== $name" >&2
    start_server "$server" "$name"
    local publisher=
    if [ -n "${PUBLISH_FLV:-}" ]; then
        taskset -c "${TOOL_CPUS:-$TOOL_CPU}" "$FFMPEG" -nostdin -v error -re -stream_loop -1 -i "$PUBLISH_FLV" \
            -c copy -f flv "rtmp://127.0.0.1:$RTMP_PORT/live/bench" 2>"$OUT/$name.ffmpeg.log" &
        publisher=$!
        sleep 2
    fi
    local input=()
    [ -n "$FLV" ] && input=(--flv "$FLV")
    local args=("$@")
    # URLs may name ports as @RTMP@, @RTMPS@, @RTMPT@.
    args=("${args[@]//@RTMP@/$RTMP_PORT}")
    args=("${args[@]//@RTMPS@/${RTMPS_PORT:-0}}")
    args=("${args[@]//@RTMPT@/${RTMPT_PORT:-0}}")
    # Scenario arguments may set their own window.
    local window=()
    [[ " ${args[*]} " == *" --duration "* ]] || window+=(--duration "$DURATION")
    [[ " ${args[*]} " == *" --warmup "* ]] || window+=(--warmup "$WARMUP")
    taskset -c "${TOOL_CPUS:-$TOOL_CPU}" "$BENCH" --label "$name" --server-pid "$SPID" --insecure \
        "${window[@]}" --json "$OUT/$name.json" "${input[@]}" "${args[@]}" 2>"$OUT/$name.progress.log" \
        | tee "$OUT/$name.txt" || echo "bench.sh: $name reported failures (see $OUT/$name.txt)" >&2
    if [ -n "$publisher" ]; then
        kill "$publisher" 2>/dev/null || true
        wait "$publisher" 2>/dev/null || true
    fi
    stop_server
}

URL=rtmp://127.0.0.1:@RTMP@/live/bench
for scenario in $SCENARIOS; do
    case $scenario in
    fanout)
        for n in $FANOUT; do
            for s in $SERVERS; do run_case "fanout-$n-$s" "$s" --url "$URL" --players "$n"; done
        done
        ;;
    fanout-ffmpeg)
        command -v "$FFMPEG" >/dev/null || { echo "bench.sh: $FFMPEG not found (apt-get install ffmpeg)" >&2; exit 1; }
        flv=$OUT/ffmpeg-publisher.flv
        # Generated with Debian's ffmpeg (libx264), whichever FFMPEG publishes it.
        [ -f "$flv" ] || ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=1280x720:rate=25 \
            -f lavfi -i sine=frequency=440:sample_rate=44100 -t 40 -c:v libx264 -preset veryfast \
            -b:v 2500k -maxrate 2500k -bufsize 5000k -g 50 -c:a aac -b:a 128k -f flv "$flv"
        for n in $FANOUT_FFMPEG; do
            for s in $SERVERS; do
                PUBLISH_FLV=$flv run_case "ffpub-$n-$s" "$s" --url "$URL" --publishers 0 --players "$n"
            done
        done
        ;;
    hot)
        # One stream's players on every worker thread (the router's fan-out shards).
        for s in $HOT_SERVERS; do
            for t in $HOT_THREADS; do
                SERVER_CPUS=$HOT_SERVER_CPUS TOOL_CPUS=$HOT_TOOL_CPUS run_case "hot-$HOT-$s-t$t" "$s-t$t" \
                    --url "$URL" --players "$HOT" --connect-concurrency 128
            done
        done
        ;;
    idle)
        for s in $SERVERS; do
            run_case "idle-$IDLE-$s" "$s" --url "$URL" --idle --publishers 0 --players "$IDLE" \
                --connect-concurrency 256 --warmup 3 --duration 2
        done
        ;;
    idle-flv)
        # Idle players waiting for a stream: RTMP against HTTP-FLV and WebSocket-FLV (rtmpx only).
        run_case "idleflv-$IDLE_FLV-rtmp" rtmpx --url "$URL" --idle --publishers 0 --players "$IDLE_FLV" \
            --connect-concurrency 256 --warmup 3 --duration 2
        for v in http ws; do
            run_case "idleflv-$IDLE_FLV-$v-flv" rtmpx --url "$URL" --play-url "$v://127.0.0.1:@RTMP@/live/bench.flv" \
                --idle --publishers 0 --players "$IDLE_FLV" --connect-concurrency 256 --warmup 3 --duration 2
        done
        ;;
    ingest)
        for s in $SERVERS; do run_case "ingest-$INGEST-$s" "$s" --url "$URL" --publishers "$INGEST"; done
        ;;
    variants)
        # Ratios to plain RTMP divide two noisy figures: every variant (plain included) runs
        # VARIANT_REPEAT times, interleaved, and the report takes each one's median.
        for r in $(seq "$VARIANT_REPEAT"); do
            for v in $VARIANTS; do
                case $v in
                rtmp | rtmpe) port=@RTMP@ ;;
                rtmps) port=@RTMPS@ ;;
                rtmpt | rtmpte) port=@RTMPT@ ;;
                rtmpts) echo "bench.sh: rtmpts needs an rtmpts listener; skipped" >&2; continue ;;
                http-flv | ws-flv) port=@RTMP@ ;;
                esac
                case $v in
                http-flv) play="http://127.0.0.1:$port/live/bench.flv" ;;
                ws-flv) play="ws://127.0.0.1:$port/live/bench.flv" ;;
                *) play="$v://127.0.0.1:$port/live/bench" ;;
                esac
                run_case "variant-$v-r$r" rtmpx --url "$URL" --play-url "$play" --players "$VARIANT_PLAYERS"
            done
        done
        ;;
    handshakes)
        for v in $VARIANTS; do
            case $v in
            rtmp | rtmpe) port=@RTMP@ ;;
            rtmps) port=@RTMPS@ ;;
            rtmpt | rtmpte) port=@RTMPT@ ;;
            *) continue ;;
            esac
            run_case "handshakes-$v" rtmpx --url "$v://127.0.0.1:$port/live/bench" --idle --publishers 0 \
                --players "$HANDSHAKES" --warmup 0.5 --duration 1
        done
        ;;
    esac
done

python3 "$ROOT/scripts/bench_report.py" "$OUT" | tee "$OUT/report.md"
echo "results: $OUT (report.md, fanout.svg, one JSON per case)" >&2
