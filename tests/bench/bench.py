#!/usr/bin/env python3
"""make bench: blockjobd side by side with qemu-storage-daemon (issue 6).

The same QMP work runs on blockjobd and on qemu-storage-daemon in
alternating rounds of one run (the order rotates every round, so a drift of
the machine during the run hits every system alike), together with fio's
copy of the same amount of data, which is the disk's ceiling. Medians with
min-max go to tests/bench/results.md, raw figures to results.json and a
gnuplot chart to throughput.png; the README's "Performance" section gets the
latest table and chart.

Parts (--only):
  stream   block-stream of one qcow2 chain base <- mid <- top (base full of
           random data, mid with 5 % of the clusters, top empty); job time,
           durable time (job + blockdev-del, which flushes), MiB/s, daemon CPU
           seconds, peak RSS; qsd with its defaults and with aio=native,
           cache.direct=on; fio ceiling; every result checked by
           qemu-img check and qemu-img compare against the original chain.
  multi    8 streams on 8 chains at once: aggregate durable throughput, with
           its own fio ceiling.
  qmp      QMP round trip of query-block-jobs (1 and 100 clients, 1 KiB id),
           event fan-out to 32 and 1000 clients, start-up time to the
           greeting, idle RSS and RSS per idle client.

python3 stdlib only. Data lives under --dir (ext4, not tmpfs) and is
removed at the end unless --keep.
"""
import argparse
import json
import os
import platform
import random
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from qmp import QMP  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
CLUSTER = 64 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")



def stream_depth():
    """The stream job's queue depth, read from jobs/stream.h."""
    import re as _re
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "..", "..", "jobs", "stream.h")
    with open(path) as f:
        m = _re.search(r"#define STREAM_QUEUE_DEPTH\s+(\d+)", f.read())
    return int(m.group(1)) if m else 16

def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_size(s):
    s = s.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def human(n):
    for unit, f in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= f and n % (f // 1024 or 1) == 0:
            v = n / f
            return ("%g %s" % (v, unit))
    return "%d B" % n


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)


# ---- /proc figures -------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of the whole process (every thread, live or gone)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def drop_caches(state):
    """Writes back and drops the page cache; remembers once if not allowed."""
    os.sync()
    if state.get("drop_caches") is False:
        return False
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        state["drop_caches"] = True
        return True
    except OSError as e:
        if state.get("drop_caches") is None:
            log("note: cannot drop the page cache (%s); rounds run warm" % e)
        state["drop_caches"] = False
        return False


def disk_of(path):
    """Name of the whole block device holding path (for /proc/diskstats),
    or None."""
    st = os.stat(path)
    try:
        real = os.path.realpath("/sys/dev/block/%d:%d" % (
            os.major(st.st_dev), os.minor(st.st_dev)))
    except OSError:
        return None
    if os.path.exists(os.path.join(real, "partition")):
        real = os.path.dirname(real)
    name = os.path.basename(real)
    return name if os.path.exists("/sys/block/" + name) else None


def disk_counters(dev):
    """Reads, read sectors, writes, write sectors, busy ms and weighted
    in-flight ms of one device (/proc/diskstats), or None."""
    if not dev:
        return None
    with open("/proc/diskstats") as f:
        for line in f:
            x = line.split()
            if x[2] == dev:
                return {"rd": int(x[3]), "rd_sec": int(x[5]),
                        "wr": int(x[7]), "wr_sec": int(x[9]),
                        "busy_ms": int(x[12]), "wait_ms": int(x[13])}
    return None


def disk_figures(a, b, secs):
    """What the device saw between two disk_counters() readings: average
    request sizes, share of the time it had requests, and the average
    number in flight (Little's law on the weighted time)."""
    if not a or not b or secs <= 0:
        return {}
    d = {k: b[k] - a[k] for k in a}
    return {"dev_read_kib": d["rd_sec"] / 2 / d["rd"] if d["rd"] else 0,
            "dev_write_kib": d["wr_sec"] / 2 / d["wr"] if d["wr"] else 0,
            "dev_busy_pct": 100.0 * d["busy_ms"] / 1000 / secs,
            "dev_inflight": d["wait_ms"] / 1000 / secs,
            "dev_mib": (d["rd_sec"] + d["wr_sec"]) / 2048}


# ---- images --------------------------------------------------------------

def write_random_file(path, size, chunk=4 * MiB):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


