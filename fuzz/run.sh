#!/usr/bin/env bash
# Fuzz the metadata parser and open path for SECONDS (default 60; fit for CI).
#   fuzz/run.sh 60                 short run
#   fuzz/run.sh 3600               long run (FUZZ_JOBS=N for N parallel workers)
#   fuzz/run.sh 0 -runs=1000       any extra arguments go to libFuzzer
#   fuzz/fuzz_open fuzz/artifacts/crash-...   reproduce a finding
# Builds fuzz/fuzz_open (fuzz/build.sh) unless FUZZ_NO_BUILD=1, makes the seed corpus
# (fuzz/make_corpus.py, needs the cowblock package importable) if fuzz/seeds is missing,
# keeps what it learns in fuzz/corpus and writes findings to fuzz/artifacts.  Exits non-zero
# on a finding: a crash, a sanitizer report, a leak, a hang (-timeout) or a huge allocation.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
secs="${1:-60}"
shift || true
[ "${FUZZ_NO_BUILD:-0}" = 1 ] || "$here/build.sh" >/dev/null 2>&1 || "$here/build.sh"
[ -d "$here/seeds" ] || python3 "$here/make_corpus.py" "$here/seeds"
mkdir -p "$here/corpus" "$here/artifacts"
args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024
      -print_final_stats=1 -artifact_prefix="$here/artifacts/")
jobs="${FUZZ_JOBS:-1}"
[ "$jobs" -gt 1 ] && args+=(-fork="$jobs" -ignore_crashes=0)
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
exec "$here/fuzz_open" "${args[@]}" "$@" "$here/corpus" "$here/seeds"
