#!/usr/bin/env python3
"""Block-job verbs and rate limits against qemu-storage-daemon 7.2: the
same sessions on qsd and on blockjobd must give the same replies and events
in the same order (timestamps aside) and the same job offsets, and leave the
same images (run_both of test_stream_vs_qsd).

Jobs run with small speeds: after a chunk they sleep for hours, so only the
session (a verb, an error) moves them on; between steps the session waits
for an event or for the job to sleep again (wait_first_chunk)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from stream_util import (  # noqa: E402
    KiB, Runner, add_chain, add_erroring_raw_chain, del_nodes, make_chain,
    make_raw_base, require, run, wait_first_chunk)
from test_stream_vs_qsd import run_both  # noqa: E402

require("qemu-storage-daemon", "qemu-img", "qemu-io")


def test_set_speed_raised_while_sleeping():
    """A higher speed wakes a job sleeping in its rate limit: one chunk
    goes through, then it sleeps at the new speed; a lower or equal speed
    leaves it asleep; a resume after a pause lets one chunk through."""
    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        s.cmd("block-stream", {"device": "top", "job-id": "s0", "speed": 1})
        wait_first_chunk(s.c, "s0")
        s.cmd("query-block-jobs")
        s.cmd("block-job-set-speed", {"device": "s0", "speed": 4096})
        wait_first_chunk(s.c, "s0", 1024 * KiB)
        s.cmd("query-block-jobs")
        s.cmd("block-job-set-speed", {"device": "s0", "speed": 4096})
        s.cmd("block-job-set-speed", {"device": "s0", "speed": 2048})
        s.cmd("query-block-jobs")
        s.cmd("block-job-pause", {"device": "s0"})
        s.cmd("block-job-set-speed", {"device": "s0", "speed": 8192})
        s.cmd("query-block-jobs")
        s.cmd("block-job-resume", {"device": "s0"})
        wait_first_chunk(s.c, "s0", 1536 * KiB)
        s.cmd("query-block-jobs")
        s.cmd("block-job-cancel", {"device": "s0", "force": True})
        s.cmd("query-jobs")
        del_nodes(s.c, "top", "mid", "base")
        return [(p, "qcow2") for p in paths[:3]]
    run_both(scenario)


def limited_error_scenario(policy):
    """A rate-limited stream whose first chunk fails to read."""
    def scenario(s, w):
        raw, top = make_raw_base(w)
        add_erroring_raw_chain(s.c, raw, top, 5, sectors=(0,))
        s.cmd("block-stream", {"device": "top", "job-id": "e0", "speed": 1,
                               "on-error": policy})
        if policy == "report":
            # qsd ends the job at once, it does not sleep first.
            s.wait("e0", "null")
        elif policy == "stop":
            s.wait("e0", "paused")
            s.cmd("query-block-jobs")
            s.cmd("block-job-resume", {"device": "e0"})
            # The failed chunk only, then the job sleeps again.
            wait_first_chunk(s.c, "e0")
            s.cmd("query-block-jobs")
        else:
            s.event("BLOCK_JOB_ERROR")
            wait_first_chunk(s.c, "e0")
            s.cmd("query-block-jobs")
        s.cmd("query-jobs")
        if policy != "report":
            s.cmd("block-job-cancel", {"device": "e0", "force": True})
        del_nodes(s.c, "top", "base")
        return [(top, "qcow2")]
    return scenario


def test_error_while_rate_limited():
    for policy in ("report", "stop", "ignore"):
        run_both(limited_error_scenario(policy))



def concluded_scenario(base_node, cancel):
    """A concluded job (auto-dismiss false) keeps its nodes blocked until
    it is dismissed, also the ones it took out of the chain."""
    def probes(s):
        for n in ("top", "mid"):
            s.cmd("block-stream", {"device": n, "job-id": "x" + n})
        s.cmd("query-jobs")
        for n in ("top", "mid", "base"):
            s.cmd("blockdev-del", {"node-name": n})

    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        args = {"device": "top", "job-id": "s0", "auto-dismiss": False}
        if base_node:
            args["base-node"] = base_node
        if cancel:
            args["speed"] = 1
        s.cmd("block-stream", args)
        if cancel:
            wait_first_chunk(s.c, "s0")
            s.cmd("block-job-cancel", {"device": "s0"})
        else:
            s.wait("s0", "concluded")
        probes(s)
        s.cmd("query-block-jobs")
        s.cmd("job-dismiss", {"id": "s0"})
        del_nodes(s.c, "top", "mid", "base")
        return [(p, "qcow2") for p in paths[:3]]
    return scenario


def test_concluded_job_keeps_nodes_blocked():
    for base_node, cancel in ((None, False), ("base", False),
                              ("base", True)):
        run_both(concluded_scenario(base_node, cancel))


def failed_ro_stream_scenario(conflict):
    """block-stream of a read-only top that fails after the top's
    read-write reopen (bad filter name, job id, speed...) or in it (a
    second image node over the same file: no write lock) leaves the top
    read-only."""
    def scenario(s, w):
        base, mid, top = make_chain(w)[:3]
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "base",
                                "file": {"driver": "file",
                                         "filename": base}})
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "mid",
                                "backing": "base",
                                "file": {"driver": "file", "filename": mid}})
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                                "backing": "mid", "read-only": True,
                                "file": {"driver": "file", "filename": top}})
        if conflict:
            s.c.ok("blockdev-add", {"driver": "file", "node-name": "tf",
                                    "filename": top, "read-only": True})
            s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top2",
                                    "backing": None, "read-only": True,
                                    "file": "tf"})
        for bad in ({"filter-node-name": "1bad"}, {"job-id": "1bad"},
                    {"speed": -1}, {"filter-node-name": "mid"},
                    {"base": "nonexist"}):
            s.cmd("block-stream", dict({"device": "top", "job-id": "s0"},
                                       **bad))
            s.nodes({"flat": True})
        if conflict:
            del_nodes(s.c, "top2", "tf")
        s.cmd("block-stream", {"device": "top", "job-id": "s1"})
        s.wait("s1", "null")
        s.nodes({"flat": True})
        del_nodes(s.c, "top", "mid", "base")
        return [(p, "qcow2") for p in (base, mid, top)]
    return scenario


def test_failed_stream_of_read_only_top():
    for conflict in (False, True):
        run_both(failed_ro_stream_scenario(conflict))


def resume_to_end_scenario(size, verb, top_size=None, data_at=0):
    """A job woken (resume, a raised speed) whose next chunk is a skip that
    reaches the end ends before the reply in qsd (its coroutine runs inside
    the command); a longer skip yields first (reply, then the ending). Past
    the end of a shorter backing the rest of the disk is one skip."""
    def scenario(s, w):
        base, top = os.path.join(w, "b.qcow2"), os.path.join(w, "t.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", base, str(size))
        run("qemu-io", "-f", "qcow2", "-c",
            "write -P 0x11 %d 64k" % data_at, base)
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F",
            "qcow2", top, str(top_size or size))
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "base",
                                "file": {"driver": "file",
                                         "filename": base}})
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                                "backing": "base",
                                "file": {"driver": "file", "filename": top}})
        s.cmd("block-stream", {"device": "top", "job-id": "s0", "speed": 1,
                               "auto-dismiss": False})
        wait_first_chunk(s.c, "s0", data_at + 64 * KiB)
        s.cmd("query-block-jobs")
        if verb == "resume":
            s.cmd("block-job-pause", {"device": "s0"})
            s.cmd("block-job-resume", {"device": "s0"})
        else:
            s.cmd("block-job-set-speed", {"device": "s0", "speed": 4096})
        if not any(m.get("data", {}).get("status") == "concluded"
                   for m in s.log[-1]):
            s.wait("s0", "concluded")
        s.cmd("query-jobs")
        s.cmd("job-dismiss", {"id": "s0"})
        del_nodes(s.c, "top", "base")
        return [(base, "qcow2"), (top, "qcow2")]
    return scenario


def test_woken_job_with_nothing_left():
    for size in (512 * KiB, 1024 * KiB):
        for verb in ("resume", "set-speed"):
            run_both(resume_to_end_scenario(size, verb))
    for verb in ("resume", "set-speed"):
        run_both(resume_to_end_scenario(1024 * KiB, verb, 4096 * KiB,
                                        960 * KiB))


def test_bottom_filter():
    """block-stream 'bottom' naming a filter (copy-on-read, blkdebug) is
    refused before the chain is checked; a raw node is no filter."""
    def scenario(s, w):
        base, mid, top = make_chain(w)[:3]
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "base",
                                "file": {"driver": "file",
                                         "filename": base}})
        s.c.ok("blockdev-add", {"driver": "copy-on-read", "node-name": "cor",
                                "file": "base"})
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "mid",
                                "backing": "cor",
                                "file": {"driver": "file", "filename": mid}})
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                                "backing": "mid",
                                "file": {"driver": "file", "filename": top}})
        raw = os.path.join(w, "r.raw")
        run("qemu-img", "create", "-q", "-f", "raw", raw, "1M")
        s.c.ok("blockdev-add", {"driver": "raw", "node-name": "rawn",
                                "file": {"driver": "blkdebug",
                                         "node-name": "dbg",
                                         "image": {"driver": "file",
                                                   "filename": raw}}})
        for b in ("cor", "rawn", "dbg", "nonode"):
            s.cmd("block-stream", {"device": "top", "job-id": "x",
                                   "bottom": b})
        s.cmd("query-jobs")
        del_nodes(s.c, "rawn", "top", "mid", "cor", "base")
        return [(base, "qcow2"), (mid, "qcow2"), (top, "qcow2")]
    run_both(scenario)


def test_stream_of_protocol_node():
    """block-stream of a file node under a writable image format: the
    job's BlockBackend on the filter shares no resize, a permission
    conflict (created, null, the error); a lone file node or one under a
    read-only format streams (nothing to copy)."""
    def scenario(s, w):
        base, mid, top = make_chain(w)[:3]
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "base",
                                "file": {"driver": "file", "filename": base,
                                         "node-name": "bf"}})
        s.c.ok("blockdev-add", {"driver": "file", "node-name": "tf",
                                "filename": top})
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                                "backing": "base", "file": "tf"})
        raw = os.path.join(w, "r.raw")
        run("qemu-img", "create", "-q", "-f", "raw", raw, "1M")
        s.c.ok("blockdev-add", {"driver": "file", "node-name": "lone",
                                "filename": raw})
        s.c.ok("blockdev-add", {"driver": "file", "node-name": "rof",
                                "filename": mid, "read-only": True})
        s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "midro",
                                "file": "rof", "backing": None,
                                "read-only": True})
        for a in ({"device": "tf"}, {"device": "bf"}, {"device": "lone"},
                  {"device": "tf", "speed": 1},
                  {"device": "tf", "filter-node-name": "f1"},
                  {"device": "bf", "filter-node-name": "1x"},
                  {"device": "rof"}, {"device": "tf", "bottom": "tf"}):
            s.cmd("block-stream", dict({"job-id": "x", "auto-dismiss": False},
                                       **a))
            s.cmd("query-jobs")
            if s.log[-1][-1]["return"]:
                s.c.ok("job-dismiss", {"id": "x"})
        s.nodes({"flat": True})
        del_nodes(s.c, "midro", "rof", "lone", "top", "tf", "base")
        return [(base, "qcow2"), (mid, "qcow2"), (top, "qcow2")]
    run_both(scenario)


def relative_chain(w):
    """base <- mid <- top, backing names relative in the headers."""
    b, m, t = (os.path.join(w, n)
               for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    run("qemu-img", "create", "-q", "-f", "qcow2", b, "1M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", b)
    for img, back in ((m, "base.qcow2"), (t, "mid.qcow2")):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                        back, "-F", "qcow2", os.path.basename(img)], cwd=w,
                       check=True)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 64k", m)
    return b, m, t


def base_lookup_scenario(by_reference, bases, base_node=None):
    """block-stream 'base' as QEMU's bdrv_find_backing_image(): with
    backings given by reference (not the header's: compared against the
    node's name, json:{...} for mid) or from the headers (the header's
    name, relative to the image); a stream with a base writes the base's
    current name into the header."""
    def scenario(s, w):
        b, m, t = relative_chain(w)
        if by_reference:
            s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "base",
                                    "file": {"driver": "file",
                                             "filename": b}})
            s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "mid",
                                    "backing": "base",
                                    "file": {"driver": "file",
                                             "filename": m}})
            s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                                    "backing": "mid",
                                    "file": {"driver": "file",
                                             "filename": t}})
        else:
            s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                                    "file": {"driver": "file",
                                             "filename": t}})
        runs = [{"base": x.replace("@", w)} for x in bases]
        if base_node:
            runs.append({"base-node": base_node})
        for arg in runs:
            s.cmd("block-stream", dict({"device": "top", "job-id": "x",
                                        "auto-dismiss": False}, **arg))
            last = s.log[-1]
            if "error" not in last[-1]:
                if not any(m.get("data", {}).get("status") == "concluded"
                           for m in last):
                    s.wait("x", "concluded")
                s.cmd("job-dismiss", {"id": "x"})
        if not base_node:
            # (with a json:{...} backing name in top's header our
            # full-backing-filename still has the directory before it:
            # qcow2.c, reported; the header itself is compared below)
            s.nodes({"flat": True})
        del_nodes(s.c, *(("top", "mid", "base") if by_reference
                         else ("top",)))
        return [(b, "qcow2"), (m, "qcow2"), (t, "qcow2")]
    return scenario


def test_base_lookup_and_name():
    run_both(base_lookup_scenario(
        True, ["@/mid.qcow2", "mid.qcow2", "base.qcow2", "@/base.qcow2",
               "base.qcow2"]))
    run_both(base_lookup_scenario(True, [], base_node="mid"))
    run_both(base_lookup_scenario(
        False, ["@/top.qcow2", "./mid.qcow2", "mid.qcow2", "base.qcow2"]))


if __name__ == "__main__":
    Runner(globals()).run()
