#!/usr/bin/env python3
"""Load and hostility (issue 7, item 4).

While 4 block-stream jobs run (restarted on fresh images as they finish),
  * LOAD_CLIENTS (default 1000) well-behaved clients poll query-block-jobs
    as fast as they can (one process, epoll);
  * hostile clients (another process) send garbage, stop reading while
    requesting big replies, disconnect in the middle of a message, and
    connect as a uid that --allow-uid does not admit;
  * one measured client (this process) polls query-block-jobs and records
    each round trip.
Asserted: the daemon stays up; every poller got replies all along (none
starved); the measured client's p99 latency stays below LOAD_P99_MAX
seconds; the daemon's VmRSS stays below LOAD_RSS_MAX_MIB; refused peers get
the access-denied error and no greeting; every job finishes without error
and its image equals the chain (qemu-img compare) and passes qemu-img check.

The run lasts LOAD_TIME seconds (default 10; `make soak` passes SOAK_TIME,
default 600)."""
import json
import multiprocessing as mp
import os
import random
import resource
import select
import signal
import socket
import sys
import threading
import time

from soak_util import (MiB, Daemon, cleanup, compare, flatten, percentile,
                       memory_bounds_apply,
                       qemu_check, require, rss_kib, run, under_valgrind,
                       workdir)
from qmp import skipped_part  # noqa: E402

require("qemu-img", "qemu-io")

N_CLIENTS = int(os.environ.get("LOAD_CLIENTS", "1000"))
DURATION = float(os.environ.get("LOAD_TIME", "10"))
P99_MAX = float(os.environ.get("LOAD_P99_MAX", "2.0"))
RSS_MAX_MIB = int(os.environ.get("LOAD_RSS_MAX_MIB", "256"))
JOBS = 4
PACE = float(os.environ.get("LOAD_HOSTILE_PACE", "0.005"))
IMG = 16 * MiB
SPEED = 8 * MiB  # about 2 s per job
NOBODY = 65534
QUERY = b'{"execute": "query-block-jobs"}\r\n'
NEG = b'{"execute": "qmp_capabilities"}\r\n'


def take_event(c, name, pred):
    """Like QMP.event() but removes only the matching event: the other
    jobs' events stay in the backlog."""
    deadline = time.monotonic() + 120
    while True:
        for i, e in enumerate(c.events):
            if e["event"] == name and pred(e["data"]):
                return c.events.pop(i)
        if time.monotonic() > deadline:
            raise AssertionError("timeout waiting for %s" % name)
        m = c.recv()
        if "event" not in m:
            raise AssertionError("unexpected reply %r" % m)
        c.events.append(m)


def connect_retry(path, timeout=10):
    """Connects; a full listen backlog (EAGAIN on UNIX sockets) is retried
    for up to `timeout` seconds. Returns (socket, retries)."""
    deadline = time.monotonic() + timeout
    retries = 0
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s, retries
        except (BlockingIOError, ConnectionRefusedError):
            s.close()
            retries += 1
            if time.monotonic() > deadline:
                raise
            select.select([], [], [], 0.005)


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


# ---- the 1000 pollers ---------------------------------------------------------

