#!/usr/bin/env python3
"""Drained sections against qemu-storage-daemon 7.2: graph changes next to
running block-stream jobs pause and resume them (JOB_STATUS_CHANGE paused,
running), as QEMU's drain does, and every resumed job copies one chunk
before it sleeps again. The same sessions run on qsd and on blockjobd; every
reply and event (timestamps aside) must be equal and in the same order, and
so must query-block-jobs (offsets included) and the images afterwards.

Jobs are kept running with speed=1: after a chunk they sleep for hours, so
only the test (or a drain) wakes them. Between steps the test waits until no
job is busy (each resumed job's chunk is done); the polling replies are not
compared, the events received meanwhile are.

Where qsd itself is not deterministic these sessions stay away: two jobs
with requests in flight park in the order their requests complete, and a
job whose chunk ends while another job's ending waits for it may end inside
or after that ending."""
import json
import os
import re
import select
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from stream_util import (  # noqa: E402
    QSD_CLASS, SIZE, TIMEOUT, Daemon, Runner, add_chain,
    add_erroring_raw_chain, make_chain, make_raw_base, require, run)
from test_stream_vs_qsd import image_facts  # noqa: E402

require("qemu-storage-daemon", "qemu-img", "qemu-io")


def connect(d):
    """A negotiated connection. qsd creates its socket before it listens
    (refused: retry); a connection made while it still serves the start-up
    probe may be closed at once (retry) or see a second greeting
    (skipped)."""
    for _ in range(500):
        try:
            c = d.connect(negotiate=False)
            break
        except (ConnectionRefusedError, EOFError):
            time.sleep(0.01)
    else:
        c = d.connect(negotiate=False)
    c.send_raw('{"execute": "qmp_capabilities"}')
    while True:
        r = c.reply()
        if "QMP" not in r:
            break
    assert r == {"return": {}}, r
    return c


def busy_or_ending(j):
    return (j["busy"] or j["status"] in ("waiting", "aborting") or
            (j["status"] == "pending" and j["auto-finalize"]) or
            (j["status"] == "concluded" and j["auto-dismiss"]))


class Session:
    """A session whose steps are recorded: a command's events and reply in
    the order received, and the events that come while waiting."""

    def __init__(self, d, c):
        self.d, self.c, self.log = d, c, []

    def norm(self, v):
        s = json.dumps(v).replace(self.d.workdir, "<D>")
        return json.loads(re.sub(r"#block\d+", "#block", s))

    def record(self, since, replies=True):
        out = []
        for line in self.c.lines[since:]:
            m = json.loads(line)
            if "event" in m:
                out.append({"event": m["event"], "data": m.get("data")})
            elif replies:
                out.append(m)
        self.log.append(self.norm(out))
        self.c.events.clear()

    def cmd(self, name, args=None):
        m = len(self.c.lines)
        r = self.c.cmd(name, args)
        self.record(m)
        return r

    def jobs(self):
        """query-block-jobs, compared (offsets included)."""
        return self.cmd("query-block-jobs")["return"]

    def settle(self):
        """Waits until no job is busy (every chunk a resume let through is
        done: the jobs sleep, park or wait) nor ending (qsd ends a job at
        once, blockjobd's ending writes the image first). Only events are
        recorded."""
        m = len(self.c.lines)
        deadline = time.monotonic() + TIMEOUT
        pause = 0.001
        while True:
            if not any(busy_or_ending(j)
                       for j in self.c.ok("query-block-jobs")):
                break
            if time.monotonic() > deadline:
                raise AssertionError("jobs never settled")
            if b"\n" not in self.c.buf:
                select.select([self.c.s], [], [], pause)
            pause = min(pause * 2, 0.05)
        self.record(m, replies=False)

    def wait(self, job, status):
        """Waits for the job's status event; what came meanwhile is
        recorded."""
        m = len(self.c.lines)
        self.c.event("JOB_STATUS_CHANGE",
                     lambda d: d["id"] == job and d["status"] == status)
        self.record(m, replies=False)

    def start(self, args):
        """block-stream, then the jobs settle."""
        r = self.cmd("block-stream", args)
        self.settle()
        return r


