"""Helpers of the reliability tests (test_crash*.py, test_faults*.py,
test_load*.py): qcow2 chains made with qemu-img/qemu-io, image checks,
daemon restarts after SIGKILL, event transcripts without timestamps.

Synchronisation is by replies, events and the daemon's own state; the
only timing knobs are job speed limits and the chosen kill moments."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                ".."))
from qmp import Daemon, QSD, QMP, Runner, require, skip  # noqa: E402,F401
# Event tokens and transcripts as the stream tests write them.
from stream_util import short, transcript  # noqa: E402,F401

MiB = 1 << 20
KiB = 1 << 10


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def under_valgrind():
    return "valgrind" in os.environ.get("BLOCKJOBD_WRAPPER", "")


def memory_bounds_apply():
    """Memory figures mean nothing under valgrind or AddressSanitizer (its
    quarantine keeps freed memory), so bounds are checked only without."""
    return not under_valgrind() and \
        os.environ.get("BLOCKJOBD_SANITIZED", "") != "1"


def workdir(prefix):
    """A scratch directory on a real file system (not tmpfs, so that
    flushes cost what they cost on disks)."""
    base = os.environ.get("TEST_SCRATCH") or None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def qemu_check(path, allow_leaks=True):
    """qemu-img check: exit 0 clean, 3 leaks only, 2 corruption, 1 could
    not check. Returns the parsed JSON result."""
    r = subprocess.run(["qemu-img", "check", "-U", "--output=json",
                        "-f", "qcow2", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ok = (0, 3) if allow_leaks else (0,)
    assert r.returncode in ok, "qemu-img check %s (exit %d): %s %s" % (
        path, r.returncode, r.stdout.decode(), r.stderr.decode())
    return json.loads(r.stdout) if r.stdout else {}


def compare(img, flat, fmt="qcow2"):
    """The image, read through whatever backing its header names, equals
    the raw flat copy byte for byte."""
    r = subprocess.run(["qemu-img", "compare", "-U", "-f", fmt, "-F", "raw",
                        img, flat], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    assert r.returncode == 0, "qemu-img compare %s %s: %s" % (
        img, flat, r.stdout.decode())


def backing_of(path):
    info = json.loads(subprocess.check_output(
        ["qemu-img", "info", "-U", "--output=json", path]))
    return info.get("backing-filename")


def flatten(img, out):
    run("qemu-img", "convert", "-U", "-O", "raw", img, out)


def make_chain(d, size=32 * MiB, seed=1):
    """base <- mid <- top (qcow2, 64 KiB clusters) with data spread over the
    whole disk so that job progress is roughly proportional to time:
      base: a different pattern in every MiB but the last 2 MiB (left
            unallocated), a zero cluster in the middle of MiB 5;
      mid:  256 KiB of its own pattern every 2 MiB, zero clusters, and a
            sub-cluster write (COW of base data);
      top:  a few scattered clusters.
    Returns (base, mid, top, flat) with flat the raw image of the chain."""
    rnd = random.Random(seed)
    base, mid, top = (os.path.join(d, n) for n in
                      ("base.qcow2", "mid.qcow2", "top.qcow2"))
    nmib = size // MiB
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(size))
    cmds = []
    for i in range(nmib - 2):
        cmds += ["-c", "write -P %d %d 1M" % (0x10 + i, i * MiB)]
    cmds += ["-c", "write -z %d 64k" % (5 * MiB + 512 * KiB)]
    run("qemu-io", "-f", "qcow2", *cmds, base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
        mid)
    cmds = []
    for i in range(0, nmib, 2):
        cmds += ["-c", "write -P %d %d 256k" % (0x80 + i, i * MiB
                                                 + 128 * KiB)]
    cmds += ["-c", "write -z %d 128k" % (3 * MiB)]
    cmds += ["-c", "write -P 0xee %d 4k" % (7 * MiB + 4 * KiB)]
    run("qemu-io", "-f", "qcow2", *cmds, mid)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2",
        top)
    cmds = []
    for _ in range(6):
        off = rnd.randrange(0, size // (64 * KiB)) * 64 * KiB
        cmds += ["-c", "write -P 0xcc %d 64k" % off]
    run("qemu-io", "-f", "qcow2", *cmds, top)
    flat = os.path.join(d, "flat.raw")
    flatten(top, flat)
    return base, mid, top, flat


def copy_sparse(src, dst):
    run("cp", "--sparse=always", src, dst)


def add_top(c, top, node="top"):
    """Adds the top with only its file: the backing chain is opened from
    whatever the header names now."""
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": node,
                          "file": {"driver": "file", "filename": top}})


def wait_status(c, job, status, timeout=None):
    kw = {} if timeout is None else {"timeout": timeout}
    return c.event("JOB_STATUS_CHANGE",
                   lambda d: d["id"] == job and d["status"] == status, **kw)


def job_info(c, job):
    for j in c.ok("query-block-jobs"):
        if j["device"] == job:
            return j
    return None


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def kill9(d):
    """SIGKILL the daemon (and a wrapper's child with it) and reap it."""
    if d.proc.poll() is None:
        os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    d.log.close()


def cleanup(path):
    shutil.rmtree(path, ignore_errors=True)


def discard(daemon):
    """After a test that stops the daemon itself: kills it if the test
    failed before that, and removes its directory either way."""
    if daemon.proc.poll() is None:
        daemon.proc.kill()
        daemon.proc.wait()
    cleanup(daemon.workdir)


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def monotonic():
    return time.monotonic()