def make_chain(d, name, size, rng):
    """base (random data everywhere) <- mid (random data in 5 % of the
    clusters) <- top (empty). Returns dict of paths."""
    base = os.path.join(d, name + "-base.qcow2")
    mid = os.path.join(d, name + "-mid.qcow2")
    top = os.path.join(d, name + "-top.qcow2")
    raw = os.path.join(d, name + "-base.raw")
    write_random_file(raw, size)
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, base)
    os.unlink(raw)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
        mid, str(size))
    nclusters = size // CLUSTER
    chosen = sorted(rng.sample(range(nclusters), max(1, nclusters // 20)))
    # qemu-io fills a write from a source file: one file per cluster keeps
    # the data non-repeating; batches keep the command line short.
    tmp = tempfile.mkdtemp(dir=d, prefix="mid-")
    batch = []

    def flush_batch():
        if batch:
            cmd = ["qemu-io", "-f", "qcow2"]
            for c, p in batch:
                cmd += ["-c", "write -q -s %s %d %d" % (p, c * CLUSTER,
                                                        CLUSTER)]
            run(*(cmd + [mid]))
            for _, p in batch:
                os.unlink(p)
            batch.clear()
    for c in chosen:
        p = os.path.join(tmp, "c%d" % c)
        with open(p, "wb") as f:
            f.write(os.urandom(CLUSTER))
        batch.append((c, p))
        if len(batch) >= 400:
            flush_batch()
    flush_batch()
    os.rmdir(tmp)
    return {"base": base, "mid": mid, "top": top, "size": size,
            "mid_clusters": len(chosen)}


def fresh_top(chain):
    if os.path.exists(chain["top"]):
        os.unlink(chain["top"])
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", chain["mid"], "-F",
        "qcow2", chain["top"], str(chain["size"]))


def verify(chain):
    """The streamed top must be a clean standalone image with the chain's
    content; returns None or a failure text."""
    r = subprocess.run(["qemu-img", "check", "-f", "qcow2", chain["top"]],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        return "qemu-img check: " + r.stdout.decode(errors="replace")[-400:]
    info = json.loads(subprocess.check_output(
        ["qemu-img", "info", "--output=json", chain["top"]]))
    if "backing-filename" in info:
        return "top still has a backing file: " + info["backing-filename"]
    r = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                        chain["top"], chain["mid"]],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        return "qemu-img compare: " + r.stdout.decode(errors="replace")[-400:]
    return None


# ---- daemons -------------------------------------------------------------

def wait_connect(path, proc, timeout=30.0):
    """Connects as soon as the socket answers; returns the socket."""
    if isinstance(proc, Proc):
        proc.wait_ready()
        proc = proc.proc
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if proc.poll() is not None:
                raise RuntimeError("daemon exited with %d" % proc.returncode)
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not listen on " + path)
            time.sleep(0.0002)


class Proc:
    """A blockjobd or qemu-storage-daemon with `monitors` QMP sockets
    (blockjobd: one socket, any number of clients; qsd: one client per
    monitor)."""

    def __init__(self, kind, workdir, binary, monitors=1, extra=()):
        self.kind = kind
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.logpath = os.path.join(workdir, kind + ".log")
        self.logf = open(self.logpath, "wb")
        if kind == "blockjobd":
            self.socks = [os.path.join(workdir, "bjd.sock")]
            cmd = [binary, "--socket", self.socks[0]] + list(extra)
        else:
            self.socks = [os.path.join(workdir, "qsd%d.sock" % i)
                          for i in range(monitors)]
            cmd = ["qemu-storage-daemon"]
            for i, p in enumerate(self.socks):
                cmd += ["--chardev",
                        "socket,path=%s,server=on,wait=off,id=c%d" % (p, i),
                        "--monitor", "chardev=c%d" % i]
            self.pidfile = os.path.join(workdir, "qsd.pid")
            if os.path.exists(self.pidfile):
                os.unlink(self.pidfile)
            cmd += ["--pidfile", self.pidfile] + list(extra)
        for p in self.socks:
            if os.path.exists(p):
                os.unlink(p)
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf)
        self.pid = self.proc.pid

    def wait_ready(self, timeout=30.0):
        """qsd: a client that connects before the monitor is set up may
        never get its greeting; qsd writes the pidfile after start-up."""
        if self.kind == "blockjobd":
            return
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.pidfile):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qsd did not start: " + self.logtext())
            time.sleep(0.0002)

    def sock_for(self, i):
        return self.socks[0] if self.kind == "blockjobd" else self.socks[i]

    def connect(self, i=0, negotiate=True):
        c = SockQMP(wait_connect(self.sock_for(i), self))
        if negotiate:
            c.negotiate()
        return c

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()

    def logtext(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")[-2000:]


class SockQMP(QMP):
    """tests/qmp.py's client over a socket that is already connected (qsd's
    chardev serves one connection at a time: probing it and connecting
    again races with its reset of the monitor)."""

    def __init__(self, sock):  # pylint: disable=super-init-not-called
        self.s = sock
        self.buf = b""
        self.events = []
        self.lines = []
        self.greeting = self.recv()


SYSTEMS = {
    # name: (process kind, node options)
    "blockjobd": ("blockjobd", "default"),
    "qsd": ("qsd", "default"),
    "qsd-native": ("qsd", "native"),
}
# --variant NAME=PATH: more blockjobd binaries streamed in the same rounds
# (for measuring a tuning choice side by side); stream parts only.
VARIANTS = {}
# Extra block-stream arguments per system (--variant NAME=PATH,JSON), e.g.
# the x-queue-depth / x-chunk-size tuning knobs.
STREAM_ARGS = {}


def add_chain(c, chain, prefix, opts):
    def node(name, path, backing=None):
        a = {"driver": "qcow2", "node-name": prefix + name,
             "file": {"driver": "file", "filename": path}}
        if opts == "native":
            a["cache"] = {"direct": True}
            a["file"]["cache"] = {"direct": True}
            a["file"]["aio"] = "native"
        if backing:
            a["backing"] = prefix + backing
        c.ok("blockdev-add", a)
    node("base", chain["base"])
    node("mid", chain["mid"], "base")
    node("top", chain["top"], "mid")


def stream_round(system, chains, workdir, binary, state):
    """One daemon, len(chains) streams at once. Returns a dict of figures
    or {'error': text}."""
    kind, opts = SYSTEMS[system]
    binary = VARIANTS.get(system, binary)
    for ch in chains:
        fresh_top(ch)
    dropped = drop_caches(state)
    p = Proc(kind, os.path.join(workdir, "run-" + system), binary)
    res = {"system": system, "cache_dropped": dropped}
    try:
        c = p.connect()
        for i, ch in enumerate(chains):
            add_chain(c, ch, "c%d-" % i, opts)
        total = sum(ch["size"] for ch in chains)
        timeout = max(600.0, total / MiB)  # ≥ 1 MiB/s or fail
        cpu0 = cpu_seconds(p.pid)
        disk0 = disk_counters(state.get("disk"))
        t0 = time.perf_counter()
        for i in range(len(chains)):
            a = {"job-id": "j%d" % i, "device": "c%d-top" % i}
            a.update(STREAM_ARGS.get(system, {}))
            r = c.cmd("block-stream", a)
            if "return" not in r:
                raise RuntimeError("block-stream: %r" % r)
        pending = set("j%d" % i for i in range(len(chains)))
        gone = set()
        t_job = None
        while pending or gone != set("j%d" % i for i in range(len(chains))):
            m = c.recv(timeout)
            if m.get("event") == "BLOCK_JOB_COMPLETED":
                d = m["data"]
                if "error" in d or d.get("offset") != d.get("len"):
                    raise RuntimeError("stream failed: %r" % d)
                pending.discard(d["device"])
                if not pending:
                    t_job = time.perf_counter()
            elif m.get("event") == "BLOCK_JOB_CANCELLED":
                raise RuntimeError("stream cancelled: %r" % m["data"])
            elif (m.get("event") == "JOB_STATUS_CHANGE"
                  and m["data"]["status"] == "null"):
                gone.add(m["data"]["id"])
        for i in range(len(chains)):
            for n in ("top", "mid", "base"):
                c.ok("blockdev-del", {"node-name": "c%d-%s" % (i, n)})
        t_dur = time.perf_counter()
        res.update(disk_figures(disk0, disk_counters(state.get("disk")),
                                t_dur - t0))
        cpu1 = cpu_seconds(p.pid)
        res.update(job_s=t_job - t0, durable_s=t_dur - t0,
                   mibps=total / MiB / (t_dur - t0),
                   cpu_s=cpu1 - cpu0, cpu_s_per_gib=(cpu1 - cpu0) / (
                       total / GiB),
                   peak_rss_kib=status_kib(p.pid, "VmHWM"))
        c.close()
    except Exception as e:  # report, go on with the other systems
        res["error"] = "%s\n%s" % (e, p.logtext())
    finally:
        p.stop()
    if "error" not in res:
        for ch in chains:
            bad = verify(ch)
            if bad:
                res["error"] = "verify %s: %s" % (ch["top"], bad)
                break
        res["verified"] = "error" not in res
    return res


def fio_round(chains, workdir, state):
    """fio copies the same amount at once: one job reads the bases, another
    writes new files (libaio, O_DIRECT, 1 MiB, depth 16 each, fsync at the
    end of the write job)."""
    outs = [os.path.join(workdir, "fio-out%d" % i) for i in range(len(chains))]
    for o in outs:
        if os.path.exists(o):
            os.unlink(o)
    total = sum(ch["size"] for ch in chains)
    drop_caches(state)
    cmd = ["fio", "--output-format=json", "--ioengine=libaio", "--direct=1",
           "--bs=1M", "--iodepth=16", "--size=%d" % total,
           "--name=read", "--rw=read",
           "--filename=" + ":".join(ch["base"].replace(":", "\\:")
                                    for ch in chains),
           "--name=write", "--rw=write", "--end_fsync=1",
           "--filename=" + ":".join(outs)]
    disk0 = disk_counters(state.get("disk"))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t = time.perf_counter() - t0
    # (over fio's whole wall time, start-up included: busy % is low-biased)
    dev = disk_figures(disk0, disk_counters(state.get("disk")), t)
    for o in outs:
        if os.path.exists(o):
            os.unlink(o)
    if r.returncode != 0:
        return {"system": "fio", "error": r.stderr.decode(errors="replace")}
    jobs = {j["jobname"]: j for j in json.loads(r.stdout)["jobs"]}
    # fio's own run times (the write job's includes its closing fsync): the
    # wall time of the fio process adds about 0.5 s of its start-up here.
    rd = jobs["read"]["read"]["runtime"] / 1000
    wr = jobs["write"]["write"]["runtime"] / 1000
    copy = max(rd, wr)
    return {"system": "fio", "durable_s": copy, "job_s": copy,
            "mibps": total / MiB / copy, "read_runtime_s": rd,
            "write_runtime_s": wr, "fio_wall_s": t, **dev}


# ---- QMP latency, fan-out, start-up, RSS --------------------------------

def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


class Raw:
    """A minimal QMP connection for timing: raw bytes in, lines out."""

    def __init__(self, sock):
        self.s = sock
        self.buf = b""
        self.line()  # greeting
        self.s.sendall(b'{"execute":"qmp_capabilities"}')
        while b'"return"' not in self.line():
            pass

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def close(self):
        self.s.close()


def rtt(conn, msg, n):
    out = []
    pc = time.perf_counter_ns
    for _ in range(n):
        t0 = pc()
        conn.s.sendall(msg)
        while b'"return"' not in conn.line():
            pass
        out.append((pc() - t0) / 1e6)
    return out


def rtt_stats(xs):
    return {"p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99), "n": len(xs)}


def small_chain(d, data):
    """Every resume of a job held by speed=1 copies one more chunk (as in
    QEMU), so the base holds enough data for all trials."""
    base = os.path.join(d, "q-base.qcow2")
    top = os.path.join(d, "q-top.qcow2")
    for p in (base, top):
        if os.path.exists(p):
            os.unlink(p)
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(data))
    run("qemu-io", "-f", "qcow2", "-c", "write -q -P 0x5a 0 %d" % data, base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
        top)
    return base, top


def fanout(system, n, trials, workdir, binary):
    """A stream held by speed=1 is paused and resumed; each
    JOB_STATUS_CHANGE is timed from its own timestamp to its arrival at the
    last of n clients. The client loop runs on the same 2 vCPUs, so the
    figure includes this script's reading of n sockets."""
    kind = SYSTEMS[system][0]
    p = Proc(kind, os.path.join(workdir, "fan-%s-%d" % (system, n)), binary,
             monitors=n)
    res = {"system": system, "clients": n}
    conns = []
    try:
        for i in range(n):
            conns.append(Raw(wait_connect(p.sock_for(i), p)))
        base, top = small_chain(p.workdir, max(64, trials * 4 + 16) * MiB)
        ctl = conns[0]

        def cmd(obj):
            ctl.s.sendall(json.dumps(obj).encode())
        cmd({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "b",
            "file": {"driver": "file", "filename": base}}})
        cmd({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "t", "backing": "b",
            "file": {"driver": "file", "filename": top}}})
        cmd({"execute": "block-stream", "arguments": {
            "job-id": "fj", "device": "t", "speed": 1}})
        ep = select.epoll()
        fdmap = {}
        for c in conns:
            c.s.setblocking(False)
            ep.register(c.s.fileno(), select.EPOLLIN)
            fdmap[c.s.fileno()] = c

        def wait_status(status, timeout=30.0):
            """Returns (event timestamp, last arrival) of the status. Lines
            are matched as bytes and one of them parsed, so that reading
            1000 sockets costs this script as little as possible."""
            left = set(fdmap)
            t_ev = None
            last = None
            want = ('"status": "%s"' % status).encode()
            deadline = time.monotonic() + timeout
            # lines already buffered count as arrived now
            while left:
                if time.monotonic() > deadline:
                    raise RuntimeError("fan-out: %d clients did not get %s"
                                       % (len(left), status))
                evs = ep.poll(1.0)
                now = time.time()
                for fd, _ in evs:
                    c = fdmap[fd]
                    try:
                        while True:
                            chunk = c.s.recv(262144)
                            if not chunk:
                                raise RuntimeError("client closed")
                            c.buf += chunk
                    except BlockingIOError:
                        pass
                    if fd not in left or want not in c.buf:
                        c.buf = c.buf[c.buf.rfind(b"\n") + 1:]
                        continue
                    for line in c.buf.split(b"\n"):
                        if b"JOB_STATUS_CHANGE" in line and want in line:
                            left.discard(fd)
                            last = now
                            if t_ev is None:
                                ts = json.loads(line)["timestamp"]
                                t_ev = (ts["seconds"]
                                        + ts["microseconds"] / 1e6)
                            break
                    c.buf = c.buf[c.buf.rfind(b"\n") + 1:]
            return t_ev, last

        wait_status("running")
        lat = []
        for i in range(trials):
            cmd({"execute": "block-job-pause", "arguments": {"device": "fj"}})
            te, tl = wait_status("paused")
            lat.append((tl - te) * 1e3)
            cmd({"execute": "block-job-resume", "arguments": {"device": "fj"}})
            te, tl = wait_status("running")
            lat.append((tl - te) * 1e3)
        res.update(p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), n=len(lat))
    except Exception as e:
        res["error"] = "%s\n%s" % (e, p.logtext())
    finally:
        for c in conns:
            c.close()
        p.stop()
    return res