def make_long_chain(w, n=7, full=(1, 3, 5)):
    """img0 .. img6, 4 MiB each: img0 and the odd images full of data, the
    even ones (the jobs' tops) empty, so that a job streaming img2k from
    img2k-1 copies eight chunks."""
    paths = []
    for i in range(n):
        p = os.path.join(w, "img%d.qcow2" % i)
        if i == 0:
            run("qemu-img", "create", "-q", "-f", "qcow2", p, str(SIZE))
        else:
            run("qemu-img", "create", "-q", "-f", "qcow2", "-b", paths[-1],
                "-F", "qcow2", p)
        if i == 0 or i in full:
            run("qemu-io", "-f", "qcow2", "-c",
                "write -P 0x%x 0 4M" % (0x10 + i), p)
        paths.append(p)
    return paths


def add_long_chain(c, paths, ro=()):
    for i, p in enumerate(paths):
        a = {"driver": "qcow2", "node-name": "n%d" % i,
             "file": {"driver": "file", "filename": p}}
        if i:
            a["backing"] = "n%d" % (i - 1)
        if i in ro:
            a["read-only"] = True
        c.ok("blockdev-add", a)


def stream(top, jid, bottom=None, **extra):
    a = {"device": top, "job-id": jid, "speed": 1}
    if bottom:
        a["bottom"] = bottom
    a.update(extra)
    return a


def finish(s, *jobs):
    """Lets the jobs run out (speed 0), one after the other (those drains
    did not let run out already)."""
    for j in jobs:
        if j not in [i["device"] for i in s.jobs()]:
            continue
        s.cmd("block-job-set-speed", {"device": j, "speed": 0})
        s.wait(j, "null")
        s.settle()


def del_all(s, names):
    for n in names:
        s.c.ok("blockdev-del", {"node-name": n})


def run_both(scenario):
    """scenario(session, workdir) -> image paths; the session logs and the
    images' maps and backings must be the same on qsd and blockjobd."""
    out = []
    for kind in ("qsd", "ours"):
        with (QSD_CLASS() if kind == "qsd" else Daemon()) as d:
            s = Session(d, connect(d))
            paths = scenario(s, d.workdir)
            s.settle()
            facts = {os.path.basename(p): image_facts(p) for p in paths}
            out.append((s.log, facts))
    (qlog, qfacts), (olog, ofacts) = out
    for i, (q, o) in enumerate(zip(qlog, olog)):
        assert q == o, "step %d differs:\nqsd:  %s\nours: %s" % (
            i, json.dumps(q), json.dumps(o))
    assert len(qlog) == len(olog), (len(qlog), len(olog))
    assert qfacts == ofacts, "images differ:\nqsd:  %s\nours: %s" % (
        qfacts, ofacts)


CHAIN = ["n%d" % i for i in range(6, -1, -1)]  # deletion order


def test_starts_below_running_jobs():
    """Each block-stream inserts its filter under a drain of its top: the
    jobs above (linked to nodes over it) pause and resume, each once, in
    QEMU's walk order, before the new job is created; each copies a chunk.
    query-block-jobs lists the newest job first."""
    def scenario(s, w):
        paths = make_long_chain(w)
        add_long_chain(s.c, paths)
        s.start(stream("n6", "C", "n5"))
        s.start(stream("n4", "B", "n3"))
        s.start(stream("n2", "A", "n1"))
        s.jobs()
        s.cmd("query-jobs")
        finish(s, "C", "B", "A")
        del_all(s, CHAIN)
        return paths
    run_both(scenario)


def test_ends_above_running_jobs():
    """A job's ending drains the subtree below its bottom (the jobs below
    pause once); its filter and BlockBackend only drain what is above."""
    def scenario(s, w):
        paths = make_long_chain(w)
        add_long_chain(s.c, paths)
        s.start(stream("n2", "A", "n1"))
        s.start(stream("n4", "B", "n3"))
        s.start(stream("n6", "C", "n5"))
        for job in ("C", "B"):
            s.cmd("block-job-set-speed", {"device": job, "speed": 0})
            s.wait(job, "null")
            s.settle()
            s.jobs()
        finish(s, "A")
        del_all(s, CHAIN)
        return paths
    run_both(scenario)


