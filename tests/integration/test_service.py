#!/usr/bin/env python3
"""blockjobd as a service: command line (help vs man page, bad options,
--pidfile, --blockdev, --readonly-socket, --allow-uid, --socket-group),
sd_notify messages, socket activation through LISTEN_FDS, and log lines."""
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from service_util import (ROOT_MAN, Daemon, Notify, QMP, Runner,  # noqa
                          binary, environ, make_chain, top_blockdev,
                          wait_exit, workdir)
from qmp import skip_check  # noqa: E402


def run_bjd(*args, env=None):
    return subprocess.run([binary()] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=30,
                          env=env)


# ---- command line ---------------------------------------------------------

def test_help_options_are_in_the_man_page():
    helptext = run_bjd("--help").stdout
    man = open(os.path.join(ROOT_MAN, "blockjobd.8")).read()
    man = man.replace("\\-", "-")
    opts = sorted(set(re.findall(r"--[a-z][a-z-]+", helptext)))
    assert len(opts) >= 12, opts
    missing = [o for o in opts if o not in man]
    assert not missing, "options of --help missing in blockjobd.8: %r" % (
        missing)
    # ... and the other way round: the man page documents no phantom option
    man_opts = set(re.findall(r"^\.B[IR]? (--[a-z][a-z-]+)", man, re.M))
    man_opts |= set(re.findall(r"^\.BR -[a-zA-Z] \", \" (--[a-z][a-z-]+)",
                               man, re.M))
    extra = [o for o in man_opts if o not in opts]
    assert not extra, "man page options not in --help: %r" % extra
    # exit codes are documented in both
    for code in ("0", "1", "2"):
        assert code in helptext.split("Exit status:")[1]


