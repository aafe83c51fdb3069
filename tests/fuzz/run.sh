#!/usr/bin/env bash
# Runs one libFuzzer target: tests/fuzz/run.sh FUZZ_DIR TARGET SECONDS
# New inputs go to FUZZ_DIR/corpus-TARGET (the checked-in seeds in
# tests/fuzz/corpus/TARGET are read, never written); crashes are written to
# FUZZ_DIR/artifacts/ and make the script fail. The last lines of the log
# (executions, coverage) are printed.
set -u
dir=$(mkdir -p "$1" && cd "$1" && pwd) target=$2 secs=$3
# The targets work in a directory of their own: every path given is absolute.
here=$(cd "$(dirname "$0")" && pwd)
bin="$dir/fuzz_$target"
work="$dir/corpus-$target"
art="$dir/artifacts"
log="$dir/fuzz_$target.log"
dict=
[ -f "$here/$target.dict" ] && dict="$here/$target.dict"
mkdir -p "$work" "$art"
echo "fuzz_$target: ${secs}s"
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
"$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 \
    -max_len=131072 -print_final_stats=1 -artifact_prefix="$art/" \
    ${dict:+-dict="$dict"} ${FUZZ_ARGS:-} "$work" "$here/corpus/$target" >"$log" 2>&1
rc=$?
grep -E '^(#[0-9]+ +(DONE|INITED)|stat::number_of_executed_units|stat::peak_rss_mb|Done )' "$log" | tail -n 5
if [ $rc -ne 0 ]; then
    echo "fuzz_$target: FAILED (exit $rc), log $log"
    grep -E 'ERROR|SUMMARY|Test unit written|runtime error' "$log" | head -n 20
    tail -n 40 "$log"
    exit 1
fi
