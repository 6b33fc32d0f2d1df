#!/usr/bin/env bash
# Runs every fuzz target for a while (default 60 s each) with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain build them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(chunk_decoder amf handshake server_session)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
status=0
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="fuzz/logs/$t.log"
  echo "== fuzzing $t for ${secs}s"
  if cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=1024 -max_len=65536 >"$log" 2>&1; then
    grep -E '^Done [0-9]+ runs|cov: ' "$log" | tail -2
  else
    echo "!! $t failed; see $log and fuzz/artifacts/$t/"; tail -30 "$log"; status=1
  fi
done
exit $status
