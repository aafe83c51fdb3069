#!/usr/bin/env python3
"""systemd integration: `make install` (PREFIX, DESTDIR) puts binaries,
units, sysusers file and man pages in place; `systemd-analyze verify`
accepts the installed units (man pages resolved through MANPATH); the
daemon runs under `systemd-socket-activate` with no --socket option."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from service_util import (ROOT, QMP, Runner, binary, wait_exit,  # noqa
                          workdir)
from qmp import skip_check  # noqa: E402

FILES = ["sbin/blockjobd", "bin/blockjobctl",
         "share/man/man8/blockjobd.8", "share/man/man1/blockjobctl.1",
         "lib/systemd/system/blockjobd.service",
         "lib/systemd/system/blockjobd.socket",
         "lib/systemd/system/blockjobd-readonly.socket",
         "lib/sysusers.d/blockjobd.conf"]
UNITS = ["blockjobd.service", "blockjobd.socket",
         "blockjobd-readonly.socket"]


def make_install(**kv):
    build = os.environ.get("BUILD") or os.path.relpath(
        os.path.dirname(binary()), ROOT)
    cmd = ["make", "-s", "--no-print-directory", "-C", ROOT,
           "BUILD=" + build, "install"] + ["%s=%s" % kv_ for kv_ in
                                            kv.items()]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout


def test_make_install_destdir():
    d = workdir()
    make_install(DESTDIR=d, PREFIX="/usr")
    for f in FILES:
        assert os.path.isfile(os.path.join(d, "usr", f)), f
    assert os.access(os.path.join(d, "usr/sbin/blockjobd"), os.X_OK)
    svc = open(os.path.join(d, "usr/lib/systemd/system/blockjobd.service"))
    assert "ExecStart=/usr/sbin/blockjobd " in svc.read()
    shutil.rmtree(d, ignore_errors=True)


def test_analyze_verify_installed_units():
    if shutil.which("systemd-analyze") is None:
        skip_check("systemd-analyze missing")
    d = workdir()
    prefix = os.path.join(d, "usr")
    make_install(PREFIX=prefix)
    unitdir = os.path.join(prefix, "lib/systemd/system")
    text = open(os.path.join(unitdir, "blockjobd.service")).read()
    assert "ExecStart=%s/sbin/blockjobd " % prefix in text, text
    for key in ("Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict",
                "PrivateTmp=yes", "RuntimeDirectory=blockjobd",
                "WatchdogSec="):
        assert key in text, key
    env = dict(os.environ, MANPATH=os.path.join(prefix, "share/man"))
    p = subprocess.run(["systemd-analyze", "verify"] +
                       [os.path.join(unitdir, u) for u in UNITS],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, env=env, timeout=60)
    out = p.stdout
    if p.returncode != 0 and ("Failed to initialize manager" in out or
                              "Permission denied" in out):
        skip_check("systemd-analyze cannot run in this sandbox (%s)"
                   % out.strip())
    assert p.returncode == 0 and out.strip() == "", out
    shutil.rmtree(d, ignore_errors=True)


def test_systemd_socket_activate():
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        # test_service.py covers LISTEN_FDS with its own launcher
        skip_check("systemd-socket-activate missing")
    d = workdir()
    sock = os.path.join(d, "qmp.sock")
    log = open(os.path.join(d, "log"), "w+b")
    proc = subprocess.Popen([tool, "-l", sock, "--fdname=qmp", binary(),
                             "--log-level", "info"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline, (
                open(log.name).read())
            time.sleep(0.01)
        # the first connection starts the daemon (same pid, exec'd)
        c = QMP(sock)
        c.negotiate()
        assert c.ok("query-version")["package"].startswith("blockjobd")
        c2 = QMP(sock)  # served on the same inherited socket
        c2.negotiate()
        text = open(log.name).read()
        assert "listening on passed socket 'qmp' (fd 3)" in text, text
        proc.send_signal(signal.SIGTERM)
        assert c.event("SHUTDOWN")["data"]["reason"] == "host-signal"
        assert wait_exit(proc) == 0, open(log.name).read()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    Runner(globals()).run()
