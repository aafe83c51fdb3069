#!/usr/bin/env python3
"""blockdev-add / blockdev-del / query-named-block-nodes: blockjobd against
qemu-storage-daemon 7.2 on identical image trees. Replies must match after
normalising what legitimately differs (the work directory and the random
digits of implicit #blockNNN names)."""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                ".."))
import qmp  # noqa: E402

qmp.require("qemu-img", "qemu-storage-daemon")
if not os.path.exists(qmp.binary()):
    qmp.skip("blockjobd is not built")


def make_tree(d):
    def run(*a):
        subprocess.run(a, check=True, stdout=subprocess.DEVNULL)
    run("qemu-img", "create", "-q", "-f", "raw", d + "/base.raw", "2M")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F",
        "raw", d + "/mid.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F",
        "qcow2", d + "/top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", d + "/a.qcow2", "1M")
    run("qemu-img", "create", "-q", "-f", "raw", d + "/plain.raw", "1M")


def script(d):
    f = lambda n: {"driver": "file", "filename": d + "/" + n}
    return [
        ("blockdev-add", {"driver": "qcow2", "node-name": "top",
                          "file": f("top.qcow2")}),
        ("blockdev-add", {"driver": "null-co", "node-name": "nul"}),
        ("blockdev-add", {"driver": "null-co", "node-name": "nul2",
                          "size": 4096, "read-zeroes": True}),
        ("blockdev-add", {"driver": "raw", "node-name": "bd", "file": {
            "driver": "blkdebug", "inject-error": [{"event": "read_aio"}],
            "image": f("plain.raw")}}),
        ("blockdev-add", dict(f("a.qcow2"), **{"node-name": "n0"})),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q0",
                          "file": "n0"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q1",
                          "file": "n0"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q2",
                          "read-only": True, "file": "n0"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q3",
                          "file": f("plain.raw")}),
        ("blockdev-add", dict(f("nonexist"), **{"node-name": "x"})),
        ("blockdev-add", dict(f("a.qcow2"), **{"node-name": "x",
                                               "aio": "native"})),
        ("blockdev-add", dict(f("a.qcow2"), **{"node-name": "x",
                                               "force-share": True})),
        ("blockdev-add", {"driver": "null-co", "node-name": "top"}),
        ("blockdev-add", {"driver": "null-co", "node-name": "_x"}),
        ("blockdev-add", {"driver": "null-co",
                          "node-name": "a234567890123456789012345678901x"}),
        ("blockdev-add", {"driver": "null-co"}),
        ("blockdev-add", {"node-name": "x"}),
        ("blockdev-add", {"driver": "raw", "node-name": "x",
                          "file": "nosuch"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "nb",
                          "backing": None, "file": f("mid.qcow2")}),
        ("blockdev-add", {"driver": "raw", "node-name": "r1", "file": "nul"}),
        ("blockdev-del", {"node-name": "nul"}),
        ("blockdev-del", {"node-name": "nosuch"}),
        ("query-named-block-nodes", None),
        ("query-named-block-nodes", {"flat": True}),
        ("blockdev-del", {"node-name": "r1"}),
        ("blockdev-del", {"node-name": "nul"}),
        ("blockdev-del", {"node-name": "q0"}),
        ("blockdev-del", {"node-name": "n0"}),
        ("query-named-block-nodes", {"flat": True}),
    ]


def normalise(reply, d):
    text = qmp.json.dumps(reply)
    text = text.replace(d, "@")
    # implicit names: a counter plus two random digits in QEMU
    return re.sub(r"#block\d+", "#block", text)


def run_all(daemon, d):
    c = daemon.connect()
    out = []
    for name, args in script(d):
        out.append(normalise(c.cmd(name, args), d))
    c.close()
    return out


def test_same_replies():
    base = qmp.tempfile.mkdtemp(prefix="drv-")
    try:
        da, db = base + "/a", base + "/b"
        os.mkdir(da)
        os.mkdir(db)
        make_tree(da)  # made twice, not copied: copies lose sparseness
        make_tree(db)
        with qmp.QSD() as q:
            want = run_all(q, da)
        with qmp.Daemon() as b:
            got = run_all(b, db)
        bad = 0
        for (name, args), w, g in zip(script("@"), want, got):
            if w != g:
                bad += 1
                print("DIFF %s %s\n qsd: %s\n bjd: %s" % (name, args, w, g))
        assert bad == 0, "%d replies differ" % bad
    finally:
        shutil.rmtree(base, ignore_errors=True)


qmp.Runner(globals()).run()
