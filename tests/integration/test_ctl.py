#!/usr/bin/env python3
"""blockjobctl against a real blockjobd: every command, --wait on and off a
terminal, exit codes (0 ok, 1 refused, 2 usage, 3 connection, 4 job failed,
5 job cancelled), and --help against the man page."""
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from service_util import (ROOT_MAN, Daemon, Runner, check_image,  # noqa
                          ctl_binary, make_chain, require, same_content,
                          top_blockdev, wait_exit, workdir)
from qmp import skip_check  # noqa: E402


def ctl(sock, *args, timeout=60):
    return subprocess.run([ctl_binary(), "--socket", sock] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)


def ctl_bg(sock, *args):
    return subprocess.Popen([ctl_binary(), "--socket", sock] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def chain_daemon(extra=()):
    d = workdir()
    base, top, flat = make_chain(d)
    dm = Daemon(["--blockdev", json.dumps(top_blockdev(top))] + list(extra))
    return d, dm, top, flat


def test_usage_and_help():
    p = subprocess.run([ctl_binary(), "--help"], stdout=subprocess.PIPE,
                       text=True)
    assert p.returncode == 0 and "Exit status:" in p.stdout
    man = open(os.path.join(ROOT_MAN, "blockjobctl.1")).read().replace(
        "\\-", "-")
    for opt in set(re.findall(r"--[a-z][a-z-]+", p.stdout)):
        assert opt in man, opt
    for word in ("stream", "jobs", "pause", "resume", "cancel", "set-speed",
                 "events", "qmp"):
        assert word in p.stdout and word in man, word
    for args in (["nosuch"], [], ["stream"], ["stream", "a", "b"],
                 ["stream", "a", "--speed", "fast"], ["stream", "a", "--x"],
                 ["jobs", "x"], ["pause"], ["set-speed", "j"],
                 ["set-speed", "j", "-1"], ["qmp"], ["--bogus", "jobs"]):
        r = subprocess.run([ctl_binary(), "--socket", "/nonexistent"] + args,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        assert r.returncode == 2, (args, r)
        assert len(r.stderr.splitlines()) == 1, (args, r.stderr)
    # bad JSON for qmp is a usage error too, found after connecting
    r = ctl("/nonexistent/x.sock", "jobs")
    assert r.returncode == 3 and "cannot connect" in r.stderr, r


def test_commands():
    d, dm, top, flat = chain_daemon()
    with dm:
        s = dm.sock
        r = ctl(s, "jobs")
        assert r.returncode == 0 and r.stdout == "no block jobs\n", r
        r = ctl(s, "stream", "top", "--speed", "1", "--job-id", "j1")
        assert r.returncode == 0 and r.stdout == "j1\n", r
        r = ctl(s, "jobs")
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["ID", "TYPE", "STATUS", "PROGRESS",
                                    "SPEED", "IO-STATUS"], lines
        assert re.match(r"j1 +stream +running +[\d.]+% \(.*\) +1 B/s +ok$",
                        lines[1]), lines
        c = dm.connect()
        assert ctl(s, "pause", "j1").returncode == 0
        c.event("JOB_STATUS_CHANGE", lambda d: d["status"] == "paused")
        assert "paused" in ctl(s, "jobs").stdout
        assert ctl(s, "resume", "j1").returncode == 0
        assert ctl(s, "set-speed", "j1", "2K").returncode == 0
        assert c.ok("query-block-jobs")[0]["speed"] == 2048
        r = ctl(s, "pause", "nosuch")
        assert r.returncode == 1, r
        assert r.stderr == "blockjobctl: Block job 'nosuch' not found\n", r
        r = ctl(s, "qmp", '{"execute": "query-block-jobs"}')
        assert r.returncode == 0 and json.loads(r.stdout)[0]["device"] == "j1"
        r = ctl(s, "qmp", '{"execute": "nosuch"}')
        assert r.returncode == 1 and "nosuch has not been found" in r.stderr
        r = ctl(s, "qmp", "[not json")
        assert r.returncode == 2, r
        assert ctl(s, "cancel", "j1", "--force").returncode == 0
        c.event("BLOCK_JOB_CANCELLED")
    check_image(top)
    same_content(top, flat)
    shutil.rmtree(d, ignore_errors=True)


def test_mirror_wait_ready_then_complete():
    d, dm, top, flat = chain_daemon()
    tgt = os.path.join(d, "copy.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", tgt, "4M"],
                   check=True)
    with dm:
        c = dm.connect()
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "copy",
                              "file": {"driver": "file", "filename": tgt}})
        r = ctl(dm.sock, "mirror", "top", "copy", "--sync", "full", "--wait")
        assert r.returncode == 0, r
        last = r.stdout.splitlines()[-1]
        assert re.match(r"top: ready, 4\.0 MiB copied in [\d.]+ s; the "
                        r"target stays in sync \(blockjobctl complete top "
                        r"pivots\)$", last), r.stdout
        j = c.ok("query-block-jobs")[0]
        assert j["ready"] and j["type"] == "mirror", j
        r = ctl(dm.sock, "complete", "top")
        assert r.returncode == 0, r
        assert re.match(r"top: completed, 4\.0 MiB in [\d.]+ s$",
                        r.stdout.splitlines()[-1]), r.stdout
        assert c.ok("query-block-jobs") == []
        r = ctl(dm.sock, "complete", "top")
        assert r.returncode == 1, r
        c.ok("blockdev-del", {"node-name": "copy"})
    for args in (["mirror", "top"], ["mirror", "a", "b", "c"],
                 ["mirror", "a", "b", "--speed", "x"], ["complete"]):
        r = ctl(dm.sock, *args)
        assert r.returncode == 2, (args, r)
    check_image(tgt)
    same_content(tgt, flat)
    shutil.rmtree(d, ignore_errors=True)


