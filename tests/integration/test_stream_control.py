#!/usr/bin/env python3
"""Controlling a running block-stream over the socket: pause, resume,
set-speed and cancel mid-job, auto-finalize=false / auto-dismiss=false,
every verb refused in each state with QEMU's text, query-block-jobs and
query-jobs fields, and clients going away mid-job.

A job is kept mid-way with speed=1: after its first chunk (64 KiB..512 KiB
of the 3-layer chain) the rate limit makes it sleep for days; the tests
then act on it and end it with set-speed 0. No sleeps, no timing."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stream_util import (  # noqa: E402
    SIZE, Daemon, Runner, add_chain, allocated, check, check_unknown_job,
    check_wrong_verbs, del_nodes, img_info, img_map, job_info, make_chain,
    mark, require, same_content, tokens, transcript, wait_first_chunk,
    wait_status)

require("qemu-img", "qemu-io")

KiB = 1024
FIRST = 512 * KiB  # progress after the first chunk
END_OK = ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"]


def info(status, offset=FIRST, speed=1, paused=False, busy=False,
         af=True, ad=True, **extra):
    d = {"auto-finalize": af, "io-status": "ok", "device": "s0",
         "auto-dismiss": ad, "busy": busy, "len": SIZE, "offset": offset,
         "status": status, "paused": paused, "speed": speed, "ready": False,
         "type": "stream"}
    d.update(extra)
    return d


def events_of(c, since, name):
    return [m["data"] for m in transcript(c, since)
            if m.get("event") == name]


def add_new_chain(c, d):
    """make_chain() in the daemon's directory, its nodes added."""
    paths = make_chain(d.workdir)
    add_chain(c, paths)
    return paths


def stream(c, **extra):
    """block-stream of top as job s0; extra: more arguments, with '_' for
    '-' in their names (auto_finalize=False)."""
    args = {"device": "top", "job-id": "s0"}
    args.update((k.replace("_", "-"), v) for k, v in extra.items())
    c.ok("block-stream", args)


def start_slow(c, d):
    paths = add_new_chain(c, d)
    stream(c, speed=1)
    wait_first_chunk(c, "s0")
    return paths


def start_pending(c, d, **extra):
    """A new chain streamed with auto-finalize false, once the job is
    pending (BLOCK_JOB_PENDING received)."""
    paths = add_new_chain(c, d)
    stream(c, auto_finalize=False, **extra)
    c.event("BLOCK_JOB_PENDING")
    return paths


def finish_fast(c):
    """set-speed 0: the sleeping job wakes and runs to the end."""
    m = mark(c)
    c.ok("block-job-set-speed", {"device": "s0", "speed": 0})
    wait_status(c, "s0", "null")
    assert tokens(c, m) == ["return"] + END_OK, tokens(c, m)
    return events_of(c, m, "BLOCK_JOB_COMPLETED")[0]


def check_flat(c, paths, backing_gone=True):
    base, mid, top, flat = paths
    del_nodes(c, "top", "mid", "base")
    check(top)
    same_content(top, flat)
    assert ("backing-filename" not in img_info(top)) == backing_gone


def test_pause_resume_set_speed():
    with Daemon() as d:
        c = d.connect()
        paths = start_slow(c, d)
        assert job_info(c, "s0") == info("running"), job_info(c, "s0")
        assert c.ok("query-jobs") == [{
            "current-progress": FIRST, "status": "running",
            "total-progress": SIZE, "type": "stream", "id": "s0"}]
        m = mark(c)
        c.ok("block-job-pause", {"device": "s0"})
        assert tokens(c, m) == ["paused", "return"], tokens(c, m)
        assert job_info(c, "s0") == info("paused", paused=True)
        c.err("job-pause", {"id": "s0"}, desc="Job is already paused")
        c.err("block-job-set-speed", {"device": "s0", "speed": -1},
              desc="Parameter 'speed' expects a non-negative value")
        c.ok("block-job-set-speed", {"device": "s0", "speed": 4096})
        assert job_info(c, "s0") == info("paused", paused=True, speed=4096)
        m = mark(c)
        c.ok("block-job-resume", {"device": "s0"})
        assert tokens(c, m) == ["running", "return"], tokens(c, m)
        # As in QEMU, the sleep cut short by the pause lets one chunk
        # through; then the limit holds the job again.
        wait_first_chunk(c, "s0", 2 * FIRST)
        assert job_info(c, "s0") == info("running", 2 * FIRST, speed=4096)
        m = mark(c)
        c.ok("job-pause", {"id": "s0"})
        c.err("job-resume", {"id": "nojob"}, desc="Job not found")
        c.ok("job-resume", {"id": "s0"})
        assert tokens(c, m) == ["paused", "return", "error: Job not found",
                                "running", "return"], tokens(c, m)
        wait_first_chunk(c, "s0", 3 * FIRST)
        # A lower limit does not wake the job; nothing else is copied.
        c.ok("block-job-set-speed", {"device": "s0", "speed": 1})
        assert job_info(c, "s0") == info("running", 3 * FIRST)
        done = finish_fast(c)
        assert done == {"device": "s0", "len": SIZE, "offset": SIZE,
                        "speed": 0, "type": "stream"}, done
        check_flat(c, paths)