def startup(system, trials, workdir, binary):
    kind = SYSTEMS[system][0]
    out = []
    idle = []
    for _ in range(trials):
        p = Proc(kind, os.path.join(workdir, "start-" + system), binary)
        try:
            s = wait_connect(p.sock_for(0), p)
            buf = b""
            while b"\n" not in buf:
                buf += s.recv(4096)
            out.append((time.perf_counter() - p.t_spawn) * 1e3)
            # idle: one client negotiated and left; nothing else happened
            c = SockQMP.__new__(SockQMP)
            c.s, c.buf, c.events, c.lines = s, buf.split(b"\n", 1)[1], [], []
            c.negotiate()
            c.close()
            time.sleep(0.05)
            idle.append(status_kib(p.pid, "VmRSS"))
        finally:
            p.stop()
    return {"system": system, "greeting_p50_ms": pct(out, 50),
            "greeting_min_ms": min(out), "greeting_max_ms": max(out),
            "idle_rss_kib": statistics.median(idle)}


def qmp_part(systems, args, workdir, binary, state):
    res = {"rtt": {}, "fanout": [], "startup": {}, "per_client": {}}
    msg = b'{"execute":"query-block-jobs","id":1}'
    long_msg = ('{"execute":"query-block-jobs","id":"%s"}'
                % ("x" * 1024)).encode()
    for system in systems:
        if system not in ("blockjobd", "qsd"):
            continue  # the monitor does not depend on the nodes' options
        kind = SYSTEMS[system][0]
        r = {}
        p = Proc(kind, os.path.join(workdir, "rtt-" + system), binary)
        try:
            c = Raw(wait_connect(p.sock_for(0), p))
            rtt(c, msg, 200)  # warm up
            r["1_client"] = rtt_stats(rtt(c, msg, args.qmp_iters))
            r["1_client_1k_id"] = rtt_stats(rtt(c, long_msg, args.qmp_iters))
            if kind == "blockjobd":
                rss0 = status_kib(p.pid, "VmRSS")
                others = [Raw(wait_connect(p.sock_for(0), p))
                          for _ in range(99)]
                r["100_clients"] = rtt_stats(rtt(c, msg, args.qmp_iters))
                more = [Raw(wait_connect(p.sock_for(0), p))
                          for _ in range(900)]
                time.sleep(0.05)
                rss1 = status_kib(p.pid, "VmRSS")
                res["per_client"][system] = {
                    "clients": 999, "rss_before_kib": rss0,
                    "rss_after_kib": rss1,
                    "kib_per_client": (rss1 - rss0) / 999}
                for o in others + more:
                    o.close()
            else:
                r["100_clients"] = {"n/a": "qsd serves one client per "
                                    "monitor"}
            c.close()
        except Exception as e:
            r["error"] = "%s\n%s" % (e, p.logtext())
        finally:
            p.stop()
        res["rtt"][system] = r
        res["startup"][system] = startup(system, args.startup_trials,
                                         workdir, binary)
    for n in (32, 1000):
        for system in systems:
            if system not in ("blockjobd", "qsd"):
                continue
            if system == "qsd" and n > args.qsd_max_monitors:
                res["fanout"].append({"system": system, "clients": n,
                                      "n/a": "qsd needs one monitor per "
                                      "client; > %d not run"
                                      % args.qsd_max_monitors})
                continue
            log("  fan-out %s to %d clients" % (system, n))
            res["fanout"].append(fanout(system, n, args.fanout_trials,
                                        workdir, binary))
    return res


