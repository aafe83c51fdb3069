#!/usr/bin/env bash
# Runs test programs and scripts, one after the other, and prints one line
# per test and a summary line "N passed, N failed, N skipped".
# Exit status 77 from a test means skipped. A test that passes but did not
# run some of its checks prints a line "skip-check: WHY" for each (tests/qmp.py's
# skip_check / skipped_part); each counts as a skip in the summary, so a
# green run shows what did not run. Output of failed tests is shown.
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
        # cmocka lists its skipped tests: "[  SKIPPED ] N test(s), listed below:"
        n=$(($(grep -c '^skip-check: ' "$log") + $(sed -n \
            's/^\[  SKIPPED \] \([0-9]*\) test(s), listed below:.*/\1/p' "$log" |
            awk '{ n += $1 } END { print n + 0 }')))
        if [ "$n" -gt 0 ]; then
            skip=$((skip + n))
            printf 'PASS  %-45s %6ss  (%d checks skipped)\n' "$name" "$secs" "$n"
            grep -E '^skip-check: |^\[  SKIPPED \] [a-z_]+$' "$log" |
                sed -E 's/^(skip-check: |\[  SKIPPED \] )/        skipped: /' | sort -u
        else
            printf 'PASS  %-45s %6ss\n' "$name" "$secs"
        fi
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
