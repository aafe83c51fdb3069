#!/usr/bin/env python3
"""Crash consistency of block-stream (issue 7, item 2).

A 32 MiB qcow2 chain base <- mid <- top is streamed into top and the daemon
is killed with SIGKILL at many points of the job: at progress fractions
(read from query-block-jobs under a speed limit) and on the events that
bracket the final backing rewrite (waiting, pending, BLOCK_JOB_COMPLETED,
concluded), optionally after a short busy delay. After every kill:
  * qemu-img check finds no corruption (leaked clusters are allowed);
  * the top, read through whatever backing its header names now, equals the
    chain flattened beforehand, byte for byte (qemu-img compare);
  * the header names either the original backing or none;
then a job restarted on the same image finishes (BLOCK_JOB_COMPLETED without
error) and gives the same content with no backing left.

CRASH_KILLS=N runs N kills at random points (seeded by CRASH_SEED) instead
of the fixed short list; `make soak` uses this."""
import os
import random
import sys

from soak_util import (MiB, Daemon, Runner, add_top, backing_of, cleanup,
                       compare, copy_sparse, job_info, kill9, make_chain,
                       qemu_check, require, under_valgrind, wait_status,
                       workdir)

require("qemu-img", "qemu-io")

SIZE = 32 * MiB
SPEED = 32 * MiB  # bytes/s: a whole job takes about a second
EVENT_KINDS = ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded"]

# (kind, parameter): "offset" kills at a fraction of len, events kill that
# many microseconds (busy-waited) after the event arrived.
SHORT_POINTS = [("offset", f) for f in
                (0.0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95)] + [
    ("waiting", 0), ("pending", 0), ("pending", 1000), ("pending", 5000),
    ("pending", 12000), ("pending", 25000), ("BLOCK_JOB_COMPLETED", 0),
    ("concluded", 0)]

stats = {"kills": 0, "backing_kept": 0, "backing_gone": 0, "late": 0,
         "leaky": 0}


def busy_wait_us(us):
    if us <= 0:
        return
    import time
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


def start_job(d, top, speed):
    c = d.connect()
    add_top(c, top)
    c.ok("block-stream", {"device": "top", "job-id": "s0", "speed": speed})
    return c


def kill_at(d, c, kind, param):
    """Waits for the chosen moment and kills. Returns True if the job had
    already ended when the moment was looked for (a 'late' kill)."""
    late = False
    if kind == "offset":
        while True:
            j = job_info(c, "s0")
            if j is None:
                late = True
                break
            if j["offset"] >= param * j["len"]:
                break
    else:
        if kind in ("waiting", "pending", "concluded"):
            wait_status(c, "s0", kind)
        else:
            c.event(kind)
        busy_wait_us(param)
    kill9(d)
    c.close()
    return late


def verify(top, flat, orig_backing, must_be_flat=False):
    r = qemu_check(top, allow_leaks=True)
    if r.get("leaks"):
        stats["leaky"] += 1
    b = backing_of(top)
    assert b in (orig_backing, None), "top names backing %r" % b
    if must_be_flat:
        assert b is None, "top still names backing %r" % b
    compare(top, flat)
    return b


def finish_job(top, flat, orig_backing):
    """Restarts the daemon and the job on the same image; it must finish
    and leave the flat content without backing. (A top that names no
    backing any more gives a job with nothing to do: len 0.)"""
    want_len = SIZE if backing_of(top) else 0
    d = Daemon()
    try:
        c = start_job(d, top, 0)
        done = c.event("BLOCK_JOB_COMPLETED")
        assert "error" not in done["data"], done
        assert done["data"]["offset"] == done["data"]["len"] == want_len, done
        wait_status(c, "s0", "null")
        c.ok("blockdev-del", {"node-name": "top"})
        c.close()
        d.stop()
    finally:
        if d.proc.poll() is None:
            kill9(d)
        cleanup(d.workdir)
    verify(top, flat, orig_backing, must_be_flat=True)


def one_round(tmpl, n, points, rnd):
    base, mid, top0, flat = tmpl
    top = os.path.join(os.path.dirname(top0), "top-%d.qcow2" % n)
    copy_sparse(top0, top)
    orig_backing = backing_of(top)
    try:
        for kind, param in points:
            d = Daemon()
            try:
                speed = SPEED if kind == "offset" else 0
                c = start_job(d, top, speed)
                late = kill_at(d, c, kind, param)
            finally:
                if d.proc.poll() is None:
                    kill9(d)
                cleanup(d.workdir)
            stats["kills"] += 1
            stats["late"] += late
            b = verify(top, flat, orig_backing)
            stats["backing_kept" if b else "backing_gone"] += 1
            print("kill %d at %s %s: backing %s%s" % (
                stats["kills"], kind, param, "kept" if b else "gone",
                " (job had ended)" if late else ""))
        finish_job(top, flat, orig_backing)
    finally:
        os.unlink(top)


def random_point(rnd):
    if rnd.random() < 0.6:
        return ("offset", rnd.random())
    return (rnd.choice(EVENT_KINDS), rnd.choice(
        [0, 0, 50, 200, 1000, 3000, 8000, 15000, 25000, 40000]))


def test_kill_points():
    d = workdir("crash-")
    try:
        tmpl = make_chain(d, SIZE)
        kills = int(os.environ.get("CRASH_KILLS", "0"))
        seed = int(os.environ.get("CRASH_SEED", "7"))
        rnd = random.Random(seed)
        if kills <= 0:
            points = SHORT_POINTS
            if under_valgrind():
                points = points[::3]
            # one kill per image, then a restarted job finishes it
            for n, p in enumerate(points):
                one_round(tmpl, n, [p], rnd)
            # several kills on the same image before it finishes
            one_round(tmpl, len(points), [("offset", 0.3), ("offset", 0.6),
                                          ("pending", 0)], rnd)
        else:
            n = 0
            while stats["kills"] < kills:
                k = min(rnd.randint(1, 3), kills - stats["kills"])
                one_round(tmpl, n, [random_point(rnd) for _ in range(k)],
                          rnd)
                n += 1
    finally:
        cleanup(d)
    print("kills survived: %(kills)d (backing kept %(backing_kept)d, gone "
          "%(backing_gone)d, after job end %(late)d, with leaks %(leaky)d)"
          % stats)


if __name__ == "__main__":
    Runner(globals()).run()
    sys.exit(0)