def test_bad_options_one_line_exit_2():
    cases = [
        ["--bogus"],
        ["-x"],
        ["--socket"],
        ["--socket", "/tmp/x.sock", "--log-level", "loud"],
        ["--socket", "/tmp/x.sock", "--socket-mode", "999"],
        ["--socket", "/tmp/x.sock", "--socket-group", "no-such-group-h7"],
        ["--socket", "/tmp/x.sock", "--allow-uid", "no-such-user-h7"],
        ["--socket", "/tmp/x.sock", "--blockdev", "{not json"],
        ["--socket", "/tmp/x.sock", "--blockdev", "[1]"],
        ["--socket", "/tmp/x.sock", "--pidfile", ""],
        ["--socket", "/tmp/x.sock", "stray"],
        [],  # no socket at all and no socket activation
    ]
    for args in cases:
        p = run_bjd(*args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("blockjobd: "), (
            args, p.stderr)
        assert p.stdout == "", (args, p.stdout)


def test_pidfile():
    d = workdir()
    pidfile = os.path.join(d, "bjd.pid")
    with Daemon(["--pidfile", pidfile], workdir=d) as dm:
        # written before the daemon serves: before the greeting ("listening
        # on" is logged earlier, when the socket is bound)
        dm.connect(negotiate=False).close()
        with open(pidfile) as f:
            assert f.read() == "%d\n" % dm.proc.pid
        # a second daemon with the same pidfile refuses to start
        p = run_bjd("--socket", os.path.join(d, "other.sock"), "--pidfile",
                    pidfile)
        assert p.returncode == 1, p
        assert "held by another running daemon" in p.stderr, p.stderr
        assert not os.path.exists(os.path.join(d, "other.sock"))
        with open(pidfile) as f:
            assert f.read() == "%d\n" % dm.proc.pid
        dm.stop()
        assert not os.path.exists(pidfile)
    shutil.rmtree(d, ignore_errors=True)


def test_blockdev_at_startup():
    d = workdir()
    base, top, flat = make_chain(d)
    opts = top_blockdev(top)
    with Daemon(["--blockdev", json.dumps(opts)]) as dm:
        c = dm.connect()
        nodes = {n["node-name"]: n for n in c.ok("query-named-block-nodes")}
        assert "top" in nodes and nodes["top"]["drv"] == "qcow2", nodes
        # the same options from a client give the same error as a
        # conflicting --blockdev would: the node exists already
        bad = c.err("blockdev-add", opts)
        # a broken node: what a client gets, the command line gets too
        broken = {"driver": "qcow2", "node-name": "x",
                  "file": {"driver": "file",
                           "filename": os.path.join(d, "missing.qcow2")}}
        client_err = c.err("blockdev-add", broken)["desc"]
        wrong_type = {"driver": "qcow2", "node-name": 7}
        client_err2 = c.err("blockdev-add", wrong_type)["desc"]
    for args, desc in ((broken, client_err), (wrong_type, client_err2)):
        sock = os.path.join(d, "s2.sock")
        p = run_bjd("--socket", sock, "--blockdev", json.dumps(args))
        assert p.returncode == 1, p
        assert desc in p.stderr, (desc, p.stderr)
        assert not os.path.exists(sock), "socket served before --blockdev"
    # two --blockdev naming the same node: the second fails as blockdev-add
    p = run_bjd("--socket", os.path.join(d, "s3.sock"), "--blockdev",
                json.dumps(opts), "--blockdev", json.dumps(opts))
    assert p.returncode == 1 and bad["desc"] in p.stderr, (bad, p.stderr)
    shutil.rmtree(d, ignore_errors=True)


def test_readonly_socket():
    d = workdir()
    base, top, flat = make_chain(d)
    ro = os.path.join(d, "ro.sock")
    with Daemon(["--readonly-socket", ro, "--blockdev",
                 json.dumps(top_blockdev(top))]) as dm:
        dm.wait_log("listening on %s (read-only)" % ro)
        r = QMP(ro)
        r.negotiate()
        assert r.ok("query-version")["qemu"]["major"] == 7
        r.ok("query-block-jobs")
        r.ok("query-named-block-nodes")
        r.ok("query-commands")
        for cmd, args in (("block-stream", {"device": "top"}),
                          ("quit", None),
                          ("blockdev-del", {"node-name": "top"})):
            e = r.err(cmd, args)
            assert "not allowed on a read-only monitor" in e["desc"], e
        # unknown commands stay CommandNotFound
        r.err("nosuch", cls="CommandNotFound")
        # the read-write socket starts a job; the monitor sees its events
        c = dm.connect()
        c.ok("block-stream", {"device": "top", "job-id": "j1", "speed": 1})
        r.event("JOB_STATUS_CHANGE", lambda d: d["status"] == "running")
        r.err("block-job-cancel", {"device": "j1"})
        c.ok("block-job-cancel", {"device": "j1", "force": True})
        r.event("BLOCK_JOB_CANCELLED")
        assert "client 1: connected on %s (read-only)" % ro in dm.logtext()
    shutil.rmtree(d, ignore_errors=True)


def connect_as(path, uid):
    """Connects from a child process running as `uid`; returns what the
    daemon sent before it closed the connection or within 5 s (the child
    reads until EOF or the greeting)."""
    code = (
        "import os, socket, sys\n"
        "os.setgid(%d); os.setuid(%d)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "s.connect(%r)\n"
        "s.settimeout(5)\n"
        "buf = b''\n"
        "while b'\\n' not in buf:\n"
        "    d = s.recv(4096)\n"
        "    if not d: break\n"
        "    buf += d\n"
        "rest = b''\n"
        "if buf.startswith(b'{\"error\"'):\n"
        "    rest = s.recv(4096)\n"
        "sys.stdout.buffer.write(buf + (b'EOF' if not rest else b''))\n"
    ) % (uid, uid, path)
    return subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          timeout=30, check=True).stdout.decode()


def test_allow_uid_and_socket_group():
    if os.geteuid() != 0:
        skip_check("not root: cannot connect as other users")
    d = workdir()
    os.chmod(d, 0o755)
    with Daemon(["--allow-uid", "4242", "--socket-mode", "0666",
                 "--socket-group", "4343"], workdir=d) as dm:
        st = os.stat(dm.sock)
        assert stat.S_IMODE(st.st_mode) == 0o666 and st.st_gid == 4343, st
        ok = connect_as(dm.sock, 4242)
        assert ok.startswith('{"QMP": '), ok
        refused = connect_as(dm.sock, 4343)
        assert refused == ('{"error": {"class": "GenericError", "desc": '
                           '"Access denied: uid 4343 may not use this '
                           'socket"}}\r\nEOF'), repr(refused)
        dm.wait_log("refused on %s: uid 4343 gid 4343" % dm.sock)
        # root and the daemon's own user always get in
        c = dm.connect()
        c.ok("query-version")
    shutil.rmtree(d, ignore_errors=True)


