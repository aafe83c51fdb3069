"""Shared helpers of the block-stream tests (test_stream*.py and
tests/interop/test_stream_vs_qsd.py): qcow2 chains made by qemu-img/qemu-io,
blkdebug recipes, event sequences without timestamps.

Synchronisation is by events and replies only: a job kept "running" for a
while uses speed=1 (after its first chunk the rate limit makes it sleep for
hours, until the test changes the speed or pauses/cancels it)."""
import json
import os
import select
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                ".."))
from qmp import QSD as QSD_CLASS  # noqa: E402,F401
from qmp import Daemon, QMP, Runner, require, skip  # noqa: E402,F401
from qmp import TIMEOUT  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10
SIZE = 4 * MiB  # virtual size of every test image


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def img_info(path):
    return json.loads(subprocess.check_output(
        ["qemu-img", "info", "--output=json", "-U", path]))


def img_map(path, fmt="qcow2"):
    return json.loads(subprocess.check_output(
        ["qemu-img", "map", "--output=json", "-U", "-f", fmt, path]))


def allocated(path):
    """Guest ranges an image holds itself, adjacent extents merged (chunks
    written in parallel land in the file in any order, which splits
    qemu-img map's extents by host offset)."""
    out = []
    for e in img_map(path):
        if e["depth"] != 0 or not e["present"]:
            continue
        if out and out[-1][0] + out[-1][1] == e["start"]:
            out[-1] = (out[-1][0], out[-1][1] + e["length"])
        else:
            out.append((e["start"], e["length"]))
    return out


def check(path, leaks_ok=False):
    """qemu-img check must find the image clean (exit 0; with leaks_ok,
    leaked clusters - exit 3 - are tolerated, corruption never)."""
    r = subprocess.run(["qemu-img", "check", "-f", "qcow2", path],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ok = (0, 3) if leaks_ok else (0,)
    assert r.returncode in ok, "qemu-img check %s: %s" % (path, r.stdout)


def same_content(a, b, fmt_a="qcow2", fmt_b="raw"):
    r = subprocess.run(["qemu-img", "compare", "-U", "-f", fmt_a, "-F", fmt_b,
                        a, b], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    assert r.returncode == 0, "qemu-img compare %s %s: %s" % (a, b, r.stdout)


def make_chain(d):
    """base <- mid <- top, 4 MiB each, with data in every layer (and a zero
    cluster in base); returns (base, mid, top, flat) where flat is the whole
    chain converted to raw beforehand. Layout (64 KiB clusters):
      base: 0x11 over [0, 3M), zeroes written at [1M, 1M+64k)
      mid:  0x22 over [512k, 1.5M)
      top:  0x33 over [0, 64k)
    """
    base, mid, top = (os.path.join(d, n)
                      for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 3M",
        "-c", "write -z 1M 64k", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
        mid)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 512k 1M", mid)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2",
        top)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 64k", top)
    flat = os.path.join(d, "flat.raw")
    run("qemu-img", "convert", "-U", "-O", "raw", top, flat)
    return base, mid, top, flat


def add_chain(c, paths):
    """Adds base, mid and top as named nodes (explicit backing references,
    so no implicit #block nodes take part)."""
    base, mid, top = paths[:3]
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": "base",
                          "file": {"driver": "file", "filename": base}})
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": "mid",
                          "backing": "base",
                          "file": {"driver": "file", "filename": mid}})
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                          "backing": "mid",
                          "file": {"driver": "file", "filename": top}})


def del_nodes(c, *names):
    for n in names:
        c.ok("blockdev-del", {"node-name": n})


def make_raw_base(d, size=2 * MiB):
    """A raw base full of 0x11 and an empty qcow2 top over it (§3.5)."""
    raw = os.path.join(d, "base.raw")
    top = os.path.join(d, "t.qcow2")
    run("qemu-img", "create", "-q", "-f", "raw", raw, str(size))
    run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 %d" % size, raw)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw",
        top)
    return raw, top


def blkdebug_read_error(errno=5, sectors=(1024,)):
    """§6.4: fail reads covering the given sectors once each, while the
    state machine alternates 1 <-> 2 on every read_aio."""
    return {
        "inject-error": [{"event": "read_aio", "errno": errno, "sector": s,
                          "once": True, "immediately": False, "state": 1}
                         for s in sectors],
        "set-state": [{"state": 1, "event": "read_aio", "new_state": 2},
                      {"state": 2, "event": "read_aio", "new_state": 1}],
    }