def test_cancel_mid_job():
    with Daemon() as d:
        c = d.connect()
        paths = start_slow(c, d)
        m = mark(c)
        c.ok("block-job-cancel", {"device": "s0"})
        assert tokens(c, m) == ["aborting", "BLOCK_JOB_CANCELLED",
                                "concluded", "null", "return"], tokens(c, m)
        assert events_of(c, m, "BLOCK_JOB_CANCELLED") == [{
            "device": "s0", "len": SIZE, "offset": FIRST, "speed": 1,
            "type": "stream"}]
        assert c.ok("query-block-jobs") == []
        # The chain is untouched; what was copied stays (same data).
        top = paths[2]
        check_flat(c, paths, backing_gone=False)
        assert allocated(top) == [(0, FIRST)], img_map(top)


def test_cancel_paused():
    with Daemon() as d:
        c = d.connect()
        paths = start_slow(c, d)
        c.ok("block-job-pause", {"device": "s0"})
        wait_status(c, "s0", "paused")
        c.err("block-job-cancel", {"device": "s0"},
              desc="The block job for device 's0' is currently paused")
        m = mark(c)
        c.ok("job-cancel", {"id": "s0"})  # always forced
        assert tokens(c, m) == ["running", "aborting", "BLOCK_JOB_CANCELLED",
                                "concluded", "null", "return"], tokens(c, m)
        check_flat(c, paths, backing_gone=False)


def test_manual_finalize_and_dismiss():
    with Daemon() as d:
        c = d.connect()
        paths = add_new_chain(c, d)
        m = mark(c)
        stream(c, auto_finalize=False, auto_dismiss=False)
        c.event("BLOCK_JOB_PENDING")
        assert tokens(c, m) == ["created", "running", "return", "waiting",
                                "pending", "BLOCK_JOB_PENDING"], tokens(c, m)
        assert events_of(c, m, "BLOCK_JOB_PENDING") == [
            {"type": "stream", "id": "s0"}]
        want = info("pending", offset=SIZE, speed=0, af=False, ad=False)
        assert job_info(c, "s0") == want, job_info(c, "s0")
        # Nothing changed in the graph before finalize.
        nodes = {n["node-name"]: n for n in
                 c.ok("query-named-block-nodes", {"flat": True})}
        assert nodes["top"]["backing_file"] == paths[1], nodes["top"]
        m = mark(c)
        c.ok("block-job-finalize", {"id": "s0"})
        # Every event of the ending comes before the reply, and the graph
        # change is visible to the next command.
        assert tokens(c, m) == ["BLOCK_JOB_COMPLETED", "concluded",
                                "return"], tokens(c, m)
        nodes = {n["node-name"]: n for n in
                 c.ok("query-named-block-nodes", {"flat": True})}
        assert "backing_file" not in nodes["top"], nodes["top"]
        want = info("concluded", offset=SIZE, speed=0, af=False, ad=False)
        assert job_info(c, "s0") == want, job_info(c, "s0")
        assert c.ok("query-jobs") == [{
            "current-progress": SIZE, "status": "concluded",
            "total-progress": SIZE, "type": "stream", "id": "s0"}]
        m = mark(c)
        c.ok("job-dismiss", {"id": "s0"})
        assert tokens(c, m) == ["null", "return"], tokens(c, m)
        assert c.ok("query-jobs") == []
        check_flat(c, paths)


def test_manual_finalize_auto_dismiss():
    with Daemon() as d:
        c = d.connect()
        paths = start_pending(c, d)
        m = mark(c)
        c.ok("job-finalize", {"id": "s0"})
        assert tokens(c, m) == ["BLOCK_JOB_COMPLETED", "concluded", "null",
                                "return"], tokens(c, m)
        check_flat(c, paths)


