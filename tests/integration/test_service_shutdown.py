#!/usr/bin/env python3
"""Shutdown loses nothing: SIGTERM, SIGINT or `quit` in the middle of a
block-stream job cancels it at a consistent point, flushes and closes the
images (qemu-img check clean, content unchanged), sends SHUTDOWN to every
client, removes the socket file and the pidfile, and exits 0. A second
signal while draining exits at once with the images still consistent."""
import json
import os
import re
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from service_util import (Daemon, QMP, Runner, check_image,  # noqa
                          dirty_flag, make_chain, require, same_content,
                          top_blockdev, wait_exit, workdir)


def start_mid_job(d):
    """A daemon with a stream job that copied its first chunk and now
    sleeps on its rate limit (speed=1); a second, read-only monitor."""
    base, top, flat = make_chain(d)
    ro = os.path.join(d, "ro.sock")
    pidfile = os.path.join(d, "bjd.pid")
    dm = Daemon(["--blockdev", json.dumps(top_blockdev(top)),
                 "--readonly-socket", ro, "--pidfile", pidfile])
    c = dm.connect()
    mon = QMP(ro)
    mon.negotiate()
    c.ok("block-stream", {"device": "top", "job-id": "j1", "speed": 1})
    # Polled by request until the first chunk is in the top image (each
    # poll is a round trip, no sleeping).
    deadline = time.monotonic() + 30
    while True:
        jobs = c.ok("query-block-jobs")
        assert jobs[0]["status"] == "running", jobs
        if jobs[0]["offset"] > 0:
            break
        assert time.monotonic() < deadline, jobs
    assert jobs[0]["offset"] < jobs[0]["len"], jobs
    return dm, c, mon, top, flat, ro, pidfile


def expect_clean_end(dm, c, mon, reason, top, flat, ro, pidfile):
    for conn in (c, mon):
        e = conn.event("SHUTDOWN")
        assert e["data"] == {"guest": False, "reason": reason}, e
        cancelled = conn.event("BLOCK_JOB_CANCELLED")
        assert cancelled["data"]["device"] == "j1", cancelled
        conn.event("JOB_STATUS_CHANGE", lambda d: d["status"] == "null")
        try:
            m = conn.recv(30)
            raise AssertionError("message after the job ended: %r" % m)
        except EOFError:
            pass  # the daemon closed the connection after its output
    assert wait_exit(dm.proc) == 0, dm.logtext()
    text = dm.logtext()
    assert "images flushed and closed" in text, text
    assert not os.path.exists(dm.sock) and not os.path.exists(ro)
    assert not os.path.exists(pidfile)
    check_image(top)  # exit 0: no leaks, no corruption
    assert not dirty_flag(top)
    same_content(top, flat)
    dm.log.close()


def remove_dirs(d, dm):
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(dm.workdir, ignore_errors=True)


def shutdown_mid_job(stop, reason, log_line=None):
    """start_mid_job(), then stop(dm, c) asks the daemon to end: it must
    end cleanly with SHUTDOWN reason `reason` (and log `log_line`)."""
    require("qemu-img", "qemu-io")
    d = workdir()
    dm, c, mon, top, flat, ro, pidfile = start_mid_job(d)
    stop(dm, c)
    expect_clean_end(dm, c, mon, reason, top, flat, ro, pidfile)
    if log_line:
        assert log_line in dm.logtext()
    remove_dirs(d, dm)


def test_sigterm_mid_job():
    shutdown_mid_job(lambda dm, c: dm.proc.send_signal(signal.SIGTERM),
                     "host-signal", "shutting down (SIGTERM)")


def test_sigint_mid_job():
    shutdown_mid_job(lambda dm, c: dm.proc.send_signal(signal.SIGINT),
                     "host-signal")


def test_quit_mid_job():
    def send_quit(dm, c):
        assert c.cmd("quit", id="q") == {"return": {}, "id": "q"}

    shutdown_mid_job(send_quit, "host-qmp-quit", "shutting down (quit)")


def test_second_signal_exits_at_once():
    require("qemu-img", "qemu-io")
    d = workdir()
    dm, c, mon, top, flat, ro, pidfile = start_mid_job(d)
    # Both signals are pending when the loop wakes up, so the second one is
    # handled while the first one's drain is under way.
    os.kill(dm.proc.pid, signal.SIGTERM)
    os.kill(dm.proc.pid, signal.SIGINT)
    rc = wait_exit(dm.proc, timeout=10)
    text = dm.logtext()
    # (the kernel delivers pending signals lowest number first)
    if re.search(r"second SIG(INT|TERM) while shutting down: exiting now",
                 text):
        assert rc == 1, (rc, text)
    else:  # the first shutdown was already complete: a clean exit
        assert rc == 0, (rc, text)
        print("note: shutdown finished before the second signal")
    assert not os.path.exists(pidfile)
    check_image(top, leaks_ok=True)  # never corrupt; leaks are allowed
    same_content(top, flat)
    dm.log.close()
    remove_dirs(d, dm)


def test_shutdown_without_jobs_or_clients():
    with Daemon() as dm:
        dm.proc.send_signal(signal.SIGTERM)
        assert wait_exit(dm.proc) == 0
        assert not os.path.exists(dm.sock)
        dm.log.close()


if __name__ == "__main__":
    Runner(globals()).run()