def add_erroring_raw_chain(c, raw, top, errno=5, sectors=(1024,)):
    """A raw base behind blkdebug (read errors) and a qcow2 top."""
    opts = {"driver": "raw", "node-name": "base",
            "file": dict(driver="blkdebug",
                         image={"driver": "file", "filename": raw},
                         **blkdebug_read_error(errno, sectors))}
    c.ok("blockdev-add", opts)
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                          "backing": "base",
                          "file": {"driver": "file", "filename": top}})


def add_write_error_chain(c, raw, top, errno=28):
    """A raw base and a qcow2 top whose file sits on blkdebug failing the
    first data write into the top (§6.4)."""
    c.ok("blockdev-add", {"driver": "raw", "node-name": "base",
                          "file": {"driver": "file", "filename": raw}})
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                          "backing": "base",
                          "file": {"driver": "blkdebug",
                                   "inject-error": [{"event": "write_aio",
                                                     "errno": errno,
                                                     "once": True}],
                                   "image": {"driver": "file",
                                             "filename": top}}})


def short(e):
    """An event as a short token: the status of JOB_STATUS_CHANGE, else
    the event name (with the action of BLOCK_JOB_ERROR)."""
    d = e.get("data", {})
    if e["event"] == "JOB_STATUS_CHANGE":
        return d["status"]
    if e["event"] == "BLOCK_JOB_ERROR":
        return "ERROR(%s,%s)" % (d["operation"], d["action"])
    return e["event"]


def mark(c):
    """Position in the client's received lines (see transcript); events
    received before are forgotten, so waits only see what follows."""
    c.events.clear()
    return len(c.lines)


def transcript(c, since=0):
    """Every reply and event received since `since`, in arrival order, as
    comparable values: events without timestamp, replies as they are."""
    out = []
    for line in c.lines[since:]:
        m = json.loads(line)
        if "event" in m:
            out.append({"event": m["event"], "data": m.get("data")})
        else:
            out.append(m)
    return out


def tokens(c, since=0):
    """transcript() as short tokens: events via short(), replies as
    'return' or 'error: <desc>'."""
    out = []
    for m in transcript(c, since):
        if "event" in m:
            out.append(short(m))
        elif "error" in m:
            out.append("error: " + m["error"]["desc"])
        else:
            out.append("return")
    return out


def wait_status(c, job, status):
    return c.event("JOB_STATUS_CHANGE",
                   lambda d: d["id"] == job and d["status"] == status)


def job_info(c, job):
    for j in c.ok("query-block-jobs"):
        if j["device"] == job:
            return j
    raise AssertionError("no block job %s" % job)


def wait_first_chunk(c, job, min_offset=512 * KiB, timeout=None):
    """With speed=1 a job copies one chunk and then sleeps (also after a
    resume, which lets one chunk through as in QEMU): waits until a query
    shows it sleeping (busy false) with at least `min_offset` done.

    Nothing is sent when a job goes to sleep, so this polls the daemon's
    state: the state alone decides, the clock only bounds the wait (the QMP
    timeout, like every other wait; not a count of queries, which a slow
    disk on a loaded machine outlasts). Between queries it waits for
    whatever the daemon sends, at most a pause growing from 1 to 50 ms, so
    the queries do not take the CPU the job needs."""
    deadline = time.monotonic() + (TIMEOUT if timeout is None else timeout)
    pause = 0.001
    while True:
        j = job_info(c, job)
        if j["offset"] >= min_offset and not j["busy"]:
            return j
        if time.monotonic() > deadline:
            raise AssertionError("job %s never slept: %r" % (job, j))
        if b"\n" not in c.buf:
            select.select([c.s], [], [], pause)
        pause = min(pause * 2, 0.05)


# ---- wrong-state verbs ------------------------------------------------------

# QEMU 7.2's JobVerbTable (reference §2.3): verb -> statuses that accept it.
VERB_OK = {
    "cancel": {"created", "running", "paused", "ready", "standby", "waiting",
               "pending"},
    "pause": {"created", "running", "paused", "ready", "standby"},
    "resume": {"created", "running", "paused", "ready", "standby"},
    "set-speed": {"created", "running", "paused", "ready", "standby"},
    "complete": {"ready", "standby"},
    "finalize": {"pending"},
    "dismiss": {"concluded"},
}

