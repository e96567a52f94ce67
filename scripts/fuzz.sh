#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target for SECONDS_PER_TARGET (default 30), after replaying
# the saved regression inputs. Prints executions, exec/s and crashes per target; exits non-zero
# if any target crashed (or a regression input crashes again). See docs/FUZZING.md.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Environment:
#   CARGO_TARGET_DIR   build directory (default: fuzz/target)
#   FUZZ_SANITIZER     address (default) | none
#   FUZZ_JOBS          libFuzzer workers per target (default 1)
#   FUZZ_SKIP_KNOWN=1  let the campaign explore past findings already saved under
#                      fuzz/regressions/ (their replay still runs, without it, and still fails
#                      until the crate is fixed)
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, sanitizer coverage); the project's
# toolchain is stable, so RUSTC_BOOTSTRAP=1 lets stable rustc accept them. Only the fuzz
# builds see it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
SECONDS_PER_TARGET="${1:-30}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(framing config ingest_response buffer_recovery)
fi
SANITIZER="${FUZZ_SANITIZER:-address}"
JOBS="${FUZZ_JOBS:-1}"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FUZZ/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# Per-target libFuzzer options: input size caps keep each execution cheap.
extra_args() {
  case "$1" in
    framing) echo "-max_len=16384" ;;
    config) echo "-max_len=16384 -dict=$FUZZ/dicts/config.dict" ;;
    ingest_response) echo "-max_len=1024" ;;
    buffer_recovery) echo "-max_len=4096" ;;
  esac
}

# The panic message and its frames in our code, then libFuzzer's verdict and the input's path.
show_crash() {
  grep -E -A3 "panicked at|^==[0-9]+==.*ERROR" "$1" | head -n 40 >&2 || true
  grep -E "^ +[0-9]+: .*(fuzz_targets|/crates/)|^ +at .*(fuzz_targets|/crates/)" "$1" | head -n 30 >&2 || true
  grep -E "^SUMMARY|Running: |Test unit written to" "$1" >&2 || true
}

cd "$FUZZ"
echo "fuzz.sh: building ${TARGETS[*]} (sanitizer: $SANITIZER)" >&2
for t in "${TARGETS[@]}"; do
  cargo fuzz build --sanitizer "$SANITIZER" "$t"
done

LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
failed=0
summary=()
for t in "${TARGETS[@]}"; do
  # Regressions: every saved input must run clean (libFuzzer runs files given as arguments once).
  regressions=()
  if [ -d "$FUZZ/regressions/$t" ]; then
    while IFS= read -r -d '' f; do regressions+=("$f"); done \
      < <(find "$FUZZ/regressions/$t" -type f ! -name '*.md' -print0 | sort -z)
  fi
  reg_status="0 inputs"
  if [ ${#regressions[@]} -gt 0 ]; then
    # shellcheck disable=SC2046
    if env -u FUZZ_SKIP_KNOWN cargo fuzz run --sanitizer "$SANITIZER" "$t" "${regressions[@]}" -- \
        $(extra_args "$t") >"$LOGS/$t.regressions.log" 2>&1; then
      reg_status="${#regressions[@]} inputs ok"
    else
      reg_status="${#regressions[@]} inputs, FAILED (log above)"
      failed=1
      echo "---- $t: a regression input crashes ----" >&2
      show_crash "$LOGS/$t.regressions.log"
    fi
  fi

  corpus="$FUZZ/corpus/$t"
  mkdir -p "$corpus" "$FUZZ/artifacts/$t"
  status=0
  # shellcheck disable=SC2046
  cargo fuzz run --sanitizer "$SANITIZER" --jobs "$JOBS" "$t" "$corpus" "$FUZZ/seeds/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=20 -rss_limit_mb=2048 \
    $(extra_args "$t") >"$LOGS/$t.log" 2>&1 || status=$?
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' | awk '{s+=$1} END {print s+0}')"
  rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' | awk '{s+=$1} END {print s+0}')"
  crashes="$(grep -cE '^(==[0-9]+== ?ERROR|SUMMARY: libFuzzer|Test unit written to .*/(crash|leak|timeout|oom)-)' "$LOGS/$t.log" || true)"
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes=1
  fi
  if [ "$crashes" -ne 0 ]; then
    failed=1
    echo "---- $t: crash ----" >&2
    show_crash "$LOGS/$t.log"
  fi
  summary+=("$(printf '%-16s executions=%-10s exec/s=%-8s crashes=%-3s regressions: %s' \
    "$t" "$execs" "$rate" "$crashes" "$reg_status")")
done

echo
echo "fuzz.sh: ${SECONDS_PER_TARGET}s per target, sanitizer $SANITIZER"
for line in "${summary[@]}"; do echo "$line"; done
exit "$failed"