def test_wait_off_terminal_completes():
    d, dm, top, flat = chain_daemon()
    with dm:
        r = ctl(dm.sock, "stream", "top", "--speed", "4M", "--wait")
        assert r.returncode == 0, r
        lines = r.stdout.splitlines()
        assert len(lines) >= 2, lines  # a progress line, then the end
        assert re.match(r"top: completed, 4\.0 MiB in [\d.]+ s$", lines[-1]), (
            lines)
        for ln in lines[:-1]:
            assert re.match(r"top: \w+ [\d.]+% \(.* of .*, .*/s, ETA .*\)$",
                            ln), lines
    check_image(top)
    same_content(top, flat)
    shutil.rmtree(d, ignore_errors=True)


def test_wait_cancelled_exit_5_and_events():
    d, dm, top, flat = chain_daemon(["--log-level", "debug"])
    with dm:
        ev = ctl_bg(dm.sock, "events")
        # the event stream is live once its client negotiated
        dm.wait_log("client 1: capabilities negotiated")
        c = dm.connect()
        w = ctl_bg(dm.sock, "stream", "top", "--job-id", "j1", "--speed",
                   "1", "--wait")
        c.event("JOB_STATUS_CHANGE", lambda d: d["status"] == "running")
        assert ctl(dm.sock, "cancel", "j1").returncode == 0
        out, err = w.communicate(timeout=60)
        assert w.returncode == 5, (w.returncode, out, err)
        assert "j1: cancelled at" in err, err
        # SHUTDOWN ends the event stream with status 0
        dm.proc.send_signal(signal.SIGTERM)
        out, err = ev.communicate(timeout=60)
        assert ev.returncode == 0, (ev.returncode, out, err)
        events = [json.loads(ln) for ln in out.splitlines()]
        names = [e["event"] for e in events]
        assert names[-1] == "SHUTDOWN", names
        assert "BLOCK_JOB_CANCELLED" in names, names
        assert all("timestamp" in e for e in events)
        st = [e["data"]["status"] for e in events
              if e["event"] == "JOB_STATUS_CHANGE"]
        assert st[:2] == ["created", "running"] and st[-1] == "null", st
        assert wait_exit(dm.proc) == 0
        dm.log.close()
    shutil.rmtree(d, ignore_errors=True)


def test_wait_failed_exit_4():
    d = workdir()
    raw, top = os.path.join(d, "base.raw"), os.path.join(d, "top.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", raw, "4M"],
                   check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", raw,
                    "-F", "raw", top], check=True)
    base = {"driver": "raw", "node-name": "base",
            "file": {"driver": "blkdebug",
                     "image": {"driver": "file", "filename": raw},
                     "inject-error": [{"event": "read_aio", "errno": 5}]}}
    topn = {"driver": "qcow2", "node-name": "top", "backing": "base",
            "file": {"driver": "file", "filename": top}}
    with Daemon(["--blockdev", json.dumps(base), "--blockdev",
                 json.dumps(topn)]) as dm:
        r = ctl(dm.sock, "stream", "top", "--on-error", "report", "--wait")
        assert r.returncode == 4, r
        assert "blockjobctl: top: read error, action report" in r.stderr, r
        assert "blockjobctl: top: failed: Input/output error" in r.stderr, r
    shutil.rmtree(d, ignore_errors=True)