# ---- report --------------------------------------------------------------

def summary(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals),
            "max": max(vals), "n": len(vals)}


def fmt(s, f="%.2f"):
    if not s:
        return "–"
    return (f + " (" + f + "–" + f + ")") % (s["median"], s["min"], s["max"])


def aggregate(rounds):
    out = {}
    for name in sorted({r["system"] for r in rounds}):
        rs = [r for r in rounds if r["system"] == name]
        ok = [r for r in rs if "error" not in r]
        out[name] = {k: summary([r.get(k) for r in ok]) for k in
                     ("job_s", "durable_s", "mibps", "cpu_s",
                      "cpu_s_per_gib", "peak_rss_kib", "dev_read_kib",
                      "dev_write_kib", "dev_busy_pct", "dev_inflight")}
        out[name]["rounds"] = len(rs)
        out[name]["failed"] = len(rs) - len(ok)
    return out


def ratio(agg, a, b, key="durable_s"):
    try:
        return agg[a][key]["median"] / agg[b][key]["median"]
    except (KeyError, TypeError):
        return None


def stream_table(agg, title, total):
    lines = ["| %s | job s | durable s | MiB/s (durable) | CPU s | "
             "CPU s/GiB | peak RSS MiB | rounds ok |" % title,
             "|---|---|---|---|---|---|---|---|"]
    for name in (["blockjobd"] + sorted(VARIANTS) +
                 ["qsd", "qsd-native", "fio"]):
        if name not in agg:
            continue
        a = agg[name]
        rss = a.get("peak_rss_kib")
        rss = ({k: (v / 1024 if k != "n" else v) for k, v in rss.items()}
               if rss else None)
        label = {"qsd": "qemu-storage-daemon (defaults)",
                 "qsd-native": "qemu-storage-daemon (aio=native, "
                 "cache.direct=on)",
                 "fio": "fio ceiling (copy at depth 16)"}.get(name, name)
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %d/%d |" % (
            label, fmt(a["job_s"]), fmt(a["durable_s"]),
            fmt(a["mibps"], "%.0f"),
            fmt(a["cpu_s"]) if name != "fio" else "–",
            fmt(a["cpu_s_per_gib"]) if name != "fio" else "–",
            fmt(rss, "%.1f") if name != "fio" else "–",
            a["rounds"] - a["failed"], a["rounds"]))
    return lines


