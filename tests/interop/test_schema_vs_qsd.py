#!/usr/bin/env python3
"""Differential test of argument validation: the same malformed (and a few
well-formed) command arguments to qemu-storage-daemon 7.2 and to blockjobd
must give byte-identical replies. Covers nested member paths
('file.filename', list elements), enums inside nested objects, alternates
(BlockdevRef, BlockdevRefOrNull, Qcow2OverlapChecks), flat unions, integer
ranges, uint64, bool, null for optional members, unexpected members at
every depth, and the order in which QEMU reports several problems."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from qmp import QMP, QSD, Daemon, Runner, require  # noqa: E402

require("qemu-storage-daemon")

F = {"driver": "file", "filename": "/nonexistent/x.img"}


def q2(**kw):
    a = {"driver": "qcow2", "node-name": "x", "file": dict(F)}
    a.update(kw)
    return a


def bd(image):
    return {"driver": "blkdebug", "image": image}


ADD = [
    # discriminator and top-level members
    {},
    {"node-name": "x"},
    {"driver": 5},
    {"driver": "bogus"},
    {"driver": None},
    {"driver": "qcow2", "node-name": "x"},
    {"driver": "file", "bogus": 1},
    {"driver": "file", "filename": "/nonexistent/a", "extra": 1},
    {"driver": "null-co", "node-name": None},
    {"driver": "null-co", "node-name": 5},
    {"driver": "null-co", "read-only": "yes"},
    {"driver": "null-co", "read-only": None},
    {"driver": "null-co", "discard": "sometimes"},
    {"driver": "null-co", "detect-zeroes": 1},
    # nested file objects
    q2(file={"driver": "file"}),
    q2(file={"driver": "file", "filename": "a", "aio": "bogus"}),
    q2(file={"driver": "file", "filename": "a", "aio": 3}),
    q2(file={"driver": "file", "filename": "a", "bogus": 1}),
    q2(file={"driver": "file", "filename": 7}),
    q2(file={"driver": "bogus"}),
    q2(file={}),
    q2(file={"driver": "raw", "file": {"driver": "file"}}),
    q2(file={"driver": "raw", "file": {"driver": "file", "filename": "a",
                                       "locking": "maybe"}}),
    q2(file=bd({"driver": "file"})),
    q2(file=bd({"driver": "file", "filename": "a", "x": 1})),
    # alternates
    q2(file=5),
    q2(file=None),
    q2(file=[]),
    q2(file=True),
    q2(backing=5),
    q2(backing=[1]),
    q2(backing={"driver": "file"}),
    q2(backing=None, bogus=1),
    q2(**{"overlap-check": "bogus"}),
    q2(**{"overlap-check": 5}),
    q2(**{"overlap-check": {"template": "bogus"}}),
    q2(**{"overlap-check": {"main-header": 1}}),
    q2(**{"overlap-check": {"x": True}}),
    # flat union inside a struct
    q2(encrypt={}),
    q2(encrypt={"format": "bogus"}),
    q2(encrypt={"format": "aes", "key-secret": 5}),
    q2(encrypt={"format": "luks", "x": 1}),
    q2(encrypt=5),
    # integers, ranges, uint64
    q2(**{"cache-size": "big"}),
    q2(**{"cache-size": 1.5}),
    q2(**{"cache-size": 1e30}),
    q2(**{"cache-size": 99999999999999999999}),
    {"driver": "null-co", "size": -1.0},
    {"driver": "null-co", "latency-ns": -1, "size": "x"},
    {"driver": "null-co", "latency-ns": 1.5},
    {"driver": "null-co", "latency-ns": 1.0},
    {"driver": "null-co", "latency-ns": 1e3},
    {"driver": "null-co", "latency-ns": 1e30},
    {"driver": "null-co", "latency-ns": 18446744073709551616},
    {"driver": "null-co", "latency-ns": "1"},
    {"driver": "null-co", "read-zeroes": 0},
    {"driver": "null-co", "cache": {"direct": 1}},
    {"driver": "null-co", "cache": 5},
    {"driver": "null-co", "cache": {"bogus": 1}},
    {"driver": "blkdebug", "image": F, "max-transfer": 4294967296},
    {"driver": "blkdebug", "image": F, "max-transfer": -2147483649},
    {"driver": "blkdebug", "image": F, "opt-discard": 1.0},
    # list elements
    {"driver": "blkdebug", "image": F, "inject-error": {}},
    {"driver": "blkdebug", "image": F, "inject-error": [5]},
    {"driver": "blkdebug", "image": F, "inject-error": [{}]},
    {"driver": "blkdebug", "image": F,
     "inject-error": [{"event": "read_aio"}, {"event": "bogus"}]},
    {"driver": "blkdebug", "image": F,
     "inject-error": [{"event": "read_aio"},
                      {"event": "read_aio", "sector": "x"}]},
    {"driver": "blkdebug", "image": F,
     "inject-error": [{"event": "read_aio", "y": 1}]},
    {"driver": "blkdebug", "image": F, "take-child-perms": ["write", 1]},
    {"driver": "blkdebug", "image": F, "take-child-perms": ["nope"]},
    q2(file=bd({"driver": "file", "filename": "a"}) |
       {"inject-error": [{"event": "nope"}]}),
    q2(file=bd({"driver": "file", "filename": "a"}) |
       {"inject-error": [{"event": "read_aio", "errno": "x"}]}),
    q2(file=bd(F) | {"max-transfer": 4294967296}),
    q2(file=bd(F) | {"max-transfer": "x"}),
    q2(file=bd(5)),
    q2(file=bd(None)),
    q2(file={"driver": "raw", "file": 5}),
    q2(file={"driver": "raw", "file": {"driver": "null-co", "size": "x"}}),
    q2(file={"driver": "raw", "offset": -1.5, "file": F}),
    q2(backing={"driver": "qcow2", "file": {"driver": "file",
                                            "filename": "a", "z": 1}}),
    q2(backing={"driver": "qcow2", "backing": {"driver": "qcow2",
                                               "file": {}}}),
    q2(file={"driver": "file", "filename": "a", "aio": "bogus", "z": 1}),
    q2(**{"l2-cache-size": 1, "bogus": 2, "cache-size": "x"}),
    {"driver": "null-co", "size": 1, "node-name": "n" * 5, "zz": None},
    # several unexpected members: QEMU names the first left in its GLib
    # hash table, whatever the order in the text
    {"driver": "null-co", "zz": 1, "aa": 2},
    {"driver": "null-co", "aa": 1, "zz": 2},
    {"driver": "null-co", "size": 1, "zz": 1, "aa": 2, "b": 3, "c": 4,
     "d": 5, "e": 6, "f": 7, "g": 8, "h": 9, "\u00e9": 10},
    dict({"driver": "null-co"}, **{"k%d" % i: i for i in range(40)}),
    q2(file={"driver": "file", "filename": "a", "y": 1, "b": 2}),
]

OTHER = [
    ("qmp_capabilities", {"enable": ["oob", 5]}),
    ("query-version", {"x": None}),
    ("blockdev-del", {}),
    ("blockdev-del", {"node-name": 5}),
    ("blockdev-del", {"node-name": "x", "force": True}),
    ("query-named-block-nodes", {"flat": "yes"}),
    ("block-stream", {}),
    ("block-stream", {"device": 5}),
    ("block-stream", {"device": "x", "speed": "fast"}),
    ("block-stream", {"device": "x", "on-error": "bogus"}),
    ("block-stream", {"device": "x", "base-node": None}),
    ("block-stream", {"device": "x", "auto-finalize": "no"}),
    ("block-stream", {"device": "x", "backing-file": 1}),
    ("block-job-set-speed", {"device": "x"}),
    ("block-job-set-speed", {"device": "x", "speed": 1.5}),
    ("block-job-cancel", {"device": "x", "force": 1}),
    ("job-dismiss", {"id": None}),
    ("query-jobs", {"a": 1}),
    ("query-version", {"zz": 1, "aa": 2, "b": 3}),
    ("query-version", {"aa": 1, "zz": 2, "b": 3}),
]

# Whole requests: with several faulty members QEMU reports the first in its
# QDict's order.
RAW = [
    b'{"foo": 1, "bar": 1}',
    b'{"bar": 1, "foo": 1, "execute": 2}',
    b'{"execute": 2, "arguments": 3, "zz": 1}',
    b'{"arguments": 3, "execute": 2}',
    b'{"exec-oob": "x", "execute": "query-version"}',
    b'{"execute": "query-version", "exec-oob": "x"}',
    b'{"exec-oob": 1, "execute": 2}',
    b'{"id": 1, "a": 1, "b": 2, "c": 3, "d": 4, "execute": "x"}',
]


def session(sock):
    c = QMP(sock)
    c.send_raw(b'{"execute": "qmp_capabilities", '
               b'"arguments": {"enable": ["oob"]}}')
    assert c.reply() == {"return": {}}
    out = []
    n = 0
    for args in ADD:
        n += 1
        c.send_raw(json.dumps({"execute": "blockdev-add", "arguments": args,
                               "id": n}).encode())
        out.append(("blockdev-add", args, c.reply()))
    for cmd, args in OTHER:
        n += 1
        c.send_raw(json.dumps({"execute": cmd, "arguments": args,
                               "id": n}).encode())
        out.append((cmd, args, c.reply()))
    for raw in RAW:
        c.send_raw(raw)
        out.append(("raw", raw.decode(), c.reply()))
    c.close()
    return out


def test_validation_same_as_qsd():
    with QSD() as q:
        ref = session(q.sock)
    with Daemon() as d:
        got = session(d.sock)
    assert len(ref) == len(got)
    bad = 0
    for (cmd, args, want), (_, _, have) in zip(ref, got):
        if want != have:
            bad += 1
            print("%s %s\n  qsd       %s\n  blockjobd %s" % (
                cmd, json.dumps(args)[:200], json.dumps(want)[:300],
                json.dumps(have)[:300]))
    assert bad == 0, "%d of %d replies differ" % (bad, len(ref))


if __name__ == "__main__":
    Runner(globals()).run()
