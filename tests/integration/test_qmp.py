#!/usr/bin/env python3
"""QMP wire protocol of blockjobd, over its socket, as a client sees it."""
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from qmp import Daemon, QMP, Runner, binary, skip_check  # noqa: E402

GENERIC = "GenericError"


def test_greeting_and_negotiation():
    with Daemon() as d:
        c = d.connect(negotiate=False)
        g = c.lines[0].decode()
        assert g.startswith('{"QMP": {"version": {"qemu": {"micro": 22, '
                            '"minor": 2, "major": 7}, "package": '), g
        assert g.endswith('"capabilities": ["oob"]}}'), g
        c.send_raw('{"execute": "query-version", "id": 1}')
        assert c.recv_line() == (
            b'{"id": 1, "error": {"class": "CommandNotFound", "desc": '
            b'"Expecting capabilities negotiation with \'qmp_capabilities\'"}}')
        c.err("nosuch", cls="CommandNotFound",
              desc="Expecting capabilities negotiation with "
                   "'qmp_capabilities'")
        c.err("qmp_capabilities", {"enable": "oob"},
              desc="Invalid parameter type for 'enable', expected: array")
        c.err("qmp_capabilities", {"enable": ["foo"]},
              desc="Parameter 'null' does not accept value 'foo'")
        c.send_raw('{"execute":"qmp_capabilities","id":"B"}')
        assert c.recv_line() == b'{"return": {}, "id": "B"}'
        c.err("qmp_capabilities", cls="CommandNotFound",
              desc="Capabilities negotiation is already complete, command "
                   "ignored")
        v = c.ok("query-version")
        assert v["qemu"] == {"micro": 22, "minor": 2, "major": 7}, v


def test_ids_echoed_verbatim():
    with Daemon() as d:
        c = d.connect()
        for raw, echoed in [('"a"', b'"a"'), ('{"x": [1, null]}',
                                              b'{"x": [1, null]}'),
                            ("1.5e3", b"1500"), ("-7", b"-7"),
                            ("0.1", b"0.10000000000000001"),
                            ("true", b"true")]:
            c.send_raw('{"execute": "query-commands", "id": %s}' % raw)
            line = c.recv_line()
            assert line.endswith(b', "id": ' + echoed + b"}"), line


def test_message_shape_errors():
    with Daemon() as d:
        c = d.connect()
        cases = [
            ("[1, 2]", None, "QMP input must be a JSON object"),
            ('"x"', None, "QMP input must be a JSON object"),
            ('{"id": 3}', 3, "QMP input lacks member 'execute'"),
            ('{"execute": 1, "id": 4}', 4,
             "QMP input member 'execute' must be a string"),
            ('{"execute": "quit", "arguments": [], "id": 5}', 5,
             "QMP input member 'arguments' must be an object"),
            ('{"execute": "quit", "foo": 1, "id": 6}', 6,
             "QMP input member 'foo' is unexpected"),
            ('{"exec-oob": "query-version", "id": 7}', 7,
             "QMP input member 'exec-oob' is unexpected"),
        ]
        for raw, id, desc in cases:
            c.send_raw(raw)
            r = c.recv()
            assert r.get("id") == id and r["error"] == {
                "class": GENERIC, "desc": desc}, (raw, r)
        c.err("nosuch", cls="CommandNotFound",
              desc="The command nosuch has not been found")
        c.err("query-version", {"bogus": 1},
              desc="Parameter 'bogus' is unexpected")
        assert c.cmd("query-version", id=8)["id"] == 8