# (command, verb, arguments for job "s0")
VERB_COMMANDS = [
    ("block-job-set-speed", "set-speed", {"device": "s0", "speed": 0}),
    ("block-job-cancel", "cancel", {"device": "s0"}),
    ("block-job-pause", "pause", {"device": "s0"}),
    ("block-job-resume", "resume", {"device": "s0"}),
    ("block-job-complete", "complete", {"device": "s0"}),
    ("block-job-finalize", "finalize", {"id": "s0"}),
    ("block-job-dismiss", "dismiss", {"id": "s0"}),
    ("job-cancel", "cancel", {"id": "s0"}),
    ("job-pause", "pause", {"id": "s0"}),
    ("job-resume", "resume", {"id": "s0"}),
    ("job-complete", "complete", {"id": "s0"}),
    ("job-finalize", "finalize", {"id": "s0"}),
    ("job-dismiss", "dismiss", {"id": "s0"}),
]


def verb_error(cmd, verb, status, user_paused):
    """The error text QEMU gives for `cmd` on stream job s0 in `status`, or
    None when the command would be accepted."""
    if verb == "resume" and not user_paused:
        return "Can't resume a job that was not paused"
    if cmd == "block-job-cancel" and user_paused:
        return "The block job for device 's0' is currently paused"
    if status not in VERB_OK[verb]:
        return ("Job 's0' in state '%s' cannot accept command verb '%s'"
                % (status, verb))
    if verb == "pause" and user_paused:
        return "Job is already paused"
    if verb == "complete":
        return "The active block job 's0' cannot be completed"
    return None


def check_wrong_verbs(c, status, user_paused=False):
    """Sends every job command that must fail for s0 in `status` and checks
    QEMU's text; returns how many were sent."""
    n = 0
    for cmd, verb, args in VERB_COMMANDS:
        want = verb_error(cmd, verb, status, user_paused)
        if want is not None:
            c.err(cmd, args, desc=want)
            n += 1
    return n


def check_unknown_job(c):
    for cmd, verb, args in VERB_COMMANDS:
        args = {k: ("nojob" if k in ("device", "id") else v)
                for k, v in args.items()}
        if cmd.startswith("block-job-"):
            c.err(cmd, args, cls="DeviceNotActive",
                  desc="Block job 'nojob' not found")
        else:
            c.err(cmd, args, desc="Job not found")


# ---- block-stream validation (reference §3.2) ---------------------------------

# (arguments, error text) on the chain of add_chain(); no job is left.
VALIDATION = [
    ({"device": "nodev", "job-id": "s1"},
     "Cannot find device='nodev' nor node-name='nodev'"),
    ({"device": "top", "job-id": "s1", "base": "x", "base-node": "base"},
     "'base' and 'base-node' cannot be specified at the same time"),
    ({"device": "top", "job-id": "s1", "base": "x", "bottom": "mid"},
     "'base' and 'bottom' cannot be specified at the same time"),
    ({"device": "top", "job-id": "s1", "base-node": "base", "bottom": "mid"},
     "'bottom' and 'base-node' cannot be specified at the same time"),
    ({"device": "top", "job-id": "s1", "base-node": "nonexistent"},
     "Cannot find device='' nor node-name='nonexistent'"),
    ({"device": "top", "job-id": "s1", "bottom": "nonexistent"},
     "Cannot find device='' nor node-name='nonexistent'"),
    ({"device": "top", "job-id": "s1", "base": "/nonexistent.img"},
     "Can't find '/nonexistent.img' in the backing chain"),
    ({"device": "top", "job-id": "s1", "base-node": "top"},
     "Node 'top' is not a backing image of 'top'"),
    ({"device": "mid", "job-id": "s1", "base-node": "top"},
     "Node 'top' is not a backing image of 'mid'"),
    ({"device": "top", "job-id": "s1", "backing-file": "x"},
     "backing file specified, but streaming the entire chain"),
    ({"device": "top", "job-id": "s1", "backing-file": "x", "bottom": "mid"},
     "backing file specified, but streaming the entire chain"),
    ({"device": "top", "job-id": "1j"}, "Invalid job ID '1j'"),
    ({"device": "top"}, "Invalid job ID ''"),
    ({"device": "top", "job-id": "s1", "filter-node-name": "top"},
     "Could not create node: Duplicate nodes with node-name='top'"),
    ({"device": "top", "job-id": "s1", "filter-node-name": "#bad"},
     "Could not create node: Invalid node-name: '#bad'"),
    ({"device": "top", "job-id": "s1", "filter-node-name": "f" * 32},
     "Could not create node: Node name too long"),
    # The filter is made before the job: its name is checked first.
    ({"device": "top", "job-id": "1j", "filter-node-name": "mid"},
     "Could not create node: Duplicate nodes with node-name='mid'"),
]