def lower_job_scenario(args, end):
    """U streams n4 from n3; L is started below it (n2) and ended by
    end(s). U sees L's filter removal, the drained subtree of L's backing
    change, and the two drains of L's BlockBackend: a pause and a resume
    each, the later ones waiting for the chunk the earlier let through."""
    def scenario(s, w):
        paths = make_long_chain(w)
        add_long_chain(s.c, paths)
        s.start(stream("n4", "U", "n3"))
        s.start(args)
        end(s)
        s.settle()
        s.jobs()
        finish(s, "U")
        del_all(s, CHAIN)
        return paths
    return scenario


def end_by_speed(s):
    s.cmd("block-job-set-speed", {"device": "L", "speed": 0})
    s.wait("L", "null")


def test_lower_job_ends():
    run_both(lower_job_scenario(stream("n2", "L", "n1"), end_by_speed))
    run_both(lower_job_scenario(stream("n2", "L"), end_by_speed))
    run_both(lower_job_scenario(stream("n2", "L", **{"base-node": "n0"}),
                                end_by_speed))


def test_lower_job_noop_cancel_finalize():
    # Nothing to copy: the job ends inside block-stream, drains included.
    run_both(lower_job_scenario(stream("n2", "L", **{"base-node": "n1"}),
                                lambda s: None))
    # Cancelled: filter removal and the BlockBackend's two drains, all
    # before the reply.
    run_both(lower_job_scenario(
        stream("n2", "L", "n1"),
        lambda s: s.cmd("block-job-cancel", {"device": "L"})))

    def finalize(s):
        s.cmd("block-job-set-speed", {"device": "L", "speed": 0})
        s.wait("L", "pending")
        s.settle()
        s.cmd("block-job-finalize", {"id": "L"})
    run_both(lower_job_scenario(
        stream("n2", "L", "n1", **{"auto-finalize": False}), finalize))


def test_paused_and_pending_jobs():
    """A user-paused job and a pending one (auto-finalize off) see no drain
    events; the pending job's finalize drains the job below it."""
    def scenario(s, w):
        paths = make_long_chain(w)
        add_long_chain(s.c, paths)
        s.start(stream("n6", "C", "n5", **{"auto-finalize": False}))
        s.start(stream("n4", "B", "n3"))
        s.cmd("block-job-pause", {"device": "B"})
        s.cmd("block-job-set-speed", {"device": "C", "speed": 0})
        s.wait("C", "pending")
        s.start(stream("n2", "A", "n1"))
        s.jobs()
        s.cmd("block-job-finalize", {"id": "C"})
        s.settle()
        s.cmd("block-job-set-speed", {"device": "A", "speed": 0})
        s.wait("A", "null")
        s.jobs()
        s.cmd("block-job-resume", {"device": "B"})
        s.settle()
        s.jobs()
        finish(s, "B")
        del_all(s, CHAIN)
        return paths
    run_both(scenario)


def test_failed_starts_below_running_job():
    """A start that fails once the filter is in drains twice: inserting it
    and taking it out (after the created/null of a job refused its speed);
    a start refused before the filter drains nothing."""
    def scenario(s, w):
        paths = make_long_chain(w)
        add_long_chain(s.c, paths)
        s.start(stream("n4", "U", "n3"))
        for args in (stream("n2", "U", "n1"), stream("n2", "1x", "n1"),
                     stream("n2", "A", "n1", speed=-1),
                     stream("n2", "A", "n1", **{"filter-node-name": "n0"}),
                     stream("n4", "A", "n3")):
            s.start(args)
            s.jobs()
        finish(s, "U")
        del_all(s, CHAIN)
        return paths
    run_both(scenario)


def test_read_only_top():
    """A read-only top is reopened read-write in a drained section over its
    subtree, before the filter's: the job above pauses twice; cancelling
    drains four times (filter, BlockBackend twice, reopen read-only)."""
    def scenario(s, w):
        paths = make_long_chain(w)
        add_long_chain(s.c, paths, ro=(4,))
        s.start(stream("n6", "C", "n5"))
        s.start(stream("n4", "B", "n3"))
        s.jobs()
        s.cmd("block-job-cancel", {"device": "B"})
        s.settle()
        s.jobs()
        finish(s, "C")
        del_all(s, CHAIN)
        return paths
    run_both(scenario)


