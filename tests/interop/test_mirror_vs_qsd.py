#!/usr/bin/env python3
"""Differential test of blockdev-mirror (issue 14): the same QMP session on
qemu-storage-daemon 7.2 and on blockjobd must give the same replies, events
(in order, timestamps aside), graph (query-named-block-nodes with the
mirror_top filter) and images (qemu-img map/info of the target, content
compared with the source).

Sessions: the validation texts in qsd's order; sync full/top/none; READY
(data), job-complete (pivot), block-job-cancel after READY (COMPLETED, no
pivot), force cancel (CANCELLED), complete refused before READY, a zero-
length source (READY before the reply), a target of another size,
auto-finalize/auto-dismiss off, buf-size and granularity variants."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)
from stream_util import Runner, require, run  # noqa: E402
import test_stream_vs_qsd  # noqa: E402
from test_stream_vs_qsd import run_both  # noqa: E402

_facts = test_stream_vs_qsd.image_facts


def image_facts(path, fmt="qcow2"):
    """As the stream test's, but a zeroed range of an image without a
    backing is the same whether its clusters are unallocated or zero
    clusters (qsd makes zero clusters, blockjobd's qcow2 leaves unallocated
    ones unallocated: both read zeroes, neither holds data)."""
    f = _facts(path, fmt)
    if not f["backing"]:
        m = []
        for e in f["map"]:
            if e["zero"] and not e["data"]:
                e["present"] = True
            if m and all(m[-1][k] == e[k] for k in e
                         if k not in ("start", "length")):
                m[-1]["length"] += e["length"]
            else:
                m.append(e)
        f["map"] = m
    return f


test_stream_vs_qsd.image_facts = image_facts

require("qemu-storage-daemon", "qemu-img", "qemu-io")

MiB = 1024 * 1024


def img(w, name, size="4M", backing=None, writes=()):
    p = os.path.join(w, name)
    a = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        a += ["-b", os.path.join(w, backing), "-F", "qcow2"]
    run(*a, p, size)
    for cmd in writes:
        run("qemu-io", "-f", "qcow2", "-c", cmd, p)
    return p


def add(c, name, path, **kw):
    a = {"driver": "qcow2", "node-name": name,
         "file": {"driver": "file", "filename": path}}
    a.update(kw)
    c.ok("blockdev-add", a)


def cmd_event(s, name, args, event):
    """A command and then an event, as one step (the event may come before
    the reply)."""
    def both():
        r = s.c.cmd(name, args)
        s.c.event(event)
        return r
    return s.step(both)


def same(a, b):
    subprocess.check_call(["qemu-img", "compare", "-q", a, b])


def chain(w):
    base = img(w, "base.qcow2", writes=["write -P 0x11 0 2M"])
    src = img(w, "src.qcow2", backing="base.qcow2",
              writes=["write -P 0x22 1M 64k", "write -P 0x33 3M 512k"])
    return base, src


def ignore_nodes(s, args=None):
    """query-named-block-nodes as a step (sizes on disk taken out)."""
    return s.nodes(args)


def test_validation():
    def scenario(s, w):
        base, src = chain(w)
        tgt = img(w, "tgt.qcow2")
        tgt2 = img(w, "tgt2.qcow2", size="8M")
        add(s.c, "base", base)
        add(s.c, "src", src, backing="base")
        add(s.c, "tgt", tgt)
        add(s.c, "tgt2", tgt2)
        add(s.c, "ro", img(w, "ro.qcow2"), **{"read-only": True})
        ok = {"device": "src", "target": "tgt", "sync": "full",
              "job-id": "m"}
        for over in ({"device": "nosuch"}, {"target": "nosuch"},
                     {"device": "base"}, {"job-id": None},
                     {"granularity": 100}, {"granularity": 256},
                     {"granularity": 128 * MiB}, {"granularity": 12288},
                     {"target": "base"}, {"sync": "incremental"},
                     {"sync": "bitmap"}, {"buf-size": -1},
                     {"target": "src"}, {"replaces": "nosuch"},
                     {"replaces": "tgt2"}, {"filter-node-name": "src"},
                     {"filter-node-name": "#x"}, {"job-id": "1bad"},
                     {"speed": -1}, {"target": "ro"},
                     {"sync": "nosuch"}, {"granularity": "x"}):
            a = dict(ok, **over)
            a = {k: v for k, v in a.items() if v is not None}
            s.cmd("blockdev-mirror", a)
        s.cmd_until("blockdev-mirror", dict(ok, **{"target": "tgt2",
                                                   "job-id": "size"}),
                    "size", "null")
        s.cmd("query-jobs")
        return []
    run_both(scenario)


def full_scenario(extra, finish):
    def scenario(s, w):
        base, src = chain(w)
        tgt = img(w, "tgt.qcow2")
        add(s.c, "base", base)
        add(s.c, "src", src, backing="base")
        add(s.c, "tgt", tgt)
        a = {"device": "src", "target": "tgt", "sync": "full",
             "job-id": "m", "filter-node-name": "mt"}
        a.update(extra)
        cmd_event(s, "blockdev-mirror", a, "BLOCK_JOB_READY")
        s.cmd("query-block-jobs")
        ignore_nodes(s)
        # The source and the target are busy, the source is no root.
        s.cmd("blockdev-mirror", {"device": "src", "target": "base",
                                  "sync": "full", "job-id": "m2"})
        s.cmd("blockdev-mirror", {"device": "mt", "target": "base",
                                  "sync": "full", "job-id": "m2"})
        s.cmd("block-stream", {"device": "tgt", "job-id": "s"})
        s.cmd("blockdev-del", {"node-name": "tgt"})
        s.cmd("blockdev-del", {"node-name": "src"})
        finish(s)
        s.cmd("query-jobs")
        ignore_nodes(s)
        for n in ("tgt", "src", "base"):
            s.cmd("blockdev-del", {"node-name": n})
        same(src, tgt)
        return [(tgt, "qcow2"), (src, "qcow2")]
    return scenario


def complete(s):
    s.cmd_until("job-complete", {"id": "m"}, "m", "null")


def soft_cancel(s):
    s.cmd_until("block-job-cancel", {"device": "m"}, "m", "null")


def hard_cancel(s):
    s.cmd_until("block-job-cancel", {"device": "m", "force": True}, "m", "null")


def test_full_complete():
    run_both(full_scenario({}, complete))


def test_full_soft_cancel():
    run_both(full_scenario({"granularity": 4096, "buf-size": 4096},
                           soft_cancel))


def test_full_hard_cancel():
    run_both(full_scenario({"granularity": 1 * MiB}, hard_cancel))


def test_full_job_cancel_and_block_job_complete():
    def fin(s):
        s.cmd_until("block-job-complete", {"device": "m"}, "m", "null")
    run_both(full_scenario({"buf-size": 65536, "granularity": 65536}, fin))


def test_manual_finalize_dismiss():
    def fin(s):
        cmd_event(s, "job-complete", {"id": "m"}, "BLOCK_JOB_PENDING")
        s.cmd("query-jobs")
        s.cmd_until("job-finalize", {"id": "m"}, "m", "concluded")
        s.cmd("query-block-jobs")
        s.cmd("job-dismiss", {"id": "m"})
    run_both(full_scenario({"auto-finalize": False, "auto-dismiss": False},
                           fin))


def test_top_and_none():
    def scenario(s, w):
        base, src = chain(w)
        tb = img(w, "tb.qcow2", backing="base.qcow2")
        tn = img(w, "tn.qcow2", backing="src.qcow2")
        add(s.c, "base", base)
        add(s.c, "src", src, backing="base")
        add(s.c, "tb", tb, backing="base")
        cmd_event(s, "blockdev-mirror", {"device": "src", "target": "tb",
                                  "sync": "top", "job-id": "t"}, "BLOCK_JOB_READY")
        s.cmd("query-block-jobs")
        s.cmd_until("block-job-cancel", {"device": "t"}, "t", "null")
        s.cmd("blockdev-del", {"node-name": "tb"})
        add(s.c, "tn", tn, backing=None)
        cmd_event(s, "blockdev-mirror", {"device": "src", "target": "tn",
                                  "sync": "none", "job-id": "n"}, "BLOCK_JOB_READY")
        s.cmd_until("job-cancel", {"id": "n"}, "n", "null")
        for n in ("tn", "src", "base"):
            s.cmd("blockdev-del", {"node-name": n})
        same(src, tb)
        return [(tb, "qcow2"), (tn, "qcow2")]
    run_both(scenario)


def test_top_without_backing_is_full():
    def scenario(s, w):
        src = img(w, "src.qcow2", writes=["write -P 0x44 0 1M"])
        tgt = img(w, "tgt.qcow2")
        add(s.c, "src", src)
        add(s.c, "tgt", tgt)
        cmd_event(s, "blockdev-mirror", {"device": "src", "target": "tgt",
                                  "sync": "top", "job-id": "t"}, "BLOCK_JOB_READY")
        s.cmd_until("job-complete", {"id": "t"}, "t", "null")
        for n in ("tgt", "src"):
            s.cmd("blockdev-del", {"node-name": n})
        same(src, tgt)
        return [(tgt, "qcow2")]
    run_both(scenario)


def test_complete_before_ready():
    def scenario(s, w):
        src = img(w, "src.qcow2", writes=["write -P 0x44 0 1M"])
        tgt = img(w, "tgt.qcow2")
        add(s.c, "src", src)
        add(s.c, "tgt", tgt)
        s.cmd("blockdev-mirror", {"device": "src", "target": "tgt",
                                  "sync": "full", "job-id": "m",
                                  "speed": 1, "buf-size": 65536})
        s.cmd("job-complete", {"id": "m"})
        s.cmd("block-job-complete", {"device": "m"})
        cmd_event(s, "block-job-set-speed", {"device": "m", "speed": 0}, "BLOCK_JOB_READY")
        s.cmd_until("block-job-cancel", {"device": "m"}, "m", "null")
        for n in ("tgt", "src"):
            s.cmd("blockdev-del", {"node-name": n})
        same(src, tgt)
        return [(tgt, "qcow2")]
    run_both(scenario)


def test_zero_length():
    def scenario(s, w):
        src = img(w, "src.qcow2", size="0")
        tgt = img(w, "tgt.qcow2", size="0")
        add(s.c, "src", src)
        add(s.c, "tgt", tgt)
        s.cmd("blockdev-mirror", {"device": "src", "target": "tgt",
                                  "sync": "full", "job-id": "z"})
        s.cmd("query-block-jobs")
        s.cmd_until("job-complete", {"id": "z"}, "z", "null")
        for n in ("tgt", "src"):
            s.cmd("blockdev-del", {"node-name": n})
        return [(tgt, "qcow2")]
    run_both(scenario)


def test_unaligned_length():
    def scenario(s, w):
        src = img(w, "src.qcow2", size="1025K",
                  writes=["write -P 0x55 0 1025K"])
        tgt = img(w, "tgt.qcow2", size="1025K")
        add(s.c, "src", src)
        add(s.c, "tgt", tgt)
        cmd_event(s, "blockdev-mirror", {"device": "src", "target": "tgt",
                                  "sync": "full", "job-id": "u",
                                  "granularity": 512, "buf-size": 4096}, "BLOCK_JOB_READY")
        s.cmd_until("job-complete", {"id": "u"}, "u", "null")
        for n in ("tgt", "src"):
            s.cmd("blockdev-del", {"node-name": n})
        same(src, tgt)
        return [(tgt, "qcow2")]
    run_both(scenario)


if __name__ == "__main__":
    Runner(globals()).run()