def first_entry(path):
    """(name, id) of the first entry of passwd(5)/group(5) `path` other
    than root's."""
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if (len(fields) > 2 and fields[2].isdigit() and fields[2] != "0"
                    and not line.startswith("#")):
                return fields[0], int(fields[2])
    return None, None


def test_allow_uid_and_socket_group_by_name():
    """Names are read from /etc/passwd and /etc/group (the daemon is linked
    statically and uses no NSS); unknown names: test_bad_options."""
    user, uid = first_entry("/etc/passwd")
    group, gid = first_entry("/etc/group")
    if os.geteuid() != 0 or user is None or group is None:
        skip_check("not root or no user/group entries")
    d = workdir()
    os.chmod(d, 0o755)
    with Daemon(["--allow-uid", user, "--socket-mode", "0666",
                 "--socket-group", group], workdir=d) as dm:
        st = os.stat(dm.sock)
        assert st.st_gid == gid, (group, gid, st)
        ok = connect_as(dm.sock, uid)
        assert ok.startswith('{"QMP": '), (user, uid, ok)
        refused = connect_as(dm.sock, 4343)
        assert refused.startswith('{"error": '), refused
    shutil.rmtree(d, ignore_errors=True)


# ---- sd_notify and socket activation ---------------------------------------

def test_notify_ready_status_watchdog_stopping():
    d = workdir()
    base, top, flat = make_chain(d)
    n = Notify(d)
    with environ(NOTIFY_SOCKET=n.path, WATCHDOG_USEC="100000"):
        dm = Daemon(["--blockdev", json.dumps(top_blockdev(top))])
    with dm:
        n.wait(lambda m: m == "READY=1")
        # READY means served: connecting right now works
        c = dm.connect()
        n.wait(lambda m: m.startswith("STATUS=0 jobs (0 running), 1 client"))
        c.ok("block-stream", {"device": "top", "job-id": "j1", "speed": 1})
        n.wait(lambda m: m.startswith("STATUS=1 job (1 running), 1 client"))
        n.wait(lambda m: m == "WATCHDOG=1")
        n.wait(lambda m: m == "WATCHDOG=1")
        c.ok("block-job-cancel", {"device": "j1", "force": True})
        n.wait(lambda m: m.startswith("STATUS=0 jobs"))
        dm.proc.send_signal(signal.SIGTERM)
        m = n.wait(lambda m: m.startswith("STOPPING=1"))
        assert "STATUS=stopping (SIGTERM)" in m, m
        assert wait_exit(dm.proc) == 0, dm.logtext()
    # without NOTIFY_SOCKET, nothing is sent and nothing breaks
    n.close()
    shutil.rmtree(d, ignore_errors=True)


LAUNCHER = r"""
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)  # inheritable
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())  # exec keeps the pid
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_FDNAMES"] = sys.argv[2]
os.execv(sys.argv[3], sys.argv[3:])
"""


def start_activated(d, socks, args=(), env_extra=None):
    """Starts blockjobd the way a service manager does: listening sockets
    (socket, name) on fds 3.., LISTEN_PID set to the daemon's own pid,
    LISTEN_FDNAMES naming them."""
    fds = [s.fileno() for s, _ in socks]
    names = ":".join(n for _, n in socks)
    log = open(os.path.join(d, "daemon.log"), "w+b")
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER,
                             ",".join(map(str, fds)), names, binary()] +
                            list(args), pass_fds=fds,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            env=env)
    return proc, log


