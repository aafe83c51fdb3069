#!/usr/bin/env python3
"""Fairness between connections (reference 1.8: monitors are served
round-robin). A client that queues many expensive commands
(query-qmp-schema, about 24 KiB of reply each) and never reads must not
hold up another client's cheap query for the whole burst: that query
waits at most for a few of the burst's commands, not for hundreds.

Also bounded memory: several such clients at once leave the daemon's VmRSS
below a bound (each is cut off at --max-output-queue)."""
import array
import fcntl
import socket
import sys
import time

from soak_util import (Daemon, Runner, memory_bounds_apply, rss_kib,
                       under_valgrind)

BURST = 1024
BOUND = 0.15 * (10 if under_valgrind() else 1)  # seconds


SIOCOUTQ = 0x5411


def unread(s):
    """Bytes this socket sent that its peer has not read yet."""
    buf = array.array("i", [0])
    fcntl.ioctl(s.fileno(), SIOCOUTQ, buf, True)
    return buf[0]


def flooder(d):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(d.sock)
    s.setblocking(False)
    data = b'{"execute": "qmp_capabilities"}\r\n' + \
        b'{"execute": "query-qmp-schema"}\r\n' * BURST
    try:
        s.send(data)
    except BlockingIOError:
        pass
    return s


def test_one_flooder_does_not_stall_others():
    with Daemon() as d:
        c = d.connect()
        c.ok("query-block-jobs")
        worst = 0.0
        for _ in range(3):
            s = flooder(d)
            # wait until the daemon has read (part of) the burst, so the
            # query below is queued behind work already under way
            sent = unread(s)
            while sent and unread(s) >= sent:
                pass
            t0 = time.monotonic()
            c.ok("query-block-jobs")
            worst = max(worst, time.monotonic() - t0)
            s.close()
            c.sync()  # the daemon is idle again
        print("query behind a %d-command burst: %.1f ms" % (BURST,
                                                            worst * 1e3))
        assert worst < BOUND, "a cheap query waited %.3fs behind another " \
            "client's burst (bound %.3fs)" % (worst, BOUND)


def test_many_flooders_memory_bounded():
    with Daemon(["--max-output-queue", "1048576"]) as d:
        c = d.connect()
        base = rss_kib(d.proc.pid)
        socks = [flooder(d) for _ in range(40)]
        peak = base
        deadline = time.monotonic() + 60 * (10 if under_valgrind() else 1)
        # until the daemon has cut every flooder off (its log says so)
        while d.logtext().count("too slow") < 40:
            assert time.monotonic() < deadline, d.logtext()[-2000:]
            peak = max(peak, rss_kib(d.proc.pid))
            c.ok("query-block-jobs")
        peak = max(peak, rss_kib(d.proc.pid))
        for s in socks:
            s.close()
        c.sync()
        print("VmRSS %d KiB before, %d KiB with 40 flooders" % (base, peak))
        # 40 x 1 MiB of queued output at most, plus slack
        assert not memory_bounds_apply() or peak - base < 40 * 1024 + 32 * 1024, \
            peak


if __name__ == "__main__":
    Runner(globals()).run()
    sys.exit(0)
