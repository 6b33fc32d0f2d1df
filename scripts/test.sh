#!/usr/bin/env bash
# The one test command: installs the clients the end-to-end tests drive (when missing), then
# checks formatting, runs clippy and every test of the workspace (unit, property and e2e).
#
# The e2e tests (tests/*.rs of the root package) start rtmpx, nginx-rtmp, ffmpeg and rtmpdump.
# Heavy ones take a process-wide lock (rtmpx_testkit::exclusive), and cargo runs test binaries one
# after another, so at most one heavy test runs at a time without slowing the unit tests down.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v rtmpdump >/dev/null 2>&1 || missing+=(rtmpdump)
/usr/bin/python3 -c 'import librtmp' >/dev/null 2>&1 || missing+=(python3-librtmp)
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || missing+=(nginx-light)
[ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] || missing+=(libnginx-mod-rtmp)
# tests/rtmps.rs: openssl s_client, and the system CA store a verifying client must reject us with.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
# tests/ops.rs: the status page in a headless browser, and docker-compose.yml parsed as YAML.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
/usr/bin/python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
# tests/enhanced_rtmp.rs: GStreamer 1.22's rtmp2src as a legacy player.
gst-inspect-1.0 --exists rtmp2src >/dev/null 2>&1 || missing+=(gstreamer1.0-tools gstreamer1.0-plugins-bad)
# tests/http_flv.rs: mpegts.js from npm (below).
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# tests/cluster.rs: the Redis stream directory and a TCP balancer in front of the nodes.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
# FFmpeg 9 goes into a virtualenv (below): Debian's python3 needs python3-venv for that.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# tests/acme.rs: Pebble, the ACME test CA, issues the certificates rtmpx orders.
command -v pebble >/dev/null 2>&1 || missing+=(pebble)

if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "test.sh: installing ${missing[*]}" >&2
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Everything built or installed below goes under target_dir. The debug build of the workspace and
# its test binaries takes about 2.6 GB; a full disk shows up only as the linker dying with SIGBUS,
# so say it up front.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target_dir"
free_mib=$(df -Pm "$target_dir" | awk 'NR == 2 { print $4 }')
if [ "${free_mib:-0}" -lt 4096 ]; then
    echo "test.sh: warning: only ${free_mib} MiB free under $target_dir; the build needs about 2.6 GB" >&2
fi

# A FFmpeg from PyPI's imageio-ffmpeg wheel (a static build with its own RTMP stack), in a
# virtualenv under target/: pypi_ffmpeg VENV PIP_SPEC LABEL prints the executable's path.
pypi_ffmpeg() {
    local venv="$target_dir/$1"
    if ! "$venv/bin/python" -c 'import imageio_ffmpeg' >/dev/null 2>&1; then
        echo "test.sh: installing $3 ($2) into $venv" >&2
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "$2" >&2
    fi
    "$venv/bin/python" -c 'import imageio_ffmpeg as i; print(i.get_ffmpeg_exe())'
}
# FFmpeg 9: every variant, Enhanced RTMP v2, libx265/libsvtav1/libopus (RTMPX_FFMPEG9). FFmpeg 7.0
# (imageio-ffmpeg 0.6.0 ships 7.0.2): the last release whose own RTMPTS works, so every variant is
# tested both ways with a FFmpeg >= 7 (RTMPX_FFMPEG7).
RTMPX_FFMPEG9=$(pypi_ffmpeg ffmpeg9-venv 'imageio-ffmpeg>=0.6' "FFmpeg 9")
RTMPX_FFMPEG7=$(pypi_ffmpeg ffmpeg7-venv 'imageio-ffmpeg==0.6.0' "FFmpeg 7.0")
export RTMPX_FFMPEG9 RTMPX_FFMPEG7

# mpegts.js for tests/http_flv.rs (Chromium plays HTTP-FLV and WebSocket-FLV with it), under target/.
# `npm pack` fetches only the published package, whose dist/ bundle is self-contained (its own
# dependencies include a git-hosted build tool that a registry-only machine cannot fetch).
mpegts_dir="$target_dir/npm/mpegts.js-1.8.0"
if [ ! -f "$mpegts_dir/package/dist/mpegts.js" ]; then
    echo "test.sh: installing mpegts.js into $mpegts_dir" >&2
    mkdir -p "$mpegts_dir"
    (cd "$mpegts_dir" && npm pack --silent mpegts.js@1.8.0 >/dev/null && tar xzf mpegts.js-1.8.0.tgz)
fi
export RTMPX_MPEGTS_JS="$mpegts_dir/package/dist/mpegts.js"

cargo fmt --all -- --check
# Cargo.toml's rust-version and the Dockerfile's rust image cover every locked dependency.
python3 scripts/check_msrv.py
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end suites drive the real binary: build it once, outside any test process.
cargo build -p rtmpx --bin rtmpx
export RTMPX_BIN="$target_dir/debug/rtmpx"
# Every suite runs even after one fails, so one run reports every failure.
cargo test --workspace --no-fail-fast