def test_auto_finalize_no_auto_dismiss():
    with Daemon() as d:
        c = d.connect()
        paths = add_new_chain(c, d)
        m = mark(c)
        stream(c, auto_dismiss=False)
        wait_status(c, "s0", "concluded")
        assert tokens(c, m) == ["created", "running", "return"] + END_OK[:-1]
        assert job_info(c, "s0") == info("concluded", offset=SIZE, speed=0,
                                         ad=False)
        m = mark(c)
        c.ok("block-job-dismiss", {"id": "s0"})
        assert tokens(c, m) == ["null", "return"], tokens(c, m)
        check_flat(c, paths)


def test_cancel_pending():
    with Daemon() as d:
        c = d.connect()
        paths = start_pending(c, d, auto_dismiss=False)
        m = mark(c)
        c.ok("block-job-cancel", {"device": "s0"})
        assert tokens(c, m) == ["aborting", "BLOCK_JOB_CANCELLED",
                                "concluded", "return"], tokens(c, m)
        assert events_of(c, m, "BLOCK_JOB_CANCELLED")[0]["offset"] == SIZE
        want = info("concluded", offset=SIZE, speed=0, af=False, ad=False,
                    error="Operation canceled")
        assert job_info(c, "s0") == want, job_info(c, "s0")
        assert c.ok("query-jobs")[0]["error"] == "Operation canceled"
        c.ok("job-dismiss", {"id": "s0"})
        # Cancelled before finalize: the backing stays, the data is there.
        check_flat(c, paths, backing_gone=False)


def test_wrong_state_verbs():
    with Daemon() as d:
        c = d.connect()
        paths = add_new_chain(c, d)
        check_unknown_job(c)
        stream(c, speed=1, auto_finalize=False, auto_dismiss=False)
        wait_first_chunk(c, "s0")
        n = check_wrong_verbs(c, "running")
        c.ok("job-pause", {"id": "s0"})
        wait_status(c, "s0", "paused")
        n += check_wrong_verbs(c, "paused", user_paused=True)
        c.ok("job-resume", {"id": "s0"})
        c.ok("block-job-set-speed", {"device": "s0", "speed": 0})
        c.event("BLOCK_JOB_PENDING")
        n += check_wrong_verbs(c, "pending")
        c.ok("job-finalize", {"id": "s0"})
        n += check_wrong_verbs(c, "concluded")
        assert n == 8 + 9 + 9 + 11, n
        assert job_info(c, "s0")["status"] == "concluded"
        c.ok("job-dismiss", {"id": "s0"})
        check_unknown_job(c)
        check_flat(c, paths)


def test_client_leaving_mid_job_changes_nothing():
    with Daemon() as d:
        a = d.connect()
        b = d.connect()
        paths = start_slow(a, d)
        before = job_info(b, "s0")
        a.close()
        assert job_info(b, "s0") == before == info("running")
        # A client that paused the job and left: the job stays paused.
        a = d.connect()
        a.ok("block-job-pause", {"device": "s0"})
        wait_status(b, "s0", "paused")
        a.close()
        assert job_info(b, "s0") == info("paused", paused=True)
        m = mark(b)
        b.ok("block-job-resume", {"device": "s0"})
        done = finish_fast(b)
        assert done["offset"] == SIZE and "error" not in done, done
        assert tokens(b, m)[:2] == ["running", "return"], tokens(b, m)
        check_flat(b, paths)


def test_client_leaving_during_finalize():
    """A client sends job-finalize and goes away without waiting for the
    answer. Whether the daemon still ran a command that came just before the
    hang-up is a race (qsd drops queued requests of a closed monitor too);
    either way nothing breaks: the job ends once, the image is right."""
    with Daemon() as d:
        a = d.connect()
        b = d.connect()
        paths = add_new_chain(a, d)
        stream(a, auto_finalize=False)
        b.event("BLOCK_JOB_PENDING")
        m = mark(b)
        a.send_raw('{"execute": "job-finalize", "arguments": {"id": "s0"}}'
                   '{"execute": "query-jobs"}')
        a.close()
        r = b.cmd("job-finalize", {"id": "s0"})
        assert r == {"return": {}} or r["error"]["desc"] == "Job not found", r
        wait_status(b, "s0", "null")
        assert tokens(b, m) in (
            ["BLOCK_JOB_COMPLETED", "concluded", "null", "return"],
            ["BLOCK_JOB_COMPLETED", "concluded", "null",
             "error: Job not found"]), tokens(b, m)
        assert b.ok("query-jobs") == []
        check_flat(b, paths)


if __name__ == "__main__":
    Runner(globals()).run()
