#!/usr/bin/env bash
#! Fuzzes qc's readers with cargo-fuzz (docs/fuzzing.md): every target of fuzz/fuzz_targets/, or
#! the ones named, one after another, each for RUNS inputs.
#!
#!   scripts/fuzz.sh RUNS [TARGET...]     e.g. scripts/fuzz.sh 1000000 npy idx
#!
#! cargo-fuzz comes from `make fuzz-setup` (.tools/bin). RUSTC_BOOTSTRAP=1 lets the stable
#! toolchain take the nightly flags libFuzzer needs. Builds go to target/fuzz, the grown corpus
#! to target/fuzz-corpus/TARGET (the committed seeds of fuzz/corpus/TARGET are read, never
#! written), crashes to fuzz/artifacts/TARGET/. Each input runs under a time limit and an RSS and
#! malloc limit: a hang or an allocation past them is a crash. Environment: SANITIZER (default
#! none; `address` for ASan), FUZZ_TIMEOUT (seconds per input, 10), FUZZ_RSS_MB (2048),
#! FUZZ_MALLOC_MB (1024). One line per target goes to target/fuzz-stats.tsv: date, target, runs,
#! seconds, exec/s, result.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh RUNS [TARGET...]   (targets: $(ls fuzz/fuzz_targets | sed 's/\.rs$//' | tr '\n' ' '))" >&2
  exit 2
fi
runs=$1
shift
cargo_fuzz=.tools/bin/cargo-fuzz
if [[ ! -x $cargo_fuzz ]]; then
  echo "error: cargo-fuzz is not installed in .tools/" >&2
  echo "help: run \`make fuzz-setup\` (cargo install cargo-fuzz --locked --root .tools)" >&2
  exit 1
fi
if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
for t in "${targets[@]}"; do
  if [[ ! -f fuzz/fuzz_targets/$t.rs ]]; then
    echo "error: no fuzz target \`$t\` (fuzz/fuzz_targets/$t.rs)" >&2
    exit 2
  fi
done

export RUSTC_BOOTSTRAP=1
sanitizer=${SANITIZER:-none}
build=(--fuzz-dir fuzz --target-dir target/fuzz -s "$sanitizer")
"$cargo_fuzz" build "${build[@]}"

stats=target/fuzz-stats.tsv
failed=()
for t in "${targets[@]}"; do
  corpus=target/fuzz-corpus/$t
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  log=target/fuzz-$t.log
  echo "== $t: $runs runs (log: $log)"
  start=$(date +%s.%N)
  status=0
  "$cargo_fuzz" run "${build[@]}" "$t" "$corpus" "fuzz/corpus/$t" -- \
    -runs="$runs" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
    -malloc_limit_mb="${FUZZ_MALLOC_MB:-1024}" -artifact_prefix="fuzz/artifacts/$t/" \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  end=$(date +%s.%N)
  done_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  rate=$(awk -v n="${done_runs:-0}" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
  if [[ $status -eq 0 ]]; then result=ok; else result="crash (exit $status)"; failed+=("$t"); fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%F)" "$t" "${done_runs:-0}" "$secs" "$rate" "$result" | tee -a "$stats"
  if [[ $status -ne 0 ]]; then
    grep -E '^(==[0-9]+==|SUMMARY|thread .* panicked|Test unit written)' "$log" | head -20 || true
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "error: ${failed[*]} crashed; inputs in fuzz/artifacts/<target>/" >&2
  echo "help: minimize with \`RUSTC_BOOTSTRAP=1 $cargo_fuzz tmin --fuzz-dir fuzz --target-dir target/fuzz -s $sanitizer TARGET INPUT\`, fix, then add it under fuzz/regressions/TARGET/ (docs/fuzzing.md)" >&2
  exit 1
fi