def device_table(agg):
    """The device's side of the same rounds (/proc/diskstats deltas from
    the block-stream command to the end of blockdev-del)."""
    lines = ["| system | read request KiB | write request KiB | device busy % "
             "| requests in flight |", "|---|---|---|---|---|"]
    for name in (["blockjobd"] + sorted(VARIANTS) +
                 ["qsd", "qsd-native", "fio"]):
        a = agg.get(name)
        if not a or not a.get("dev_busy_pct"):
            continue
        lines.append("| %s | %s | %s | %s | %s |" % (
            name, fmt(a["dev_read_kib"], "%.0f"),
            fmt(a["dev_write_kib"], "%.0f"), fmt(a["dev_busy_pct"], "%.0f"),
            fmt(a["dev_inflight"], "%.1f")))
    return lines if len(lines) > 2 else []


def target_lines(res):
    L = []

    def t(desc, val, limit, ok_fn, unit=""):
        if val is None:
            L.append("| %s | – | %s | not measured |" % (desc, limit))
        else:
            L.append("| %s | %s%s | %s | %s |" % (
                desc, ("%.3g" % val), unit, limit,
                "**met**" if ok_fn(val) else "not met"))
    for part, name in (("stream", "1 stream"), ("multi", "8 streams")):
        agg = res.get(part, {}).get("summary")
        if not agg:
            continue
        t("%s: durable time / fio ceiling" % name,
          ratio(agg, "blockjobd", "fio"), "≤ 1.11", lambda v: v <= 1.11)
        t("%s: durable time / qsd native" % name,
          ratio(agg, "blockjobd", "qsd-native"), "≤ 0.45",
          lambda v: v <= 0.45)
        t("%s: durable time / qsd default" % name,
          ratio(agg, "blockjobd", "qsd"), "< 1", lambda v: v < 1)
        if part == "stream":
            b = agg.get("blockjobd", {})
            v = b.get("cpu_s_per_gib")
            t("CPU per GiB streamed", v and v["median"], "≤ 0.25 s",
              lambda v: v <= 0.25, " s")
            idle = res.get("qmp", {}).get("startup", {}).get(
                "blockjobd", {}).get("idle_rss_kib")
            pk = b.get("peak_rss_kib")
            if pk and idle:
                depth = stream_depth()
                inflight = depth * 512  # KiB: requests of 512 KiB
                t("peak RSS − idle during a stream", (pk["median"] - idle)
                  / 1024, "≤ %.0f MiB (%d × 512 KiB + 2 MiB)" % (
                      inflight / 1024 + 2, depth),
                  lambda v: v <= inflight / 1024 + 2, " MiB")
    q = res.get("qmp")
    if q:
        st = q["startup"].get("blockjobd", {})
        v = st.get("idle_rss_kib")
        t("idle RSS", v and v / 1024, "≤ 2 MiB", lambda v: v <= 2, " MiB")
        v = q["per_client"].get("blockjobd", {}).get("kib_per_client")
        t("RSS per idle client", v, "≤ 64 KiB", lambda v: v <= 64, " KiB")
        r = q["rtt"].get("blockjobd", {})
        v = r.get("1_client", {}).get("p50_ms")
        t("QMP p50, 1 client", v, "≤ 0.1 ms", lambda v: v <= 0.1, " ms")
        v = r.get("1_client", {}).get("p99_ms")
        t("QMP p99, 1 client", v, "≤ 0.3 ms", lambda v: v <= 0.3, " ms")
        a = r.get("1_client_1k_id", {}).get("p50_ms")
        b = r.get("1_client", {}).get("p50_ms")
        t("QMP p50 1 KiB id / short", a and b and a / b, "≤ 1 (+noise)",
          lambda v: v <= 1.1)
        for f in q["fanout"]:
            if f["system"] != "blockjobd":
                continue
            lim = 2 if f["clients"] <= 32 else 20
            t("fan-out p99 to %d clients" % f["clients"], f.get("p99_ms"),
              "≤ %d ms" % lim, lambda v, lim=lim: v <= lim, " ms")
        v = st.get("greeting_p50_ms")
        t("start-up to greeting (p50)", v, "≤ 5 ms", lambda v: v <= 5,
          " ms")
    return L