def listening(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(16)
    return s


def test_socket_activation_listen_fds():
    d = workdir()
    rw_path, ro_path = os.path.join(d, "qmp.sock"), os.path.join(d, "ro.sock")
    rw, ro = listening(rw_path), listening(ro_path)
    # a client may connect before the daemon runs: the manager's socket
    # queues it
    early = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    early.connect(rw_path)
    n = Notify(d)
    proc, log = start_activated(d, [(rw, "qmp"), (ro, "readonly")],
                                env_extra={"NOTIFY_SOCKET": n.path})
    rw.close()
    ro.close()
    try:
        n.wait(lambda m: m == "READY=1")
        early.settimeout(30)
        assert early.recv(4096).startswith(b'{"QMP": ')
        early.close()
        c = QMP(rw_path)
        c.negotiate()
        c.ok("query-version")
        r = QMP(ro_path)
        r.negotiate()
        assert "read-only" in r.err("quit")["desc"]
        text = open(log.name).read()
        assert "listening on passed socket 'qmp' (fd 3)\n" in text, text
        assert "listening on passed socket 'readonly' (fd 4) (read-only)" in (
            text), text
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc) == 0, open(log.name).read()
        # the manager's socket files are not ours to remove
        assert os.path.exists(rw_path) and os.path.exists(ro_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        n.close()
    shutil.rmtree(d, ignore_errors=True)


def test_socket_activation_rejects_wrong_fds():
    d = workdir()
    # LISTEN_PID of another process: ignored, so no socket at all (exit 2)
    with environ(LISTEN_PID="1", LISTEN_FDS="1"):
        p = run_bjd()
    assert p.returncode == 2, p
    # a passed fd that is not a listening socket: clear error, exit 1
    a, b = socket.socketpair()
    proc, log = start_activated(d, [(a, "qmp")])
    assert wait_exit(proc) == 1
    text = open(log.name).read()
    assert "passed fd 3 is not a listening socket" in text, text
    a.close()
    b.close()
    shutil.rmtree(d, ignore_errors=True)


# ---- logs -------------------------------------------------------------------

def test_log_lines_and_journal_priorities():
    d = workdir()
    base, top, flat = make_chain(d)
    logpath = os.path.join(d, "journal.log")
    # JOURNAL_STREAM names stderr's device and inode: the journal is the
    # reader. The file is created first so its identity is known.
    open(logpath, "wb").close()
    st = os.stat(logpath)
    with environ(JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino)):
        dm = Daemon(["--blockdev", json.dumps(top_blockdev(top)),
                     "--max-output-queue", "65536"])
    # Daemon() logs to its own daemon.log; check that it is not the
    # journal's file, so no prefixes there
    with dm:
        c = dm.connect()
        c.ok("block-stream", {"device": "top", "job-id": "j1"})
        c.event("BLOCK_JOB_COMPLETED")
        slow = dm.connect()
        for _ in range(200):
            slow.send_raw('{"execute": "query-qmp-schema"}')
        dm.wait_log("too slow")
        c.close()
        dm.wait_log("client 1: disconnected (uid %d)" % os.getuid())
        text = dm.logtext()
    assert "blockjobd: info: client 1: connected on" in text, text
    assert "(uid %d, gid %d, pid %d)" % (os.getuid(), os.getgid(),
                                         os.getpid()) in text
    assert "blockjobd: info: job j1: created" in text
    assert "blockjobd: info: job j1 (stream): completed, 4194304 bytes" in text
    assert re.search(r"blockjobd: warning: client 2: disconnected \(uid \d+\)"
                     r": too slow, \d+ bytes of output unread \(limit 65536\)",
                     text), text
    # Now with stderr really being the "journal" file.
    with open(logpath, "r+b") as j:
        env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev,
                                                         st.st_ino))
        sock = os.path.join(d, "j.sock")
        proc = subprocess.Popen([binary(), "--socket", sock, "--log-level",
                                 "debug", "--blockdev",
                                 json.dumps({"driver": "null-co",
                                             "node-name": "n0"})],
                                stdin=subprocess.DEVNULL, stdout=j, stderr=j,
                                env=env)
        try:
            import time
            deadline = time.monotonic() + 30
            while "listening on" not in open(logpath).read():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            QMP(sock).close()
            proc.send_signal(signal.SIGTERM)
            assert wait_exit(proc) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    lines = open(logpath).read().splitlines()
    assert lines and all(re.match(r"<[3467]>", ln) for ln in lines), lines
    assert "<6>listening on " + sock in lines, lines
    assert any(ln.startswith("<6>client 1: connected on") for ln in lines)
    assert "<6>shutting down (SIGTERM)" in lines, lines
    assert not any("blockjobd:" in ln for ln in lines), lines
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    Runner(globals()).run()