def test_wait_on_a_terminal_draws_a_bar():
    d, dm, top, flat = chain_daemon()
    with dm:
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(ctl_binary(), [ctl_binary(), "--socket", dm.sock,
                                    "stream", "top", "--speed", "2M",
                                    "--wait"])
        out = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 1)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, out
        text = out.decode()
        assert "\r\x1b[K" in text, text
        assert re.search(r"top \[#*\.*\] +[\d.]+% .*/s ETA \d+:\d\d:\d\d",
                         text), text
        assert "top: completed, 4.0 MiB" in text, text
    shutil.rmtree(d, ignore_errors=True)


def test_refused_peer_exit_3():
    if os.geteuid() != 0:
        skip_check("not root")
    with Daemon(["--allow-uid", "4242", "--socket-mode", "0666"]) as dm:
        os.chmod(dm.workdir, 0o755)
        # uid 4343 may not enter the checkout (a clone in root's 0700 home):
        # it runs a copy of the client from the daemon's 0755 work dir.
        ctl = os.path.join(dm.workdir, "blockjobctl")
        shutil.copy(ctl_binary(), ctl)
        os.chmod(ctl, 0o755)
        p = subprocess.run([ctl, "--socket", dm.sock, "jobs"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, preexec_fn=lambda: os.setuid(4343))
        assert p.returncode == 3, p
        assert "Access denied: uid 4343" in p.stderr, p.stderr


def test_create_and_snapshot():
    """create: the file and the qcow2 jobs, followed and dismissed; a job's
    error is printed with exit 4; snapshot puts an overlay on a node."""
    d = workdir()
    base = os.path.join(d, "base.qcow2")
    ov = os.path.join(d, "ov.qcow2")
    with Daemon() as dm:
        r = ctl(dm.sock, "create", base, "8M", "--cluster-size", "4K",
                "--lazy-refcounts")
        assert r.returncode == 0, r
        r = ctl(dm.sock, "create", ov, "8M", "--backing-file", base,
                "--backing-fmt", "qcow2", "--job-id", "mk")
        assert r.returncode == 0, r
        r = ctl(dm.sock, "create", os.path.join(d, "x.qcow2"), "1000")
        assert r.returncode == 4, r
        assert "Image size must be a multiple of 512 bytes" in r.stderr, r
        r = ctl(dm.sock, "create", os.path.join(d, "r.raw"), "1M",
                "--format", "raw", "--preallocation", "full")
        assert r.returncode == 0, r
        assert ctl(dm.sock, "create", "onlyfile").returncode == 2
        assert ctl(dm.sock, "snapshot", "a").returncode == 2
        r = ctl(dm.sock, "qmp", '{"execute": "query-jobs"}')
        assert r.stdout.strip() == "[]", r
        for args in ({"driver": "qcow2", "node-name": "base",
                      "file": {"driver": "file", "filename": base}},
                     {"driver": "qcow2", "node-name": "ov", "backing": None,
                      "file": {"driver": "file", "filename": ov}}):
            r = ctl(dm.sock, "qmp", json.dumps({"execute": "blockdev-add",
                                                "arguments": args}))
            assert r.returncode == 0, r
        r = ctl(dm.sock, "snapshot", "base", "ov")
        assert r.returncode == 0, r
        r = ctl(dm.sock, "snapshot", "base", "ov")
        assert r.returncode == 1, r
        assert "Node 'base' is busy: node is used as backing hd of 'ov'" in (
            r.stderr), r
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", base], check=True,
        capture_output=True, text=True).stdout)
    assert info["cluster-size"] == 4096, info
    assert info["format-specific"]["data"]["lazy-refcounts"] is True, info
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", ov], check=True,
        capture_output=True, text=True).stdout)
    assert info["backing-filename"] == base, info
    assert os.path.getsize(os.path.join(d, "r.raw")) == 1 << 20
    check_image(ov)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    require("qemu-img", "qemu-io")
    Runner(globals()).run()
