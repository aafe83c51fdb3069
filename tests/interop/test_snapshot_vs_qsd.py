#!/usr/bin/env python3
"""blockdev-snapshot against qemu-storage-daemon 7.2, and libvirt's whole
external-snapshot flow end to end on both daemons: blockdev-create the
file, blockdev-create the qcow2 overlay on it (backing-file, backing-fmt),
blockdev-add it with backing null, blockdev-snapshot, then block-stream
the old top away. Every reply and event must agree (allocated sizes
aside: the two qcow2 drivers place a stream's clusters differently), the
resulting image must pass qemu-img check, read as the old chain did
(qemu-img compare) and map the same ranges."""
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import qmp  # noqa: E402
from test_create_vs_qsd import run_session  # noqa: E402


def sh(cmd):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True,
                          text=True).stdout


def tree(d):
    sh("qemu-img create -q -f qcow2 %s/base.qcow2 4M" % d)
    sh("qemu-io -f qcow2 -c 'write -P 0x11 0 2M' %s/base.qcow2" % d)
    sh("qemu-img create -q -f raw %s/r.raw 1M" % d)
    sh("qemu-img create -q -f qcow2 %s/lone.qcow2 4M" % d)


def flow(d):
    def add(**kw):
        return ("blockdev-add", kw)
    return [
        add(driver="qcow2", **{"node-name": "base"},
            file={"driver": "file", "filename": d + "/base.qcow2"}),
        ("blockdev-create", {"job-id": "c1", "options": {
            "driver": "file", "filename": d + "/ov.qcow2", "size": 0}}),
        ("wait", ("c1", "concluded")), ("query-jobs", {}),
        ("job-dismiss", {"id": "c1"}),
        add(driver="file", filename=d + "/ov.qcow2", **{"node-name": "ovf"}),
        ("blockdev-create", {"job-id": "c2", "options": {
            "driver": "qcow2", "file": "ovf", "size": 4 << 20,
            "backing-file": d + "/base.qcow2", "backing-fmt": "qcow2"}}),
        ("wait", ("c2", "concluded")), ("query-jobs", {}),
        ("job-dismiss", {"id": "c2"}),
        add(driver="qcow2", file="ovf", backing=None, **{"node-name": "ov"}),
        add(driver="raw", file={"driver": "file", "filename": d + "/r.raw"},
            **{"node-name": "rr"}),
        add(driver="qcow2", **{"node-name": "lone"},
            file={"driver": "file", "filename": d + "/lone.qcow2"}),
        ("blockdev-snapshot", {"node": "nosuch", "overlay": "ov"}),
        ("blockdev-snapshot", {"node": "base", "overlay": "nosuch"}),
        ("blockdev-snapshot", {"node": "base", "overlay": "base"}),
        ("blockdev-snapshot", {"node": "base", "overlay": "rr"}),
        ("blockdev-snapshot", {"node": "base", "overlay": "ovf"}),
        ("blockdev-snapshot", {"node": "base", "overlay": "ov"}),
        ("query-named-block-nodes", {"flat": True}),
        ("blockdev-snapshot", {"node": "base", "overlay": "lone"}),
        ("blockdev-snapshot", {"node": "ov", "overlay": "ov"}),
        ("blockdev-snapshot", {"node": "lone", "overlay": "ov"}),
        ("blockdev-snapshot", {"node": "lone", "overlay": "base"}),
        ("block-stream", {"device": "ov", "job-id": "s1",
                          "auto-dismiss": False}),
        ("wait", ("s1", "concluded")), ("query-jobs", {}),
        ("job-dismiss", {"id": "s1"}),
        ("query-named-block-nodes", {"flat": True}),
        ("blockdev-del", {"node-name": "ov"}),
        ("blockdev-del", {"node-name": "ovf"}),
        ("blockdev-del", {"node-name": "base"}),
    ]


def mask(t):
    return re.sub(r'"actual-size": \d+', '"actual-size"',
                  re.sub(r"#block\d+", "#block", t))


def test_libvirt_external_snapshot_flow():
    base = qmp.tempfile.mkdtemp(prefix="snap-")
    try:
        res = []
        for cls in (qmp.QSD, qmp.Daemon):
            d = os.path.join(base, cls.__name__)
            os.mkdir(d)
            tree(d)
            t = [mask(x) for x in run_session(cls, d, flow)]
            ov = d + "/ov.qcow2"
            sh("qemu-img check -q " + ov)
            sh("qemu-img compare -q %s %s/base.qcow2" % (ov, d))
            info = json.loads(sh("qemu-img info --output=json " + ov))
            assert "backing-filename" not in info, info
            m = [{k: v for k, v in e.items() if k != "offset"}
                 for e in json.loads(sh("qemu-img map --output=json " + ov))]
            res.append((t, m, info.get("virtual-size")))
        (qt, qm, qs), (bt, bm, bs) = res
        bad = [(i, a, b) for i, (a, b) in enumerate(zip(qt, bt)) if a != b]
        for i, a, b in bad:
            print("DIFF #%d\n qsd: %s\n bjd: %s" % (i, a, b))
        assert not bad and len(qt) == len(bt), "%d differences" % len(bad)
        assert qm == bm, (qm, bm)
        assert qs == bs
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    qmp.Runner(globals()).run()
