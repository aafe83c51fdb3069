"""Helpers of the service tests (test_service*.py, test_ctl*.py): qcow2
chains made with qemu-img/qemu-io, a NOTIFY_SOCKET the test owns, starting
blockjobd with an environment, and the blockjobctl binary.

Synchronisation is by log lines, notify messages, replies and events only.
A job kept running uses speed=1: after its first chunk the rate limit makes
it sleep for hours, until the test cancels it or stops the daemon."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                ".."))
from qmp import (Daemon, QMP, Runner, TIMEOUT, binary, require,  # noqa
                 skip)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ROOT_MAN = os.path.join(ROOT, "daemon")  # blockjobd.8, blockjobctl.1
MiB = 1 << 20
SIZE = 4 * MiB


def ctl_binary():
    """blockjobctl next to the blockjobd under test."""
    path = os.environ.get("BLOCKJOBCTL") or os.path.join(
        os.path.dirname(binary()), "blockjobctl")
    if not os.path.exists(path):
        skip("blockjobctl is not built (%s)" % path)
    return path


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def make_chain(d):
    """base.qcow2 (0x11 over the first 3 MiB) <- top.qcow2 (0x33 over the
    first 64 KiB); returns (base, top, flat) where flat.raw is the chain's
    content taken beforehand."""
    base, top, flat = (os.path.join(d, n)
                       for n in ("base.qcow2", "top.qcow2", "flat.raw"))
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 3M", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
        top)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 64k", top)
    run("qemu-img", "convert", "-U", "-O", "raw", top, flat)
    return base, top, flat


def top_blockdev(top, name="top"):
    return {"driver": "qcow2", "node-name": name,
            "file": {"driver": "file", "filename": top}}


def check_image(path, leaks_ok=False):
    """qemu-img check: clean (exit 0); with leaks_ok, leaked clusters
    (exit 3) are tolerated, corruption never."""
    r = subprocess.run(["qemu-img", "check", "-f", "qcow2", path],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ok = (0, 3) if leaks_ok else (0,)
    assert r.returncode in ok, "qemu-img check %s (%d): %s" % (
        path, r.returncode, r.stdout.decode())
    return r.returncode


def same_content(img, flat):
    r = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw",
                        img, flat], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    assert r.returncode == 0, "qemu-img compare: " + r.stdout.decode()


def dirty_flag(path):
    info = json.loads(subprocess.check_output(
        ["qemu-img", "info", "--output=json", "-U", path]))
    return info.get("dirty-flag", False)


class Notify:
    """A NOTIFY_SOCKET owned by the test: collects the daemon's datagrams."""

    def __init__(self, d):
        self.path = os.path.join(d, "notify.sock")
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(self.path)
        self.msgs = []

    def wait(self, pred, timeout=TIMEOUT):
        """Returns the first message (old or new) for which pred(msg) holds
        and drops it and those before it."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.msgs):
                if pred(m):
                    del self.msgs[:i + 1]
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no notify message matching; got %r"
                                     % self.msgs)
            self.s.settimeout(left)
            try:
                self.msgs.append(self.s.recv(4096).decode())
            except socket.timeout:
                pass

    def close(self):
        self.s.close()


@contextlib.contextmanager
def environ(**kv):
    """Sets (or with None, removes) environment variables for a block."""
    old = {k: os.environ.get(k) for k in kv}
    for k, v in kv.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_exit(proc, timeout=30):
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("process did not exit within %ds" % timeout)


def workdir():
    return tempfile.mkdtemp(prefix="bjd-svc-")
