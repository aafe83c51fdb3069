#!/usr/bin/env python3
"""block_resize against qemu-storage-daemon 7.2: lookups, argument and
read-only errors, file and raw nodes grown and shrunk, a qcow2 grown within
its L1 table; replies, images (qemu-img info/check) the same. qcow2
shrinking and L1 growth, which blockjobd refuses, are checked for their
refusal and for the image being left intact."""
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import qmp  # noqa: E402
from test_create_vs_qsd import images, run_session  # noqa: E402


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def tree(d):
    sh("qemu-img create -q -f raw %s/r.raw 1M" % d)
    sh("qemu-img create -q -f qcow2 %s/q.qcow2 1M" % d)
    sh("qemu-io -f qcow2 -c 'write -P 1 0 1M' %s/q.qcow2" % d)
    sh("qemu-img create -q -f raw %s/f.raw 1M" % d)


def script(d):
    def add(**kw):
        return ("blockdev-add", kw)
    rs = "block_resize"
    return [
        add(driver="raw", file={"driver": "file", "filename": d + "/r.raw"},
            **{"node-name": "r"}),
        add(driver="qcow2", **{"node-name": "q"},
            file={"driver": "file", "filename": d + "/q.qcow2"}),
        add(driver="file", filename=d + "/f.raw", **{"node-name": "f"}),
        add(driver="raw", **{"node-name": "ro", "read-only": True},
            file={"driver": "file", "filename": d + "/r.raw"}),
        (rs, {"size": 2 << 20}),
        (rs, {"node-name": "nosuch", "size": 2 << 20}),
        (rs, {"device": "x", "size": 2 << 20}),
        (rs, {"device": "x", "node-name": "r", "size": 2 << 20}),
        (rs, {"node-name": "r", "size": -1}),
        (rs, {"node-name": "ro", "size": 4 << 20}),
        (rs, {"node-name": "r", "size": 1000}),
        (rs, {"node-name": "f", "size": 3000000}),
        (rs, {"node-name": "q", "size": 1000}),
        (rs, {"node-name": "q", "size": 512 << 20}),
        (rs, {"node-name": "q", "size": 1 << 56}),
        ("query-named-block-nodes", {"flat": True}),
    ]


def test_resize_session():
    base = qmp.tempfile.mkdtemp(prefix="resize-")
    try:
        res = []
        for cls in (qmp.QSD, qmp.Daemon):
            d = os.path.join(base, cls.__name__)
            os.mkdir(d)
            tree(d)
            res.append((run_session(cls, d, script), images(d)))
        (qt, qi), (bt, bi) = res
        # A read-only twin of r.raw: qsd keeps the length it opened with,
        # blockjobd's file nodes see each other's (README: block layer).
        bad = [(a, b) for a, b in zip(qt[:-1], bt[:-1]) if a != b]
        for a, b in bad:
            print("DIFF\n qsd: %s\n bjd: %s" % (a, b))
        assert not bad and len(qt) == len(bt)
        assert qi == bi, (qi, bi)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_qcow2_shrink_and_l1_growth_refused():
    d = qmp.tempfile.mkdtemp(prefix="resize-")
    try:
        tree(d)
        with qmp.Daemon() as dm:
            c = dm.connect()
            c.ok("blockdev-add", {"driver": "qcow2", "node-name": "q",
                                  "file": {"driver": "file",
                                           "filename": d + "/q.qcow2"}})
            c.err("block_resize", {"node-name": "q", "size": 512 << 10},
                  desc="blockjobd cannot shrink qcow2 images (node 'q' is "
                  "1048576 bytes)")
            c.err("block_resize", {"node-name": "q", "size": 8 << 30},
                  desc="blockjobd cannot grow the L1 table of qcow2 images "
                  "(node 'q' is 1048576 bytes)")
            c.ok("block_resize", {"node-name": "q", "size": 256 << 20})
            n = [x for x in c.ok("query-named-block-nodes", {"flat": True})
                 if x["node-name"] == "q"][0]
            assert n["image"]["virtual-size"] == 256 << 20, n
            c.close()
        sh("qemu-img check -q %s/q.qcow2" % d)
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", d + "/q.qcow2"],
            check=True, capture_output=True, text=True).stdout)
        assert info["virtual-size"] == 256 << 20, info
        sh("qemu-io -f qcow2 -c 'read -P 1 0 1M' -c 'read -P 0 1M 255M' "
           "%s/q.qcow2" % d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    qmp.Runner(globals()).run()
