"""Test helpers: start blockjobd (or qemu-storage-daemon) and talk QMP to it.

No sleeps as synchronisation: the daemon is ready when it logs that it
listens; replies and events are waited for with timeouts.
"""
import ctypes
import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TIMEOUT = float(os.environ.get("QMP_TIMEOUT", "60"))


_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent():
    """preexec_fn: the daemon gets SIGKILL when the test process dies
    (killed by a timeout, say), so no daemon outlives its test and eats a
    core for the rest of the run (PR_SET_PDEATHSIG = 1)."""
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def binary():
    return os.environ.get("BLOCKJOBD", os.path.join(ROOT, "blockjobd"))


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


SKIP_MARK = "skip-check: "


class SkipCheck(Exception):
    """Raised by skip_check(): the Runner counts the check as skipped."""


def skip_check(why):
    """Ends the running check as skipped (not passed); tests/run.sh counts
    the marker line in its summary."""
    raise SkipCheck(why)


def skipped_part(why):
    """A part of a check did not run (the rest did): counted as a skip."""
    print(SKIP_MARK + why, flush=True)


def require(*tools):
    for t in tools:
        if shutil.which(t) is None:
            skip(t + " is not installed")


class Daemon:
    """A blockjobd process on a socket in a private temporary directory."""

    def __init__(self, args=(), sock=None, workdir=None, wrapper=True):
        self.workdir = workdir or tempfile.mkdtemp(prefix="bjd-")
        os.makedirs(self.workdir, exist_ok=True)
        self.sock = sock or os.path.join(self.workdir, "qmp.sock")
        cmd = []
        wrap = os.environ.get("BLOCKJOBD_WRAPPER") if wrapper else None
        if wrap:
            cmd += shlex.split(wrap)
        cmd += [binary(), "--socket", self.sock] + list(args)
        self.stderr_path = os.path.join(self.workdir, "daemon.log")
        self.log = open(self.stderr_path, "w+b")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log,
                                     preexec_fn=die_with_parent)
        self.wait_log("listening on " + self.sock)

    def logtext(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, text, timeout=TIMEOUT):
        """Waits until the daemon's log contains `text` (polling the file,
        bounded by `timeout`)."""
        deadline = time.monotonic() + timeout
        while text not in self.logtext():
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited (%d) before '%s':\n%s" % (
                    self.proc.returncode, text, self.logtext()))
            if time.monotonic() > deadline:
                raise AssertionError("timeout waiting for '%s':\n%s" % (
                    text, self.logtext()))
            time.sleep(0.01)

    def connect(self, negotiate=True):
        c = QMP(self.sock)
        if negotiate:
            c.negotiate()
        return c

    def stop(self, sig=signal.SIGTERM, timeout=30, expect_rc=0):
        """Stops the daemon and fails if it does not exit cleanly."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("daemon did not exit within %ds:\n%s" % (
                timeout, self.logtext()))
        self.log.close()
        if expect_rc is not None and rc != expect_rc:
            raise AssertionError("daemon exited with %d:\n%s" % (
                rc, self.logtext()))
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.stop(expect_rc=None if exc[0] else 0)
        shutil.rmtree(self.workdir, ignore_errors=True)


class QSD(Daemon):
    """qemu-storage-daemon with one QMP monitor, for differential tests."""

    def __init__(self, args=(), workdir=None):
        self.workdir = workdir or tempfile.mkdtemp(prefix="qsd-")
        self.sock = os.path.join(self.workdir, "qsd.sock")
        self.stderr_path = os.path.join(self.workdir, "qsd.log")
        self.log = open(self.stderr_path, "w+b")
        cmd = ["qemu-storage-daemon", "--chardev",
               "socket,path=%s,server=on,wait=off,id=c0" % self.sock,
               "--monitor", "chardev=c0"] + list(args)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log,
                                     preexec_fn=die_with_parent)
        # The socket file exists a moment before qsd listens on it: ready
        # means a connection gets the greeting (qsd serves one client at a
        # time, so the probe is closed right after it; closing it before
        # the greeting made the next connection close at once now and then).
        deadline = time.monotonic() + TIMEOUT
        while True:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("qsd did not start: " + self.logtext())
            probe = None
            try:
                probe = QMP(self.sock)
                probe.close()
                break
            except (FileNotFoundError, ConnectionRefusedError, EOFError):
                if probe:
                    probe.close()
                time.sleep(0.01)

    def connect(self, negotiate=True):
        """As Daemon.connect; a connection that qsd still closes because
        it had not yet seen the probe's hang-up is made again."""
        for _ in range(200):
            try:
                c = QMP(self.sock)
                break
            except (ConnectionRefusedError, EOFError):
                time.sleep(0.01)
        else:
            c = QMP(self.sock)
        if negotiate:
            c.negotiate()
        return c


