#!/usr/bin/env bash
# Fuzz smoke: builds the libFuzzer targets (tests/fuzz/) and runs each for
# FUZZ_SMOKE_TIME seconds (default 30) from the checked-in seed corpus.
# Any crash, sanitizer report, leak or timeout fails the test. Skipped (77)
# when clang with libFuzzer is not installed.
set -u
cd "$(dirname "$0")/../.."
build=${BUILD:-build}
secs=${FUZZ_SMOKE_TIME:-30}
if [ -n "${BLOCKJOBD_WRAPPER:-}" ]; then
    echo "skip: the fuzzers carry their own sanitizers (run by make check)"
    exit 77
fi
if ! command -v clang >/dev/null; then
    echo "skip: clang not installed (make deps installs it)"
    exit 77
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' \
    >"$probe/p.c"
if ! clang -fsanitize=fuzzer,address,undefined -o "$probe/p" "$probe/p.c" \
    2>/dev/null; then
    echo "skip: clang cannot build libFuzzer targets (libclang-rt missing)"
    exit 77
fi
make --no-print-directory BUILD="$build" fuzz-build || exit 1
for t in qmp qcow2 qcow2_bitmap; do
    tests/fuzz/run.sh "$build/fuzz" "$t" "$secs" || exit 1
done
