#!/usr/bin/env python3
"""A job outlives the client that started it: the client sends its
requests in one write and hangs up at once (as `socat` does at the end of
its input), and the job still runs to the end for everyone else."""
import os
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from qmp import Daemon, Runner, require  # noqa: E402

require("qemu-img", "qemu-io")


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def test_job_survives_hangup_after_start():
    d = tempfile.mkdtemp(prefix="bjd-hup-", dir="/var/tmp")
    base, top = os.path.join(d, "base.qcow2"), os.path.join(d, "top.qcow2")
    flat = os.path.join(d, "flat.raw")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 40M", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F",
        "qcow2", top)
    run("qemu-img", "convert", "-O", "raw", top, flat)
    with Daemon(["--log-level", "debug"]) as dm:
        watcher = dm.connect()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(dm.sock)
        s.sendall(b'{"execute": "qmp_capabilities"}\n'
                  b'{"execute": "blockdev-add", "arguments": {"driver": '
                  b'"qcow2", "node-name": "top", "file": {"driver": "file", '
                  b'"filename": "%s"}}}\n'
                  b'{"execute": "block-stream", "arguments": {"device": '
                  b'"top", "job-id": "s0"}}\n' % top.encode())
        s.shutdown(socket.SHUT_WR)  # as socat does at the end of input
        try:
            e = watcher.event("BLOCK_JOB_COMPLETED")
        except AssertionError:
            print(dm.logtext())
            raise
        assert e["data"]["offset"] == e["data"]["len"] == 64 << 20, e
        assert "error" not in e["data"], e
        watcher.event("JOB_STATUS_CHANGE", lambda x: x["status"] == "null")
        watcher.ok("blockdev-del", {"node-name": "top"})
        s.close()
    run("qemu-img", "check", "-q", top)
    run("qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", top, flat)
    subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    Runner(globals()).run()
