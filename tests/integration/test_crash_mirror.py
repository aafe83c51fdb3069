#!/usr/bin/env python3
"""Crash consistency of blockdev-mirror (issue 14, item 6).

A 16 MiB qcow2 chain (base full of data, a top with some clusters) is
mirrored (sync full) into an empty qcow2 target, and the daemon is killed
with SIGKILL at points all along the job: at progress fractions (read from
query-block-jobs under a speed limit), at READY, right after the reply to
job-complete, and on each event of the ending (waiting, pending,
BLOCK_JOB_COMPLETED, concluded). After every kill:
  * qemu-img check of the source, its backing and the target finds no
    corruption (leaked clusters allowed in the target);
  * the source chain reads exactly as before (it is only read);
  * once job-complete has been answered and the job reached
    BLOCK_JOB_COMPLETED, the target holds the source's data on disk
    (qemu-img compare): prepare flushes the target before the pivot and
    before the event. (blockdev-mirror writes no header naming anything:
    the pivot itself is in the graph only.)
Then the same mirror restarted into the same target (an existing image,
whatever the kill left in it) reaches READY and completes with the target
identical to the source."""
import os
import sys
import time

from soak_util import (MiB, Daemon, Runner, cleanup, job_info, kill9,
                       qemu_check, require, run, wait_status, workdir)

require("qemu-img", "qemu-io")

SIZE = 16 * MiB
SPEED = 16 * MiB  # a whole copy takes about a second
POINTS = [("offset", f) for f in (0.0, 0.2, 0.5, 0.8)] + [
    ("ready", 0), ("complete-reply", 0), ("waiting", 0), ("pending", 0),
    ("BLOCK_JOB_COMPLETED", 0), ("concluded", 0)]


def make(d):
    base = os.path.join(d, "base.qcow2")
    top = os.path.join(d, "top.qcow2")
    tgt = os.path.join(d, "tgt.qcow2")
    flat = os.path.join(d, "flat.raw")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 12M", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
        top)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xa5 1M 256k",
        "-c", "write -P 0x33 13M 1M", top)
    run("qemu-img", "convert", "-O", "raw", top, flat)
    return base, top, tgt, flat


def add_nodes(c, base, top, tgt):
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": "base",
                          "file": {"driver": "file", "filename": base}})
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": "src",
                          "backing": "base",
                          "file": {"driver": "file", "filename": top}})
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                          "file": {"driver": "file", "filename": tgt}})


def same(a, b, fa="qcow2", fb="raw"):
    import subprocess
    return subprocess.call(["qemu-img", "compare", "-q", "-f", fa, "-F", fb,
                            a, b]) == 0


def one(kind, param):
    d = workdir("mcrash-")
    try:
        base, top, tgt, flat = make(d)
        run("qemu-img", "create", "-q", "-f", "qcow2", tgt, str(SIZE))
        daemon = Daemon()
        c = daemon.connect()
        add_nodes(c, base, top, tgt)
        speed = SPEED if kind == "offset" else 0
        c.ok("blockdev-mirror", {"device": "src", "target": "tgt",
                                 "sync": "full", "job-id": "m",
                                 "speed": speed})
        completed = False
        if kind == "offset":
            while True:
                j = job_info(c, "m")
                if j is None or j["offset"] >= param * j["len"] or \
                        j["ready"]:
                    break
                time.sleep(0.005)  # polling progress, not synchronisation
        else:
            c.event("BLOCK_JOB_READY")
            if kind != "ready":
                c.ok("job-complete", {"id": "m"})
                if kind in ("waiting", "pending", "concluded"):
                    wait_status(c, "m", kind)
                elif kind == "BLOCK_JOB_COMPLETED":
                    c.event("BLOCK_JOB_COMPLETED")
                completed = kind in ("BLOCK_JOB_COMPLETED", "concluded")
        kill9(daemon)
        cleanup(daemon.workdir)
        for p in (base, top):
            qemu_check(p, allow_leaks=False)
        qemu_check(tgt, allow_leaks=True)
        assert same(top, flat), "source changed (%s %s)" % (kind, param)
        if completed:
            assert same(tgt, flat), "target incomplete after COMPLETED"
        # Restart into the same target: converges, identical.
        daemon = Daemon()
        c = daemon.connect()
        add_nodes(c, base, top, tgt)
        c.ok("blockdev-mirror", {"device": "src", "target": "tgt",
                                 "sync": "full", "job-id": "m2"})
        c.event("BLOCK_JOB_READY")
        c.ok("job-complete", {"id": "m2"})
        e = c.event("BLOCK_JOB_COMPLETED")
        assert "error" not in e["data"], e
        wait_status(c, "m2", "null")
        for n in ("tgt", "src", "base"):
            c.ok("blockdev-del", {"node-name": n})
        daemon.stop()
        cleanup(daemon.workdir)
        qemu_check(tgt, allow_leaks=True)
        assert same(tgt, flat), "target differs after the restart"
    finally:
        cleanup(d)


def test_kill_points():
    for kind, param in POINTS:
        try:
            one(kind, param)
        except Exception as e:
            raise AssertionError("kill at %s %s: %s" % (kind, param, e))
    print("%d kill points survived" % len(POINTS))


if __name__ == "__main__":
    Runner(globals()).run()
    sys.exit(0)