def render_md(res):
    cfg = res["config"]
    L = ["# blockjobd benchmark results", "",
         "Generated by `make bench` (tests/bench/bench.py) on %s; %s, "
         "%d vCPUs, kernel %s; data in %s (%s). Rounds alternate between "
         "the systems (order rotated every round). Medians with "
         "(min–max) over %d rounds. Page cache dropped before each round: "
         "%s." % (res["date"], cfg["cpu"], cfg["ncpu"], cfg["kernel"],
                  cfg["dir"], cfg["fstype"], cfg["rounds"],
                  {True: "yes", False: "no (not permitted)",
                   None: "n/a"}[res.get("drop_caches")]), ""]
    if "stream" in res:
        s = res["stream"]
        L += ["## block-stream of one chain",
              "", "%s virtual disk: base full of random data, mid with "
              "%d clusters (5 %%), empty top; each result checked with "
              "`qemu-img check` and `qemu-img compare` against the original "
              "chain. Durable = job + `blockdev-del` of the chain (close "
              "flushes)." % (human(s["size"]), s["mid_clusters"]), ""]
        L += stream_table(s["summary"], "system", s["size"])
        L.append("")
        dev = device_table(s["summary"])
        if dev:
            L += ["What the disk saw in the same rounds (`/proc/diskstats` "
                  "of %s): average request sizes, the share of the time it "
                  "had requests, and their average number in flight." %
                  res["config"].get("disk"), ""] + dev + [""]
    if "multi" in res:
        s = res["multi"]
        L += ["## 8 streams on 8 chains at once", "",
              "%d chains of %s each (aggregate %s); MiB/s is the aggregate "
              "durable throughput." % (s["count"], human(s["size"]),
                                       human(s["count"] * s["size"])), ""]
        L += stream_table(s["summary"], "system", s["size"])
        L.append("")
    for part in ("stream", "multi"):
        errs = [r for r in res.get(part, {}).get("rounds", [])
                if "error" in r]
        if errs:
            L += ["Failed rounds (%s):" % part, ""]
            for r in errs:
                L.append("- %s: `%s`" % (r["system"], r["error"].splitlines()
                                         [0][:300]))
            L.append("")
    q = res.get("qmp")
    if q:
        L += ["## QMP", "",
              "| figure | blockjobd | qemu-storage-daemon |",
              "|---|---|---|"]

        def g(system, *keys):
            v = q
            for k in keys:
                v = v.get(k, {}) if isinstance(v, dict) else {}
            return v if v != {} else None

        def ms(v):
            return "–" if v is None else "%.3f ms" % v
        for label, key in (("query-block-jobs, 1 client", "1_client"),
                           ("query-block-jobs, 1 KiB id", "1_client_1k_id"),
                           ("query-block-jobs, 100 clients", "100_clients")):
            cells = []
            for system in ("blockjobd", "qsd"):
                r = g(system) and q["rtt"].get(system, {}).get(key, {})
                if not r:
                    cells.append("–")
                elif "n/a" in r:
                    cells.append("n/a (one client per monitor)")
                else:
                    cells.append("p50 %s, p99 %s" % (ms(r["p50_ms"]),
                                                     ms(r["p99_ms"])))
            L.append("| %s | %s | %s |" % (label, cells[0], cells[1]))
        for n in (32, 1000):
            cells = []
            for system in ("blockjobd", "qsd"):
                f = [x for x in q["fanout"] if x["system"] == system
                     and x["clients"] == n]
                if not f:
                    cells.append("–")
                elif "n/a" in f[0]:
                    cells.append("n/a (" + f[0]["n/a"] + ")")
                elif "error" in f[0]:
                    cells.append("failed: " + f[0]["error"].splitlines()[0])
                else:
                    cells.append("p50 %s, p99 %s" % (ms(f[0]["p50_ms"]),
                                                     ms(f[0]["p99_ms"])))
            L.append("| event fan-out to the last of %d clients%s | %s | %s |"
                     % (n, " (qsd: %d monitors)" % n, cells[0], cells[1]))
        cells = []
        for system in ("blockjobd", "qsd"):
            st = q["startup"].get(system)
            cells.append("p50 %s (%.1f–%.1f)" % (
                ms(st["greeting_p50_ms"]), st["greeting_min_ms"],
                st["greeting_max_ms"]) if st else "–")
        L.append("| start-up to greeting | %s | %s |" % tuple(cells))
        cells = []
        for system in ("blockjobd", "qsd"):
            st = q["startup"].get(system)
            cells.append("%.2f MiB" % (st["idle_rss_kib"] / 1024)
                         if st else "–")
        L.append("| idle RSS | %s | %s |" % tuple(cells))
        pc = q["per_client"].get("blockjobd")
        L.append("| RSS per idle client | %s | n/a (one client per "
                 "monitor) |" % ("%.1f KiB (%d clients)" % (
                     pc["kib_per_client"], pc["clients"]) if pc else "–"))
        L += ["", "Round trips are measured by one python client over the "
              "UNIX socket (client overhead included, same for both); "
              "fan-out is the time from the event's own timestamp to its "
              "arrival at the last client, read by one python process on "
              "the same vCPUs.", ""]
    tl = target_lines(res)
    if tl:
        L += ["## Targets (issue 6), ratios from this run", "",
              "| target | measured | limit | |", "|---|---|---|---|"] + tl
        L.append("")
    if res.get("chart"):
        L += ["![durable throughput](throughput.png)", ""]
    return "\n".join(L)


