#!/usr/bin/env bash
# Soak test (not part of CI): runs publishers and players on every variant against one gateway
# for N minutes with churn, then reports leaked sessions, memory growth and errors.
#   scripts/soak.sh [MINUTES]        (default 10; RTMPX_BIN=path uses that binary)
# Every ROUND_SECS a new round starts: one publisher per variant (ffmpeg over rtmp, rtmps, rtmpt,
# rtmpts; python3-librtmp over rtmpe) for PUBLISH_SECS, and players joining and leaving on random
# variants (ffmpeg: rtmp, rtmps, rtmpt, rtmpts; rtmpdump: rtmpe, rtmpte). Rounds overlap, so
# sessions start and end all the time. Needs ffmpeg, rtmpdump, python3-librtmp, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
ROUND_SECS=${ROUND_SECS:-15}
PUBLISH_SECS=${PUBLISH_SECS:-40}
for tool in ffmpeg rtmpdump curl python3; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is missing (scripts/test.sh installs the clients)"; exit 2; }
done
/usr/bin/python3 -c 'import librtmp' 2>/dev/null || { echo "soak: python3-librtmp is missing"; exit 2; }

if [ -z "${RTMPX_BIN:-}" ]; then
  cargo build --release -q -p rtmpx
  RTMPX_BIN=${CARGO_TARGET_DIR:-target}/release/rtmpx
fi
dir=$(mktemp -d /tmp/rtmpx-soak.XXXXXX)
echo "soak: ${minutes} min, working in $dir"
read -r p_rtmp p_rtmps p_rtmpt p_rtmpts p_admin < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
cat >"$dir/rtmpx.toml" <<TOML
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:$p_rtmp"
[[listener]]
proto = "rtmps"
addr = "127.0.0.1:$p_rtmps"
[[listener]]
proto = "rtmpt"
addr = "127.0.0.1:$p_rtmpt"
[[listener]]
proto = "rtmpts"
addr = "127.0.0.1:$p_rtmpts"
[[app]]
name = "live"
[tls]
cert_dir = "$dir/certs"
[rtmpt]
idle_timeout_secs = 5
[admin]
addr = "127.0.0.1:$p_admin"
TOML
"$RTMPX_BIN" serve --config "$dir/rtmpx.toml" >"$dir/rtmpx.log" 2>&1 &
gw=$!
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$gw" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q "rtmpx ready" "$dir/rtmpx.log" && break; sleep 0.1; done
grep -q "rtmpx ready" "$dir/rtmpx.log" || { echo "soak: gateway did not start"; cat "$dir/rtmpx.log"; exit 1; }

# A source file for the librtmp publisher (audio/video tags only; see protocol-notes).
ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=size=320x240:rate=25 -f lavfi \
  -i sine=sample_rate=44100 -t "$PUBLISH_SECS" -c:v libx264 -preset ultrafast -g 25 -pix_fmt yuv420p \
  -c:a aac -b:a 64k -f flv "$dir/source.flv"
cat >"$dir/librtmp_publish.py" <<'PY'
import sys, time, librtmp
url, path = sys.argv[1], sys.argv[2]
data = open(path, 'rb').read()
conn = librtmp.RTMP(url, live=True)
conn.connect()
stream = conn.create_stream(writeable=True)
pos, start = 13, time.time()
while pos + 11 <= len(data):
    kind, size = data[pos], int.from_bytes(data[pos+1:pos+4], 'big')
    ts = int.from_bytes(data[pos+4:pos+7], 'big') | (data[pos+7] << 24)
    tag = data[pos:pos+15+size]
    pos += 15 + size
    if kind in (8, 9):
        delay = ts / 1000.0 - (time.time() - start)
        if delay > 0:
            time.sleep(delay)
        stream.write(tag)
stream.close()
conn.close()
PY

url() { # scheme stream
  case $1 in
    rtmp|rtmpe) echo "$1://127.0.0.1:$p_rtmp/live/$2" ;;
    rtmps) echo "rtmps://127.0.0.1:$p_rtmps/live/$2" ;;
    rtmpt|rtmpte) echo "$1://127.0.0.1:$p_rtmpt/live/$2" ;;
    rtmpts) echo "rtmpts://127.0.0.1:$p_rtmpts/live/$2" ;;
  esac
}
mkdir -p "$dir/clients"
spawn() { # name, command...
  local name=$1; shift
  ( "$@" >"$dir/clients/$name.log" 2>&1; echo $? >"$dir/clients/$name.rc" ) &
  pids+=($!)
}
publish() { # variant stream
  local u; u=$(url "$1" "$2")
  if [ "$1" = rtmpe ]; then
    spawn "pub-$2" timeout $((PUBLISH_SECS + 20)) /usr/bin/python3 "$dir/librtmp_publish.py" "$u" "$dir/source.flv"
  else
    spawn "pub-$2" timeout $((PUBLISH_SECS + 20)) ffmpeg -hide_banner -nostdin -loglevel error -re \
      -f lavfi -i testsrc=size=320x240:rate=25 -f lavfi -i sine=frequency=440:sample_rate=44100 \
      -t "$PUBLISH_SECS" -c:v libx264 -preset ultrafast -tune zerolatency -g 25 -pix_fmt yuv420p \
      -c:a aac -b:a 64k -f flv "$u"
  fi
}
play() { # variant stream seconds tag
  local u; u=$(url "$1" "$2")
  case $1 in
    # rtmpdump's --stop does not end a live recording: stop it with SIGTERM after the time.
    rtmpe|rtmpte) spawn "play-$2-$4-$1" bash -c 'rtmpdump -q --live -m 10 -r "$1" -o /dev/null & p=$!
        (sleep "$2"; kill -TERM $p 2>/dev/null) & wait $p' _ "$u" "$3" ;;
    *) spawn "play-$2-$4-$1" ffmpeg -hide_banner -nostdin -loglevel error -rw_timeout 10000000 -i "$u" -t "$3" -c copy -f null - ;;
  esac
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$gw/status"; }
sessions() { curl -s "http://127.0.0.1:$p_admin/metrics" | awk '/^rtmpx_sessions\{/ {s += $2} END {print s + 0}'; }