def test_parse_errors_keep_the_connection():
    with Daemon() as d:
        c = d.connect()
        cases = [
            ('{"execute": }', ["JSON parse error, expecting value"]),
            ("foo ", ["JSON parse error, invalid keyword 'foo'"]),
            ("%", ["JSON parse error, stray '%'"]),
            ('{"id":"x","id":"y"}', ["JSON parse error, duplicate key"]),
            ("[1,2,]", ["JSON parse error, expecting value"]),
        ]
        for raw, descs in cases:
            c.send_raw(raw)
            for desc in descs:
                r = c.recv()
                assert r == {"error": {"class": GENERIC, "desc": desc}}, (
                    raw, r)
            assert "return" in c.cmd("query-version"), raw
        c.send_raw(b"\xff\xfe")
        errs = c.sync()
        assert errs == [{"error": {"class": GENERIC, "desc":
                                   "JSON parse error, stray '\ufffd'"}}] * 2, errs


def test_framing_split_and_batched():
    with Daemon() as d:
        c = d.connect()
        msg = b'{"execute": "query-version", "id": "split"}'
        for i in range(len(msg)):
            c.send_raw(msg[i:i + 1])
        assert c.reply()["id"] == "split"
        batch = b"".join(b' {"execute":"query-version","id":%d}\n\t' % i
                         for i in range(50))
        c.send_raw(batch)
        for i in range(50):
            assert c.reply()["id"] == i
        c.send_raw("{'execute': 'query-version', 'id': 'single'}")
        assert c.reply()["id"] == "single"


def test_limits():
    with Daemon() as d:
        c = d.connect()
        c.send_raw("[" * 1025 + "]" * 1025)
        r = c.recv()
        assert r["error"]["desc"] == "JSON nesting depth limit exceeded", r
        # What follows the error is parsed as fresh input.
        c.sync()
        # 2 MiB in 2048 tokens: the message is dropped when it passes the
        # bound, and what follows is parsed as fresh input (errors only).
        big = '{"execute": "query-version", "id": [%s]}' % ", ".join(
            ['"%s"' % ("x" * 1024)] * 2048)
        c.send_raw(big)
        r = c.recv()
        assert r["error"]["desc"] == "JSON token size limit exceeded", r
        rest = c.sync("after")
        assert all("error" in m and "id" not in m for m in rest), rest[:3]
    # The bound can be raised.
    with Daemon(["--max-message-size", str(4 << 20)]) as d:
        c = d.connect()
        big = "x" * (2 << 20)
        assert c.cmd("query-version", id=big)["id"] == big


def test_schema_lists_every_command():
    with Daemon() as d:
        c = d.connect()
        names = {x["name"] for x in c.ok("query-commands")}
        for n in ["qmp_capabilities", "query-version", "query-commands",
                  "query-qmp-schema", "quit"]:
            assert n in names, n
        schema = c.ok("query-qmp-schema")
        cmds = {x["name"] for x in schema if x["meta-type"] == "command"}
        assert cmds == names, names ^ cmds
        by_name = {x["name"]: x for x in schema}
        for x in schema:
            for key in ("arg-type", "ret-type", "element-type"):
                if key in x:
                    assert x[key] in by_name, (x, key)
            for m in x.get("members", []):
                if "type" in m:
                    assert m["type"] in by_name, (x, m)


def test_many_clients_and_one_that_never_reads():
    with Daemon(["--max-output-queue", "262144"]) as d:
        hog = d.connect()
        # It asks for big replies and never reads them.
        hog.send_raw('{"execute": "query-qmp-schema"}' * 2000)
        crowd = []
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.sock)
            crowd.append(s)
        c = d.connect()
        for i in range(20):
            assert c.cmd("query-version", id=i)["id"] == i
        d.wait_log("bytes of output unread")
        for s in crowd:
            s.close()
        assert "return" in c.cmd("query-version")
        # Every crowd member got its greeting (the daemon served them all).
        c2 = d.connect()
        assert c2.cmd("query-version")["return"]["qemu"]["major"] == 7


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_does_not_spin():
    if shutil.which("prlimit") is None:
        skip_check("prlimit missing")
    wrap = os.environ.get("BLOCKJOBD_WRAPPER", "")
    os.environ["BLOCKJOBD_WRAPPER"] = "prlimit --nofile=48:48 " + wrap
    try:
        d = Daemon()
    finally:
        os.environ["BLOCKJOBD_WRAPPER"] = wrap
    with d:
        c = d.connect()
        crowd = []
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.sock)
            crowd.append(s)
        # Each connection is either served (greeting) or, once descriptors
        # ran out, closed at once by libuv's reserve-descriptor trick.
        served = refused = 0
        for s in crowd:
            s.settimeout(30)
            data = s.recv(4096)
            if data.startswith(b'{"QMP"'):
                served += 1
            else:
                assert data == b"", data
                refused += 1
        assert served > 10 and refused > 10, (served, refused)
        pid = d.proc.pid
        before = cpu_seconds(pid)
        # The daemon must not burn CPU while it cannot accept (a spinning
        # loop would use the whole second).
        time.sleep(1.0)
        used = cpu_seconds(pid) - before
        assert used < 0.5, "daemon used %.2fs of CPU while idle" % used
        assert c.cmd("query-version", id=1)["id"] == 1
        for s in crowd:
            s.close()
        c2 = d.connect()
        assert c2.cmd("query-version", id=2)["id"] == 2


