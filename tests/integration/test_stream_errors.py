#!/usr/bin/env python3
"""block-stream on-error policies over the socket, with errors injected by
blkdebug (reference §3.5, §4, §6.4): EIO in the base at 512 KiB for report,
ignore, stop and enospc; ENOSPC for stop/enospc (io-status nospace); a
failed write into the top; every BLOCK_JOB_ERROR reaching every client."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stream_util import (  # noqa: E402
    MiB, Daemon, Runner, add_erroring_raw_chain, add_write_error_chain,
    check, del_nodes, img_info, job_info, make_raw_base, mark, require,
    same_content, tokens, transcript, wait_status)

require("qemu-img", "qemu-io")

LEN = 2 * MiB
START = ["created", "running", "return"]
END_OK = ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"]
END_FAIL = ["aborting", "BLOCK_JOB_COMPLETED", "concluded", "null"]


def last_end(c, since):
    ends = [m["data"] for m in transcript(c, since)
            if m.get("event") in ("BLOCK_JOB_COMPLETED",
                                  "BLOCK_JOB_CANCELLED")]
    assert len(ends) == 1, ends
    return ends[0]


def finish(c, d, raw, top, backing_kept, leaks_ok=False):
    """Closes the nodes, then checks the image: clean, same content as the
    raw base (the top held nothing of its own), backing as expected."""
    del_nodes(c, "top", "base")
    check(top, leaks_ok)
    same_content(top, raw)
    info = img_info(top)
    assert ("backing-filename" in info) == backing_kept, info


def start_failing(c, d, policy, errno, write=False):
    """A raw base under a qcow2 top where the base's read (with `write`:
    the first data write into the top) fails with errno, and stream job e0
    with on-error `policy` started. Returns raw, top and the mark taken
    just before block-stream."""
    raw, top = make_raw_base(d.workdir)
    if write:
        add_write_error_chain(c, raw, top, errno)
    else:
        add_erroring_raw_chain(c, raw, top, errno)
    m = mark(c)
    c.ok("block-stream", {"device": "top", "job-id": "e0",
                          "on-error": policy})
    return raw, top, m


def failing_run(policy, errno, action, error_text, offset, write=False):
    with Daemon() as d:
        c = d.connect()
        raw, top, m = start_failing(c, d, policy, errno, write)
        wait_status(c, "e0", "null")
        # stream reports "read" even when the write into the top failed.
        want = START + ["ERROR(read,%s)" % action] + END_FAIL
        assert tokens(c, m) == want, tokens(c, m)
        assert last_end(c, m) == {"device": "e0", "len": LEN,
                                  "offset": offset, "speed": 0,
                                  "type": "stream", "error": error_text}
        finish(c, d, raw, top, backing_kept=True)


def test_eio_report():
    failing_run("report", 5, "report", "Input/output error", 512 * 1024)


def test_eio_enospc_reports():
    failing_run("enospc", 5, "report", "Input/output error", 512 * 1024)


def test_eio_ignore():
    # Goes on to the end (offset == len), then fails with the first error;
    # the backing stays.
    failing_run("ignore", 5, "ignore", "Input/output error", LEN)


def test_write_enospc_report():
    failing_run("report", 28, "report", "No space left on device", 0,
                write=True)


def stopping_run(policy, errno, iostatus, offset, write=False):
    with Daemon() as d:
        c = d.connect()
        raw, top, m = start_failing(c, d, policy, errno, write)
        wait_status(c, "e0", "paused")
        assert tokens(c, m) == START + ["ERROR(read,stop)", "paused"], (
            tokens(c, m))
        j = job_info(c, "e0")
        assert j == {"auto-finalize": True, "io-status": iostatus,
                     "device": "e0", "auto-dismiss": True, "busy": False,
                     "len": LEN, "offset": offset, "status": "paused",
                     "paused": True, "speed": 0, "ready": False,
                     "type": "stream"}, j
        # A stop is a user pause: pausing again is refused, cancel needs
        # force, and resume is allowed.
        c.err("block-job-pause", {"device": "e0"}, desc="Job is already paused")
        c.err("block-job-cancel", {"device": "e0"},
              desc="The block job for device 'e0' is currently paused")
        m = mark(c)
        c.ok("block-job-resume", {"device": "e0"})
        assert tokens(c, m) == ["running", "return"], tokens(c, m)
        j = job_info(c, "e0")
        assert j["io-status"] == "ok" and not j["paused"], j
        wait_status(c, "e0", "null")
        assert tokens(c, m)[2:] == ["return"] + END_OK, tokens(c, m)
        # The failed chunk was retried: success, nothing skipped.
        assert last_end(c, m) == {"device": "e0", "len": LEN, "offset": LEN,
                                  "speed": 0, "type": "stream"}
        finish(c, d, raw, top, backing_kept=False)


def test_eio_stop():
    stopping_run("stop", 5, "failed", 512 * 1024)


def test_enospc_stop():
    stopping_run("stop", 28, "nospace", 512 * 1024)


def test_enospc_enospc():
    stopping_run("enospc", 28, "nospace", 512 * 1024)


def test_write_enospc_stop():
    stopping_run("stop", 28, "nospace", 0, write=True)


def test_write_enospc_enospc():
    stopping_run("enospc", 28, "nospace", 0, write=True)


def test_failed_write_leaks_nothing():
    """qsd's qcow2 frees the clusters it allocated for a data write that
    failed: qemu-img check finds no leak after a stop and a retry."""
    with Daemon() as d:
        c = d.connect()
        raw, top, _ = start_failing(c, d, "stop", 28, write=True)
        wait_status(c, "e0", "paused")
        c.ok("block-job-resume", {"device": "e0"})
        wait_status(c, "e0", "null")
        finish(c, d, raw, top, backing_kept=False)


def test_stop_then_cancel():
    """A job stopped by an error is cancelled with force: it resumes and
    ends cancelled (io-status back to ok), the chain untouched."""
    with Daemon() as d:
        c = d.connect()
        raw, top, _ = start_failing(c, d, "stop", 5)
        wait_status(c, "e0", "paused")
        m = mark(c)
        c.ok("block-job-cancel", {"device": "e0", "force": True})
        wait_status(c, "e0", "null")
        assert tokens(c, m) == ["running", "aborting", "BLOCK_JOB_CANCELLED",
                                "concluded", "null", "return"], tokens(c, m)
        assert last_end(c, m) == {"device": "e0", "len": LEN,
                                  "offset": 512 * 1024, "speed": 0,
                                  "type": "stream"}
        finish(c, d, raw, top, backing_kept=True)


def test_every_client_gets_every_error():
    """Three failing chunks with on-error ignore: both clients receive the
    same three BLOCK_JOB_ERROR lines (same timestamps) and every other
    event; a client that did not start the job is no different."""
    with Daemon() as d:
        a = d.connect()
        b = d.connect()
        raw, top = make_raw_base(d.workdir)
        add_erroring_raw_chain(a, raw, top, 5, sectors=(1024, 2048, 3072))
        ma, mb = mark(a), mark(b)
        a.ok("block-stream", {"device": "top", "job-id": "e0",
                              "on-error": "ignore"})
        wait_status(a, "e0", "null")
        wait_status(b, "e0", "null")
        ev_a = [line for line in a.lines[ma:] if b'"event"' in line]
        ev_b = [line for line in b.lines[mb:] if b'"event"' in line]
        assert ev_a == ev_b, (ev_a, ev_b)
        errors = [json.loads(x) for x in ev_a if b"BLOCK_JOB_ERROR" in x]
        assert len(errors) == 3, ev_a
        for e in errors:
            assert e["data"] == {"device": "e0", "operation": "read",
                                 "action": "ignore"}, e
        assert last_end(a, ma)["error"] == "Input/output error"
        finish(a, d, raw, top, backing_kept=True)


if __name__ == "__main__":
    Runner(globals()).run()