def pollers(sock_path, n, stop, out):
    """n clients in one epoll loop: greeting, negotiate, then
    query-block-jobs back to back. Reports per-client reply counts."""
    ep = select.epoll()
    conns = {}
    counts = [0] * n
    first_gap = [0.0] * n  # longest time a client waited for a reply
    errors = []
    for i in range(n):
        try:
            s, _ = connect_retry(sock_path, 30)
        except OSError as e:
            errors.append("client %d could not connect: %r" % (i, e))
            continue
        s.setblocking(False)
        conns[s.fileno()] = [s, i, b"", 0, time.monotonic()]  # state 0
        ep.register(s.fileno(), select.EPOLLIN)
    while not stop.is_set():
        for fd, ev in ep.poll(0.2):
            c = conns.get(fd)
            if c is None:
                continue
            s, i = c[0], c[1]
            try:
                data = s.recv(262144)
            except BlockingIOError:
                continue
            except OSError as e:
                data = b""
                errors.append("client %d: %s" % (i, e))
            if not data:
                errors.append("client %d: disconnected" % i)
                ep.unregister(fd)
                del conns[fd]
                continue
            c[2] += data
            while b"\n" in c[2]:
                line, c[2] = c[2].split(b"\n", 1)
                if line.startswith(b'{"event"') or \
                        line.startswith(b'{"timestamp"'):
                    continue
                now = time.monotonic()
                if c[3] == 0:  # greeting
                    c[3] = 1
                    s.sendall(NEG)
                elif c[3] == 1:  # negotiation reply
                    c[3] = 2
                    s.sendall(QUERY)
                else:
                    if not line.startswith(b'{"return"'):
                        errors.append("client %d: %r" % (i, line[:100]))
                    counts[i] += 1
                    first_gap[i] = max(first_gap[i], now - c[4])
                    s.sendall(QUERY)
                c[4] = now
    now = time.monotonic()
    for c in conns.values():
        first_gap[c[1]] = max(first_gap[c[1]], now - c[4])
        c[0].close()
    out.send({"counts": counts, "max_gap": max(first_gap) if n else 0,
              "errors": errors[:20], "n_errors": len(errors),
              "alive": len(conns)})


# ---- hostile clients --------------------------------------------------------

GARBAGE = [b"}\r\n", b"{{{{{{{{{{{{\r\n", b'{"execute": 42}\r\n',
           b"\x00\xff\xfe garbage \x80\r\n", b"[" * 5000 + b"\r\n",
           b'"' + b"a" * 100000, b'{"execute": "qmp_capabilities", '
           b'"arguments": {"x": [1, 2, {"y": null}]}}\r\n',
           b'{"execute": "query-block-jobs", "id": ' + b"9" * 400 + b"}\r\n"]


