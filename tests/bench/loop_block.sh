#!/bin/sh
# Builds and runs tests/bench/loop_block.c (see there): how long the loop is
# blocked while images grow. Not pass/fail. Usage:
#   tests/bench/loop_block.sh [dir [MiB]]     (default /var/tmp 256)
# BUILD selects the object directory (default build-bench).
set -e
cd "$(dirname "$0")/../.."
B=${BUILD:-build-bench}
make --no-print-directory BUILD="$B" "$B/blockjobd" >/dev/null
OBJS=$(find "$B/protocol" "$B/jobs" "$B/backends" "$B/daemon" -name '*.o' \
       ! -name main.o 2>/dev/null)
cc -std=gnu11 -D_GNU_SOURCE -O2 -g -I. $(pkg-config --cflags libuv jansson) \
   -o "$B/loop_block" tests/bench/loop_block.c $OBJS \
   $(pkg-config --libs libuv jansson) -laio -lz -lm
exec "$B/loop_block" "$@"