end=$(( $(date +%s) + minutes * 60 ))
round=0
rss_warm=""
echo "time_s,rss_kib,sessions" >"$dir/samples.csv"
start=$(date +%s)
next_sample=$start
while [ "$(date +%s)" -lt "$end" ]; do
  round=$((round + 1))
  for v in rtmp rtmps rtmpt rtmpts rtmpe; do publish "$v" "r$round-$v"; done
  for v in rtmp rtmps rtmpt rtmpts rtmpe; do
    for i in 1 2; do
      pv=$(printf '%s\n' rtmp rtmps rtmpt rtmpts rtmpe rtmpte | shuf -n 1)
      delay=$((3 + RANDOM % 8)) secs=$((5 + RANDOM % (PUBLISH_SECS - 20)))
      ( sleep "$delay"; play "$pv" "r$round-$v" "$secs" "$i"; wait ) &
      pids+=($!)
    done
  done
  round_end=$(( $(date +%s) + ROUND_SECS ))
  while [ "$(date +%s)" -lt "$round_end" ]; do
    now=$(date +%s)
    if [ "$now" -ge "$next_sample" ]; then
      echo "$((now - start)),$(rss),$(sessions)" >>"$dir/samples.csv"
      next_sample=$((now + 10))
      if [ -z "$rss_warm" ] && [ $((now - start)) -ge 60 ]; then rss_warm=$(rss); fi
    fi
    kill -0 "$gw" 2>/dev/null || { echo "soak: the gateway died"; tail -50 "$dir/rtmpx.log"; exit 1; }
    sleep 1
  done
done
echo "soak: waiting for the last clients"
wait "${pids[@]}" 2>/dev/null || true
pids=()
sleep 8   # tunnel sessions expire after 5 s without requests
rss_end=$(rss)
left=$(sessions)
rtmpt_left=$(curl -s "http://127.0.0.1:$p_admin/metrics" | awk '/^rtmpx_rtmpt_sessions / {print $2}')
publishers=$(ls "$dir"/clients/pub-*.rc | wc -l)
players=$(ls "$dir"/clients/play-*.log | wc -l)
unfinished=$(for f in "$dir"/clients/*.log; do [ -f "${f%.log}.rc" ] || echo "$f"; done | wc -l)
failed_pub=$(grep -L '^0$' "$dir"/clients/pub-*.rc | wc -l)
# rtmpdump ends with 2 ("incomplete") when stopped by SIGTERM: that is how its players stop.
failed_play=$(for f in "$dir"/clients/play-*.rc; do rc=$(cat "$f"); case $rc in 0|2|137|143) ;; *) echo "$f";; esac; done | wc -l)
gw_errors=$(grep -cE ' ERROR |panicked' "$dir/rtmpx.log" || true)
gw_warns=$(grep -c ' WARN ' "$dir/rtmpx.log" || true)
opened=$(grep -c 'closed: ' "$dir/rtmpx.log" || true)
echo
echo "== soak report (${minutes} min, $round rounds)"
echo "clients:           $publishers publishers ($failed_pub failed), $players players ($failed_play failed)"
echo "                   $unfinished without an exit status (killed with their shell; see clients/*.log)"
echo "sessions closed:   $opened"
echo "sessions leaked:   $left open at the end (rtmpt tunnel sessions: ${rtmpt_left:-?})"
echo "memory (VmRSS):    after 1 min ${rss_warm:-?} KiB, at the end $rss_end KiB (samples: $dir/samples.csv)"
echo "gateway log:       $gw_errors errors/panics, $gw_warns warnings ($dir/rtmpx.log)"
status=0
[ "$left" = 0 ] || status=1
[ "$gw_errors" = 0 ] || status=1
[ "$failed_pub" = 0 ] || status=1
if [ $status -ne 0 ]; then
  echo "soak: FAILED (see $dir)"
  for f in $(grep -L '^0$' "$dir"/clients/pub-*.rc); do echo "--- ${f%.rc}.log"; tail -5 "${f%.rc}.log"; done
fi
exit $status