def chart(res, out_png, workdir):
    rows = []
    for part in ("stream", "multi"):
        agg = res.get(part, {}).get("summary")
        if not agg:
            continue
        label = ("1 stream of %s" % human(res[part]["size"])
                 if part == "stream" else "%d streams of %s" % (
                     res[part]["count"], human(res[part]["size"])))
        rows.append((label, [agg.get(n, {}).get("mibps") for n in
                             ("blockjobd", "qsd", "qsd-native", "fio")]))
    if not rows or shutil.which("gnuplot") is None:
        return False
    dat = os.path.join(workdir, "chart.dat")
    with open(dat, "w") as f:
        for label, vals in rows:
            f.write('"%s"' % label)
            for v in vals:
                if v:
                    f.write(" %.1f %.1f %.1f" % (v["median"], v["min"],
                                                 v["max"]))
                else:
                    f.write(" 0 0 0")
            f.write("\n")
    gp = """
set terminal pngcairo size 900,480 noenhanced font ",10"
set output '%s'
set title 'Durable throughput (median, min-max), higher is better'
set ylabel 'MiB/s'
set style data histogram
set style histogram errorbars gap 2 lw 1
set style fill solid 0.8 border -1
set key outside right top
set yrange [0:*]
set grid ytics
plot '%s' using 2:3:4:xtic(1) title 'blockjobd', \\
     '' using 5:6:7 title 'qsd defaults', \\
     '' using 8:9:10 title 'qsd aio=native,direct', \\
     '' using 11:12:13 title 'fio ceiling'
""" % (out_png, dat)
    r = subprocess.run(["gnuplot"], input=gp.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        # pngcairo missing in some builds: fall back to the gd png terminal
        gp = gp.replace("pngcairo size 900,480 noenhanced font \",10\"",
                        "png size 900,480")
        r = subprocess.run(["gnuplot"], input=gp.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        log("gnuplot failed: " + r.stderr.decode(errors="replace"))
        return False
    return True


def update_readme(md, readme):
    with open(readme) as f:
        text = f.read()
    body = md.split("\n", 1)[1].replace("## ", "### ")
    body = body.replace("![durable throughput](throughput.png)",
                        "![durable throughput](tests/bench/throughput.png)")
    sec = ("## Performance\n\n`make bench` (see tests/bench/bench.py; "
           "`make bench BENCH_ARGS=\"--size 256M --rounds 3\"` for a shorter "
           "run) measures blockjobd beside qemu-storage-daemon 7.2 and fio. "
           "Latest results (tests/bench/results.md):\n" + body.rstrip()
           + "\n")
    start = text.find("\n## Performance\n")
    if start >= 0:
        nxt = text.find("\n## ", start + 1)
        text = text[:start + 1] + sec + (text[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + sec
    with open(readme, "w") as f:
        f.write(text)


# ---- main ----------------------------------------------------------------

def rounds_of(systems, nrounds, fn):
    out = []
    order = list(systems)
    for i in range(nrounds):
        k = i % len(order)
        for name in order[k:] + order[:k]:
            log("  round %d/%d: %s" % (i + 1, nrounds, name))
            r = fn(name)
            r["round"] = i + 1
            if "error" in r:
                log("    FAILED: " + r["error"].splitlines()[0][:300])
            else:
                log("    durable %.2f s (%.0f MiB/s)" % (r["durable_s"],
                                                         r["mibps"]))
            out.append(r)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G", help="virtual size of the "
                    "single-stream chain (default 1G)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--multi-size", default="256M",
                    help="size of each of the concurrent chains")
    ap.add_argument("--multi-count", type=int, default=8)
    ap.add_argument("--only", default="stream,multi,qmp",
                    help="comma list of parts: stream, multi, qmp")
    ap.add_argument("--systems", default="blockjobd,qsd,qsd-native",
                    help="comma list of blockjobd, qsd, qsd-native")
    ap.add_argument("--dir", default=os.path.join(ROOT, "build-bench"),
                    help="data directory (disk, not tmpfs)")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--keep", action="store_true",
                    help="keep the data directory")
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--qmp-iters", type=int, default=2000)
    ap.add_argument("--fanout-trials", type=int, default=100)
    ap.add_argument("--startup-trials", type=int, default=10)
    ap.add_argument("--qsd-max-monitors", type=int, default=1000)
    ap.add_argument("--blockjobd", default=os.environ.get(
        "BLOCKJOBD", os.path.join(ROOT, "blockjobd")))
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--variant", action="append", default=[],
                    metavar="NAME=PATH[,JSON]", help="another blockjobd "
                    "binary to stream in the same rounds (stream parts "
                    "only), optionally with extra block-stream arguments, "
                    "e.g. x=./blockjobd,{\"x-queue-depth\": 16}")
    args = ap.parse_args()

    for tool in ("qemu-img", "qemu-io", "qemu-storage-daemon", "fio"):
        if shutil.which(tool) is None:
            sys.exit("bench: %s is not installed (make bench installs it)"
                     % tool)
    binary = os.path.abspath(args.blockjobd)
    parts = args.only.split(",")
    systems = args.systems.split(",")
    for v in args.variant:
        name, path = v.split("=", 1)
        if "," in path:
            path, extra = path.split(",", 1)
            STREAM_ARGS[name] = json.loads(extra)
        SYSTEMS[name] = ("blockjobd", "default")
        VARIANTS[name] = os.path.abspath(path)
    stream_systems = systems + sorted(VARIANTS)
    size = parse_size(args.size)
    msize = parse_size(args.multi_size)
    if size % CLUSTER or msize % CLUSTER:
        sys.exit("bench: sizes must be multiples of 64 KiB")
    need = (size * 2.2 if "stream" in parts else 0) + (
        msize * args.multi_count * 2.2 if "multi" in parts else 0)
    os.makedirs(args.dir, exist_ok=True)
    st = os.statvfs(args.dir)
    if st.f_bavail * st.f_frsize < need + GiB:
        sys.exit("bench: %s has %s free, need %s" % (
            args.dir, human(st.f_bavail * st.f_frsize), human(int(need))))
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T",
                             args.dir], stdout=subprocess.PIPE).stdout
    fstype = fstype.decode().strip() or "?"
    if fstype == "tmpfs":
        log("warning: %s is tmpfs; disk figures will be meaningless"
            % args.dir)
    # 1000 clients need 1000 descriptors here and in the daemon
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    work = tempfile.mkdtemp(dir=args.dir, prefix="run-")
    rng = random.Random(args.seed)
    state = {"disk": disk_of(work)}
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
           "config": {"size": size, "rounds": args.rounds,
                      "disk": state["disk"],
                      "multi_size": msize, "multi_count": args.multi_count,
                      "systems": systems, "dir": args.dir, "fstype": fstype,
                      "cpu": cpu, "ncpu": os.cpu_count(),
                      "kernel": platform.release(),
                      "qsd": subprocess.run(
                          ["qemu-storage-daemon", "--version"],
                          stdout=subprocess.PIPE).stdout.decode()
                      .splitlines()[0],
                      "fio": subprocess.run(["fio", "--version"],
                                            stdout=subprocess.PIPE)
                      .stdout.decode().strip()}}
    try:
        if "stream" in parts:
            log("bench: making a %s chain in %s" % (human(size), work))
            ch = make_chain(work, "one", size, rng)
            log("bench: single stream, %d rounds" % args.rounds)
            rounds = rounds_of(stream_systems + ["fio"], args.rounds,
                               lambda n: fio_round([ch], work, state)
                               if n == "fio" else
                               stream_round(n, [ch], work, binary, state))
            res["stream"] = {"size": size, "mid_clusters": ch["mid_clusters"],
                             "rounds": rounds, "summary": aggregate(rounds)}
            for p in (ch["base"], ch["mid"], ch["top"]):
                os.unlink(p)
        if "multi" in parts:
            log("bench: making %d chains of %s" % (args.multi_count,
                                                    human(msize)))
            chs = [make_chain(work, "m%d" % i, msize, rng)
                   for i in range(args.multi_count)]
            log("bench: %d streams at once, %d rounds" % (args.multi_count,
                                                           args.rounds))
            rounds = rounds_of(stream_systems + ["fio"], args.rounds,
                               lambda n: fio_round(chs, work, state)
                               if n == "fio" else
                               stream_round(n, chs, work, binary, state))
            res["multi"] = {"size": msize, "count": args.multi_count,
                            "rounds": rounds, "summary": aggregate(rounds)}
        if "qmp" in parts:
            log("bench: QMP round trips, fan-out, start-up, RSS")
            res["qmp"] = qmp_part(systems, args, work, binary, state)
        res["drop_caches"] = state.get("drop_caches")
        os.makedirs(args.out, exist_ok=True)
        png = os.path.join(args.out, "throughput.png")
        res["chart"] = chart(res, png, work)
        md = render_md(res)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(md + "\n")
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(res, f, indent=1, sort_keys=True)
            f.write("\n")
        if not args.no_readme:
            update_readme(md, os.path.join(ROOT, "README.md"))
        print(md)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            try:
                os.rmdir(args.dir)
            except OSError:
                pass
    failed = sum(1 for part in ("stream", "multi")
                 for r in res.get(part, {}).get("rounds", [])
                 if "error" in r)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
