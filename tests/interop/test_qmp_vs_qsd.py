#!/usr/bin/env python3
"""Differential test: the same raw QMP input to qemu-storage-daemon 7.2 and
to blockjobd must give byte-identical reply lines (greeting aside)."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from qmp import QSD, Daemon, QMP, Runner, require  # noqa: E402

require("qemu-storage-daemon")

# Each case: raw bytes sent at once, then a marker request whose reply ends
# the case. Replies are compared line by line.
PRE_NEGOTIATION = [
    b'{"execute": "query-version", "id": 1}',
    b'{"execute": "nosuch"}',
    b'{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}',
    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}}',
    b'{"execute": "qmp_capabilities", "arguments": {"bogus": 1}}',
    b'{"execute": "qmp_capabilities", "arguments": null}',
    b'[1, 2]',
    b'{"id": 9}',
]
NEGOTIATE = b'{"execute": "qmp_capabilities", "id": "neg"}'
CASES = [
    b'{"execute": "qmp_capabilities"}',
    b'{"execute": "query-version", "id": "v"}',
    b'{"execute": "nosuch", "id": 2}',
    b'{"execute": "query-version", "arguments": {"x": 1}, "id": 3}',
    b'{"execute": "query-version", "arguments": [], "id": 4}',
    b'{"execute": 5, "id": 5}',
    b'{"execute": "query-version", "foo": 1, "id": 6}',
    b'{"exec-oob": "query-version", "id": 7}',
    b'{"arguments": {}, "id": 8}',
    b'"string"',
    b'42 ',
    b'true',
    b'null',
    b'{"execute": }',
    b'foo ',
    b'%',
    b'{"id":"x","id":"y"}',
    b'[1,2,]',
    b'}',
    b'{"execute": "query-version", "id": 10}}',
    b'\x00',
    b'\xff\xfe',
    b'"a\x01"',
    b"{'execute': 'query-version', 'id': 'sq'}",
    b"{'execute': 'query-version', 'id': 'it''s'}",
    b'{"execute": "query-version", "id": "\\u00e9\\ud83d\\ude00\\u007f/"}',
    b'{"execute": "query-version", "id": "\xc3\xa9"}',
    b'{"execute": "query-version", "id": 1.5e3}',
    b'{"execute": "query-version", "id": 0.1}',
    b'{"execute": "query-version", "id": -0}',
    b'{"execute": "query-version", "id": 9223372036854775807}',
    b'{"execute": "query-version", "id": 99999999999999999999999}',
    b'{"execute": "query-version", "id": [1, [2, {}], "x"]}',
    b'{"execute": "query-version", "id": {"aa": 1, "aq": 2, "b": [3], "": 5}}',
    b'{"execute": "nosuch", "id": {"z": 1, "y": {"x": 2, "w": 3}}}',
    b'[' * 1025 + b']' * 1025,
    b'{"execute": "query-version", "id": "\\x"}',
    b'{"execute": "query-version", "id": "\\u12"}',
    b'{"execute": "query-version", "id": tru}',
]


def normalise(line):
    """The version's package string names the implementation."""
    return re.sub(rb'"package": "[^"]*"', b'"package": "P"', line)


def session(sock):
    c = QMP(sock)
    out = []
    marker = 0

    def step(raw):
        nonlocal marker
        marker += 1
        c.send_raw(raw)
        c.send_raw(b'\n{"execute": "query-commands", "id": "m%d"}' % marker)
        while True:
            line = c.recv_line()
            if b'"id": "m%d"' % marker in line:
                break
            out.append((raw, normalise(line)))

    # Before negotiation every command is refused, so the marker is refused
    # too: it still ends each case.
    for raw in PRE_NEGOTIATION:
        step(raw)
    c.send_raw(NEGOTIATE)
    out.append((NEGOTIATE, c.recv_line()))
    for raw in CASES:
        step(raw)
    c.close()
    return out


def test_same_replies_as_qsd():
    with QSD() as q:
        ref = session(q.sock)
    with Daemon() as d:
        got = session(d.sock)
    bad = 0
    for (raw, want), (_, have) in zip(ref, got):
        if want != have:
            bad += 1
            print("input  %r\n  qsd       %s\n  blockjobd %s" % (
                raw[:80], want.decode(errors="replace")[:300],
                have.decode(errors="replace")[:300]))
    assert len(ref) == len(got), "qsd gave %d lines, blockjobd %d" % (
        len(ref), len(got))
    assert bad == 0, "%d replies differ" % bad


if __name__ == "__main__":
    Runner(globals()).run()
