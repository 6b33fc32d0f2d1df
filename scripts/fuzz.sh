#!/usr/bin/env bash
# Runs every fuzz target for a while (default 60 s each), one after the other, with cargo-fuzz
# (libFuzzer), and prints executions, coverage and the outcome of each.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# The working corpus (fuzz/corpus/<target>, not committed) starts from the committed seeds in
# fuzz/seeds/<target> (real ffmpeg/rtmpdump/librtmp sessions; python3 fuzz/make_seeds.py
# rebuilds them). A crash leaves its input in fuzz/artifacts/<target>/: copy it into
# fuzz/regressions/<target>/ (the regression tests replay every file there) and fix the bug.
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain build them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(chunk_decoder amf handshake server_session config stream_query rtmpt_requests enhanced_media http_requests)
command -v cargo-fuzz >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
status=0
mkdir -p fuzz/logs
printf '%-16s %12s %8s %8s %8s %s\n' target runs exec/s cov ft result
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  if [ -d "fuzz/seeds/$t" ]; then cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true; fi
  log="fuzz/logs/$t.log"
  # Limits: 1 GiB of memory and 64 KiB inputs (every parser caps lengths far below that).
  if cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see $log and fuzz/artifacts/$t/)"; status=1
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  speed=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || echo "?")
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || echo "?")
  printf '%-16s %12s %8s %8s %8s %s\n' "$t" "$runs" "$speed" "$cov" "$ft" "$result"
  [ "$result" = ok ] || tail -40 "$log"
done
exit $status