class QMP:
    """A QMP connection: raw lines (CR LF framed), replies and events."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.buf = b""
        self.events = []
        self.lines = []  # every raw line received, for byte-exact checks
        self.greeting = self.recv()

    def close(self):
        self.s.close()

    def send_raw(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.s.sendall(data)

    def recv_line(self, timeout=TIMEOUT):
        """Returns the next raw line without its CR LF; asserts framing."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timeout waiting for a QMP line")
            r, _, _ = select.select([self.s], [], [], left)
            if r:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise EOFError("connection closed")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        assert line.endswith(b"\r"), "line not ended by CR LF: %r" % line
        line = line[:-1]
        self.lines.append(line)
        return line

    def recv(self, timeout=TIMEOUT):
        return json.loads(self.recv_line(timeout))

    def negotiate(self):
        r = self.cmd("qmp_capabilities")
        assert r == {"return": {}}, r
        return r

    def reply(self, timeout=TIMEOUT):
        """Next non-event message; events seen meanwhile are kept."""
        while True:
            m = self.recv(timeout)
            if "event" in m:
                self.events.append(m)
            else:
                return m

    def cmd(self, name, args=None, id=None, timeout=TIMEOUT):
        msg = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        if id is not None:
            msg["id"] = id
        self.send_raw(json.dumps(msg))
        return self.reply(timeout)

    def ok(self, name, args=None):
        r = self.cmd(name, args)
        assert "return" in r, "%s %r -> %r" % (name, args, r)
        return r["return"]

    def err(self, name, args=None, cls="GenericError", desc=None):
        r = self.cmd(name, args)
        assert "error" in r, "%s %r -> %r" % (name, args, r)
        assert r["error"]["class"] == cls, r
        if desc is not None:
            assert r["error"]["desc"] == desc, "%r != %r" % (
                r["error"]["desc"], desc)
        return r["error"]

    def event(self, name, pred=None, timeout=TIMEOUT):
        """Waits for an event (already received or new) and removes it and
        every event before it from the backlog."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name and (pred is None or pred(e["data"])):
                    del self.events[:i + 1]
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timeout waiting for event %s; got %r"
                                     % (name, self.events))
            m = self.recv(left)
            if "event" in m:
                self.events.append(m)
            else:
                raise AssertionError("unexpected reply %r" % m)

    def sync(self, marker="sync"):
        """Sends a marked request and drops every reply before its answer
        (error replies to earlier bad input); returns the dropped ones."""
        self.send_raw('{"execute": "query-version", "id": "%s"}' % marker)
        dropped = []
        while True:
            m = self.reply()
            if m.get("id") == marker:
                return dropped
            dropped.append(m)

    def drain_events(self, timeout=0.0):
        """Collects events already on their way (non-blocking by default)."""
        while True:
            r, _, _ = select.select([self.s], [], [], timeout)
            if not r and b"\n" not in self.buf:
                return self.events
            try:
                m = self.recv(max(timeout, 0.5))
            except AssertionError:
                return self.events
            if "event" in m:
                self.events.append(m)
            else:
                raise AssertionError("unexpected reply %r" % m)

    def status_events(self, job):
        return [e["data"]["status"] for e in self.events
                if e["event"] == "JOB_STATUS_CHANGE"
                and e["data"]["id"] == job]


class Runner:
    """Tiny test runner: each function named test_* runs once; a summary
    line is printed; exit 1 on any failure."""

    def __init__(self, ns):
        self.tests = [(n, f) for n, f in ns.items()
                      if n.startswith("test_") and callable(f)]

    def run(self):
        failed = ran = skipped = 0
        only = os.environ.get("ONLY")
        for name, fn in self.tests:
            if only and only not in name:
                continue
            ran += 1
            t0 = time.monotonic()
            try:
                fn()
                print("ok   %s (%.2fs)" % (name, time.monotonic() - t0))
            except SkipCheck as e:
                skipped += 1
                print("%s%s: %s" % (SKIP_MARK, name, e), flush=True)
            except SystemExit:
                raise
            except BaseException as e:  # report and go on
                failed += 1
                import traceback
                traceback.print_exc()
                print("FAIL %s: %s" % (name, e))
        print("%d passed, %d failed, %d skipped" % (ran - failed - skipped,
                                                   failed, skipped))
        sys.exit(1 if failed else 0)
