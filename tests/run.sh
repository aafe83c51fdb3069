#!/usr/bin/env bash
# Runs test programs and scripts, one after the other, and prints one line
# per test and a summary line "N passed, N failed, N skipped".
# Exit status 77 from a test means skipped. Output of failed tests is shown.
set -u
pass=0 fail=0 skip=0 failed=()
logdir=$(mktemp -d "${TMPDIR:-/tmp}/blockjobd-tests.XXXXXX")
per_test_timeout=${TEST_TIMEOUT:-900}

for t in "$@"; do
    name=${t#./}
    case "$t" in
    *.py) cmd=(python3 "$t") ;;
    *.sh) cmd=(bash "$t") ;;
    *) cmd=("$t") ;;
    esac
    log="$logdir/$(echo "$name" | tr '/' '_').log"
    start=$EPOCHREALTIME
    timeout --kill-after=10 "$per_test_timeout" "${cmd[@]}" >"$log" 2>&1
    rc=$?
    secs=$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start }")
    case $rc in
    0)
        pass=$((pass + 1))
        printf 'PASS  %-45s %6ss\n' "$name" "$secs"
        ;;
    77)
        skip=$((skip + 1))
        printf 'SKIP  %-45s %s\n' "$name" "$(tail -n 1 "$log")"
        ;;
    *)
        fail=$((fail + 1))
        failed+=("$name")
        printf 'FAIL  %-45s (exit %d)\n' "$name" "$rc"
        echo "----- output of $name (last 80 lines) -----"
        tail -n 80 "$log"
        echo "----- end of $name -----"
        ;;
    esac
done
rm -rf "$logdir"
echo
[ ${#failed[@]} -eq 0 ] || echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