def test_blockdev_add_next_to_a_job():
    """blockdev-add of a format node whose file is an existing node drains
    that node twice (QEMU probes it through a BlockBackend), also when the
    add then fails; a backing reference, blkdebug's image and blockdev-del
    drain nothing the job is linked to."""
    def scenario(s, w):
        paths = make_long_chain(w)
        add_long_chain(s.c, paths)
        ov = os.path.join(w, "ov.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", ov, str(SIZE))
        s.start(stream("n6", "C", "n5"))
        cor = [n["node-name"] for n in s.c.ok("query-named-block-nodes")
               if n["drv"] == "copy-on-read"][0]
        for args in ({"driver": "blkdebug", "node-name": "b4", "image": "n4"},
                     {"driver": "qcow2", "node-name": "o4", "backing": "n4",
                      "file": {"driver": "file", "filename": ov}},
                     {"driver": "raw", "node-name": "r4", "file": "n4"},
                     {"driver": "copy-on-read", "node-name": "c5",
                      "file": "n5", "bottom": "n4"},
                     {"driver": "copy-on-read", "node-name": "c6",
                      "file": cor},
                     {"driver": "copy-on-read", "node-name": "c4",
                      "file": "n4", "bottom": "n4"},
                     {"driver": "raw", "node-name": "r4", "file": "n4"}):
            s.cmd("blockdev-add", args)
            s.settle()
        s.jobs()
        for n in ("c6", "c5", "c4", "r4", "o4", "b4"):
            s.cmd("blockdev-del", {"node-name": n})
        s.settle()
        s.jobs()
        finish(s, "C")
        del_all(s, CHAIN)
        return paths
    run_both(scenario)


def test_parallel_streams_on_one_chain():
    """iotest 030's parallel case (test_stream_vs_qsd's, compared through
    the ends this time): the upper job's base sits under the lower job's
    filter. Each ending drains the other job: the upper's ending its
    subtree (the lower job pauses once), the lower's its filter, its backing
    change and its BlockBackend (the upper job four times)."""
    def scenario(s, w):
        paths = list(make_chain(w)[:3])
        for i, name in enumerate(("t4", "t5")):
            path = os.path.join(w, name + ".qcow2")
            run("qemu-img", "create", "-q", "-f", "qcow2", "-b", paths[-1],
                "-F", "qcow2", path)
            run("qemu-io", "-f", "qcow2", "-c",
                "write -P 0x%x %dk 64k" % (0x44 + i, 128 * (i + 1)), path)
            paths.append(path)
        add_chain(s.c, paths)
        for i, name in enumerate(("t4", "t5")):
            s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": name,
                                    "backing": "top" if i == 0 else "t4",
                                    "file": {"driver": "file",
                                             "filename": paths[3 + i]}})
        s.start(stream("top", "s0", "mid"))
        s.start(stream("t5", "s1", "t4"))
        s.jobs()
        finish(s, "s1", "s0")
        s.start(stream("t5", "s2", **{"base-node": "top"}))
        s.start(stream("top", "s3", "mid"))
        s.jobs()
        finish(s, "s3", "s2")
        del_all(s, ("t5", "t4", "top", "mid", "base"))
        return paths
    run_both(scenario)


def test_stream_below_with_nothing_to_copy():
    """A stream of a node without backing (nothing to copy) below a running
    job: inserting its filter drains the job, its ending drains it four
    more times (filter, the subtree QEMU drains even with no backing to
    change, BlockBackend twice), all before the reply."""
    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        s.start(stream("top", "s1", **{"base-node": "base"}))
        s.start(stream("base", "s2", **{"filter-node-name": "cor9"}))
        s.jobs()
        s.start(stream("base", "s3", **{"auto-finalize": False}))
        s.cmd("block-job-finalize", {"id": "s3"})
        finish(s, "s1")
        del_all(s, ("top", "mid", "base"))
        return paths[:3]
    run_both(scenario)


def test_noop_stream_above_running_job():
    """A stream with nothing to copy (base-node: the top's backing) above a
    running job: QEMU's ending drains the top's subtree and replaces the
    top's backing link by the same node, lifting that drain from the
    subtree below and applying it again: the job below pauses twice."""
    def scenario(s, w):
        paths = make_long_chain(w)
        add_long_chain(s.c, paths)
        s.start(stream("n2", "A", "n1"))
        s.start(stream("n4", "N", **{"base-node": "n3"}))
        s.start(stream("n6", "M", **{"base-node": "n5", "speed": 0}))
        s.jobs()
        finish(s, "A")
        del_all(s, CHAIN)
        return paths
    run_both(scenario)