def test_socat_session():
    if shutil.which("socat") is None:
        skip_check("socat missing")
    with Daemon() as d:
        p = subprocess.run(
            ["socat", "-t", "5", "-", "UNIX-CONNECT:" + d.sock],
            input='{"execute": "qmp_capabilities"}\n'
                  '{"execute": "query-qmp-schema", "id": 1}\n'
                  '{"execute": "quit"}\n'.encode(),
            capture_output=True, timeout=60)
        lines = p.stdout.decode().split("\r\n")
        assert json.loads(lines[0])["QMP"]["capabilities"] == ["oob"]
        assert json.loads(lines[1]) == {"return": {}}
        schema = json.loads(lines[2])
        assert schema["id"] == 1
        cmds = {x["name"] for x in schema["return"]
                if x["meta-type"] == "command"}
        assert {"block-stream", "query-block-jobs", "blockdev-add",
                "query-qmp-schema"} <= cmds, cmds
        assert json.loads(lines[3]) == {"return": {}}
        assert d.proc.wait(30) == 0


def test_socket_file():
    with Daemon() as d:
        mode = stat.S_IMODE(os.stat(d.sock).st_mode)
        assert mode == 0o600, oct(mode)
        # A second daemon on a live socket is refused.
        p = subprocess.run([binary(), "--socket", d.sock],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and "in use" in p.stderr, p
        d.stop()
        assert not os.path.exists(d.sock)
    with Daemon(["--socket-mode", "0660"]) as d:
        assert stat.S_IMODE(os.stat(d.sock).st_mode) == 0o660
        d.stop(signal.SIGKILL, expect_rc=None)
        assert os.path.exists(d.sock)  # stale, left by a dead daemon
        with Daemon(sock=d.sock, workdir=d.workdir + "-2") as d2:
            assert d2.connect().ok("query-version")


def test_quit_and_signals():
    with Daemon() as d:
        c = d.connect()
        other = d.connect()
        c.send_raw('{"execute": "quit", "id": 1}')
        assert c.recv_line() == b'{"return": {}, "id": 1}'
        assert d.proc.wait(30) == 0
        assert not os.path.exists(d.sock)
        other.close()
    with Daemon() as d:
        d.connect()
        d.stop(signal.SIGINT)
        assert not os.path.exists(d.sock)


def test_command_line():
    b = binary()
    p = subprocess.run([b, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--socket" in p.stdout
    p = subprocess.run([b, "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("blockjobd ")
    for args in (["--bogus"], [], ["--socket"], ["--socket", "x",
                                                 "--log-level", "loud"],
                 ["--socket", "x", "--socket-mode", "999"]):
        p = subprocess.run([b] + args, capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.strip(), (args, p)
    p = subprocess.run([b, "--socket", "/tmp/" + "x" * 200],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "too long" in p.stderr, p


if __name__ == "__main__":
    Runner(globals()).run()