def denied_peer(sock_path):
    """In a child as uid nobody: must get the access-denied error and no
    greeting. Returns None or what went wrong."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        msg = b"ok"
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s, _ = connect_retry(sock_path)
            s.settimeout(30)
            got = b""
            while True:
                d = s.recv(4096)
                if not d:
                    break
                got += d
            if b"QMP" in got or b"Access denied" not in got:
                msg = b"denied peer got: " + got[:200]
        except Exception as e:  # report it to the parent
            msg = ("denied peer: %r" % e).encode()
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    msg = b""
    while True:
        d = os.read(r, 4096)
        if not d:
            break
        msg += d
    os.close(r)
    os.waitpid(pid, 0)
    return None if msg == b"ok" else msg.decode(errors="replace")


def hostile(sock_path, stop, out, deny):
    rnd = random.Random(5)
    stats = {"garbage": 0, "midway": 0, "stuck": 0, "denied": 0,
             "connect_retries": 0, "problems": []}
    kinds = os.environ.get("LOAD_HOSTILE", "garbage,midway,stuck,denied")
    kinds = [k for k in kinds.split(",") if k]
    stuck = []
    while not stop.is_set():
        if not kinds:
            stop.wait(0.1)
            continue
        kind = rnd.choice(kinds)
        try:
            if kind == "denied":
                if not deny:
                    continue
                p = denied_peer(sock_path)
                if p:
                    stats["problems"].append(p)
                stats["denied"] += 1
                continue
            s, n = connect_retry(sock_path)
            stats["connect_retries"] += n
            s.settimeout(10)
            if kind == "garbage":
                s.recv(4096)
                for _ in range(rnd.randint(1, 6)):
                    s.sendall(rnd.choice(GARBAGE))
                s.close()
            elif kind == "midway":
                s.recv(4096)
                s.sendall(NEG)
                s.sendall(b'{"execute": "query-block-jo')
                s.close()
            else:
                # negotiates, then floods requests and never reads (events
                # pile up too); at most 8 such clients at a time, the
                # oldest is dropped. (Bursts of expensive commands are
                # test_load_fairness.py's subject.)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(NEG)
                s.setblocking(False)
                big = QUERY * 512
                try:
                    for _ in range(16):
                        s.send(big)
                except (BlockingIOError, BrokenPipeError,
                        ConnectionResetError):
                    pass
                stuck.append(s)
                if len(stuck) > 8:
                    stuck.pop(0).close()
            stats[kind] += 1
        except (OSError, socket.timeout) as e:
            stats["problems"].append("%s: %r" % (kind, e))
        stop.wait(PACE)  # a steady stream of hostility, not a fork bomb
    for s in stuck:
        s.close()
    out.send(stats)


# ---- the measured client ---------------------------------------------------

def measure(daemon, stop, lat):
    """Polls query-block-jobs on its own connection, recording each round
    trip, until `stop` (a thread: it waits on the socket, not the GIL)."""
    c = daemon.connect()
    while not stop.is_set():
        t0 = time.monotonic()
        c.ok("query-block-jobs")
        lat.append(time.monotonic() - t0)
        c.events.clear()
    c.close()


# ---- jobs -------------------------------------------------------------------

class Slot:
    def __init__(self, d, k):
        self.k = k
        self.dir = os.path.join(d, "slot%d" % k)
        os.mkdir(self.dir)
        self.base = os.path.join(self.dir, "base.qcow2")
        self.top = os.path.join(self.dir, "top.qcow2")
        self.flat = os.path.join(self.dir, "flat.raw")
        run("qemu-img", "create", "-q", "-f", "qcow2", self.base, str(IMG))
        cmds = []
        for i in range(IMG // MiB):
            if i % 3 != 2:
                cmds += ["-c", "write -P %d %d 1M" % (k * 16 + i, i * MiB)]
        run("qemu-io", "-f", "qcow2", *cmds, self.base)
        self.cycle = 0
        self.job = None
        self.done = 0

    def start(self, c):
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", self.base,
            "-F", "qcow2", self.top)
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0x99 %d 64k"
            % ((self.cycle * 7 % 16) * MiB), self.top)
        flatten(self.top, self.flat)
        self.cycle += 1
        self.node = "n%d_%d" % (self.k, self.cycle)
        self.job = "s%d_%d" % (self.k, self.cycle)
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": self.node,
                              "file": {"driver": "file",
                                       "filename": self.top}})
        c.ok("block-stream", {"device": self.node, "job-id": self.job,
                              "speed": SPEED})

    def finish(self, c, completed):
        assert "error" not in completed["data"], completed
        assert completed["data"]["offset"] == IMG, completed
        c.ok("blockdev-del", {"node-name": self.node})
        qemu_check(self.top, allow_leaks=False)
        compare(self.top, self.flat)
        self.done += 1
        self.job = None


def main():
    t_start = time.monotonic()
    nofile = raise_nofile(N_CLIENTS + 200)
    if nofile < N_CLIENTS + 100:
        print("SKIP: RLIMIT_NOFILE %d too small for %d clients" % (
            nofile, N_CLIENTS))
        return 77
    d = workdir("load-")
    os.chmod(d, 0o755)  # the refused peer (uid nobody) must reach the socket
    slots = [Slot(d, k) for k in range(JOBS)]
    args = ["--socket-mode", "0666"]
    help_text = os.popen("%s --help" % os.environ.get(
        "BLOCKJOBD", os.path.join(os.path.dirname(os.path.dirname(
            os.path.dirname(os.path.abspath(__file__)))), "blockjobd"))).read()
    deny = "--allow-uid" in help_text and os.geteuid() == 0
    if deny:
        args += ["--allow-uid", "12345"]
    else:
        skipped_part("refused-peer case (%s)" % (
            "no --allow-uid" if "--allow-uid" not in help_text
            else "not root: cannot connect as another uid"))
    daemon = Daemon(args, workdir=os.path.join(d, "daemon"))
    pid = daemon.proc.pid
    stop = mp.Event()
    p_out, p_in = mp.Pipe(False)
    h_out, h_in = mp.Pipe(False)
    procs = [mp.Process(target=pollers, args=(daemon.sock, N_CLIENTS, stop,
                                              p_in)),
             mp.Process(target=hostile, args=(daemon.sock, stop, h_in,
                                              deny))]
    lat = []
    rss_max = 0
    meas = None
    try:
        c = daemon.connect()
        for p in procs:
            p.start()
        for s in slots:
            s.start(c)
        setup = time.monotonic() - t_start
        upkeep = 0.0
        t_end = time.monotonic() + DURATION
        meas = threading.Thread(target=measure, args=(daemon, stop, lat))
        meas.start()
        while time.monotonic() < t_end:
            jobs = c.ok("query-block-jobs")
            rss_max = max(rss_max, rss_kib(pid))
            running = {j["device"] for j in jobs}
            t1 = time.monotonic()
            for s in slots:
                if s.job and s.job not in running:
                    done = take_event(c, "BLOCK_JOB_COMPLETED",
                                      lambda x: x["device"] == s.job)
                    s.finish(c, done)
                    s.start(c)
            upkeep += time.monotonic() - t1
            c.events = [e for e in c.events
                        if e["event"] == "BLOCK_JOB_COMPLETED"]
        # let the last jobs finish at full speed
        for s in slots:
            if s.job:
                # (the job may have ended since the last query)
                c.cmd("block-job-set-speed", {"device": s.job, "speed": 0})
        for s in slots:
            if s.job:
                done = take_event(c, "BLOCK_JOB_COMPLETED",
                                  lambda x: x["device"] == s.job)
                while any(j["device"] == s.job
                          for j in c.ok("query-block-jobs")):
                    pass  # concluded -> null follows at once
                s.finish(c, done)
        stop.set()
        meas.join()
        pstats = p_out.recv()
        hstats = h_out.recv()
        for p in procs:
            p.join(60)
        rss_max = max(rss_max, rss_kib(pid))
        # a fresh client is served at once afterwards
        c2 = daemon.connect()
        assert c2.ok("query-block-jobs") == []
        c2.close()
        c.close()
        assert daemon.proc.poll() is None, "daemon died"
        daemon.stop()
    finally:
        stop.set()
        if meas:
            meas.join()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait()
        log = daemon.logtext() if os.path.exists(daemon.stderr_path) else ""
        cleanup(d)
    counts = pstats["counts"]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    print("clients %d, duration %.0fs: poller replies total %d, per client "
          "min %d median %d; longest wait of a poller %.3fs" % (
              N_CLIENTS, DURATION, sum(counts), min(counts),
              sorted(counts)[len(counts) // 2], pstats["max_gap"]))
    print("measured client: %d queries, latency p50 %.1f ms, p99 %.1f ms, "
          "max %.1f ms; set-up %.1f s" % (
              len(lat), p50 * 1e3, p99 * 1e3, max(lat) * 1e3, setup))
    print("daemon VmRSS max %.1f MiB" % (rss_max / 1024.0))
    print("hostile: %r" % {k: v for k, v in hstats.items()
                           if k != "problems"})
    print("jobs finished and verified: %s" % [s.done for s in slots])
    problems = []
    if pstats["n_errors"]:
        problems.append("pollers: %d errors, e.g. %s" % (
            pstats["n_errors"], pstats["errors"]))
    if min(counts) == 0:
        problems.append("a poller got no reply at all")
    if hstats["problems"]:
        problems.append("hostile: %s" % hstats["problems"][:5])
    slow = 10 if under_valgrind() else 1
    if p99 > P99_MAX * slow:
        problems.append("p99 latency %.3fs > %.3fs" % (p99, P99_MAX * slow))
    if pstats["max_gap"] > 30 * slow:
        problems.append("a poller waited %.1fs for a reply" %
                        pstats["max_gap"])
    if memory_bounds_apply() and rss_max > RSS_MAX_MIB * 1024:
        problems.append("VmRSS %d KiB > %d MiB" % (rss_max, RSS_MAX_MIB))
    if any(s.done == 0 for s in slots):
        problems.append("a job slot never finished a job")
    if problems:
        print("daemon log tail:\n" + "\n".join(log.splitlines()[-20:]))
    assert not problems, "\n".join(problems)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