def test_error_stopped_job():
    """A drain that waits for a chunk failing with on-error stop: the error
    pauses the job for good (no resume at the section's end), later drains
    give it no events; once resumed, the retried chunk is the one the
    resume lets through unslept."""
    def scenario(s, w):
        raw, top = make_raw_base(w)
        add_erroring_raw_chain(s.c, raw, top, 5)
        s.start({"device": "top", "job-id": "e0", "on-error": "stop",
                 "speed": 1})
        s.cmd("blockdev-add", {"driver": "raw", "node-name": "r",
                               "file": "base"})
        s.settle()
        s.jobs()
        s.cmd("blockdev-add", {"driver": "copy-on-read", "node-name": "c",
                               "file": "top"})
        s.settle()
        s.jobs()
        s.cmd("block-job-resume", {"device": "e0"})
        s.settle()
        s.jobs()
        s.cmd("blockdev-add", {"driver": "raw", "node-name": "r2",
                               "file": "base"})
        s.settle()
        s.jobs()
        finish(s, "e0")
        del_all(s, ("c", "r2", "r", "top", "base"))
        return [top]
    run_both(scenario)


def test_copy_on_read_nodes():
    """blockdev-add copy-on-read: its checks and texts, how
    query-named-block-nodes shows it, and the links its `bottom` freezes
    (another bottom across them, a block-stream through them)."""
    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        for args in (
                {"driver": "copy-on-read", "node-name": "c0", "file": "top"},
                {"driver": "copy-on-read", "node-name": "c1"},
                {"driver": "copy-on-read", "node-name": "c2",
                 "file": "nosuch"},
                {"driver": "copy-on-read", "node-name": "c3", "file": "mid",
                 "bottom": "base"},
                {"driver": "copy-on-read", "node-name": "c4", "file": "mid",
                 "bottom": "nosuch"},
                {"driver": "copy-on-read", "node-name": "c5", "file": "mid",
                 "bottom": "top"},
                {"driver": "copy-on-read", "node-name": "c6", "file": "mid",
                 "bottom": "mid"},
                {"driver": "copy-on-read", "node-name": "c7", "file": "c0",
                 "bottom": "c0"},
                {"driver": "copy-on-read", "node-name": "c8", "file": "c0",
                 "bottom": 5},
                {"driver": "copy-on-read", "file": "top"},
                {"driver": "copy-on-read", "node-name": "c9", "file": "c0",
                 "read-only": True},
                {"driver": "copy-on-read", "node-name": "c10", "file": "c0",
                 "bogus": 1},
                {"driver": "copy-on-read", "node-name": "c11",
                 "file": "base", "cache": {"direct": True},
                 "detect-zeroes": "on"}):
            s.cmd("blockdev-add", args)
        for flat in (False, True):
            s.cmd("query-named-block-nodes", {"flat": flat})
            # (where the data sits on disk may differ)
            for node in s.log[-1][-1]["return"]:
                img = node["image"]
                while img:
                    img.pop("actual-size", None)
                    img = img.get("backing-image")
        for args in (stream("top", "s0"), stream("mid", "s0"),
                     stream("c3", "s0")):
            s.cmd("block-stream", args)
        s.cmd("blockdev-add", {"driver": "copy-on-read", "node-name": "c12",
                               "file": "top", "bottom": "base"})
        for n in ("top", "c0", "c9", "c0", "c3", "c6", "c11"):
            s.cmd("blockdev-del", {"node-name": n})
        # (Enough chunks left after each drain: a job resumed with only
        # holes left ends at a moment qsd does not keep to.)
        s.start(stream("top", "s1"))
        s.cmd("blockdev-add", {"driver": "copy-on-read", "node-name": "c13",
                               "file": "top", "bottom": "mid"})
        s.settle()
        s.cmd("blockdev-add", {"driver": "copy-on-read", "node-name": "c14",
                               "file": "base", "bottom": "base"})
        s.settle()
        s.cmd("block-job-cancel", {"device": "s1"})
        s.cmd("blockdev-del", {"node-name": "c14"})
        del_all(s, ("top", "mid", "base"))
        return paths[:3]
    run_both(scenario)


if __name__ == "__main__":
    Runner(globals()).run()
