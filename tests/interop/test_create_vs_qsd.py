#!/usr/bin/env python3
"""blockdev-create against qemu-storage-daemon 7.2: the same sessions on
both daemons over identical trees; every reply, the JOB_STATUS_CHANGE
events (and where they fall relative to the replies), query-jobs and the
images made (byte for byte, qemu-img check and info) must agree. Images
made by blockjobd are also compared with what `qemu-img create` makes of
the same options."""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                ".."))
import qmp  # noqa: E402

qmp.require("qemu-img", "qemu-storage-daemon")
if not os.path.exists(qmp.binary()):
    qmp.skip("blockjobd is not built")


def sh(*a):
    subprocess.run(a, check=True, stdout=subprocess.DEVNULL)


def make_tree(d):
    sh("qemu-img", "create", "-q", "-f", "raw", d + "/f.raw", "1M")
    sh("qemu-img", "create", "-q", "-f", "raw", d + "/g.raw", "1M")
    sh("qemu-img", "create", "-q", "-f", "qcow2", d + "/qq.qcow2", "1M")
    with open(d + "/junk.raw", "wb") as f:
        f.write(bytes(range(256)) * 8192)


def run_session(cls, d, script):
    """Returns the transcript: replies and events in arrival order."""
    out, seen = [], set()

    def take(c):
        for e in c.events:
            out.append(("event", e["event"], e["data"]))
            seen.add((e["data"].get("id"), e["data"].get("status")))
        c.events.clear()

    with cls() as dm:
        c = dm.connect()
        for name, args in script(d):
            if name == "wait":  # a job's status
                if args not in seen:
                    c.event("JOB_STATUS_CHANGE",
                            lambda e, a=args: (e["id"], e["status"]) == a)
                    out.append(("event", "JOB_STATUS_CHANGE",
                                {"id": args[0], "status": args[1]}))
                    take(c)
                    seen.add(args)
                continue
            r = c.cmd(name, args)
            take(c)
            out.append(("reply", name, r))
        c.close()
    return [json.dumps(x).replace(d, "@") for x in out]


def images(d):
    res = {}
    for f in sorted(os.listdir(d)):
        p = os.path.join(d, f)
        if not os.path.isfile(p) or f.endswith((".sock", ".log")):
            continue
        with open(p, "rb") as fh:
            data = fh.read()
        info = subprocess.run(["qemu-img", "info", "--output=json", p],
                              capture_output=True, text=True)
        chk = subprocess.run(["qemu-img", "check", p], capture_output=True,
                             text=True)
        info = json.loads(info.stdout) if info.returncode == 0 else None
        if info:
            info.pop("actual-size", None)
        res[f] = (len(data), hash(data), json.dumps(info).replace(d, "@"),
                  chk.returncode)
    return res


def compare(script, expect_diff=(), layout_differs=()):
    base = qmp.tempfile.mkdtemp(prefix="create-")
    try:
        got = []
        for cls in (qmp.QSD, qmp.Daemon):
            d = os.path.join(base, cls.__name__)
            os.mkdir(d)
            make_tree(d)
            got.append((run_session(cls, d, script), images(d)))
        (qt, qi), (bt, bi) = got
        bad = 0
        for i, (a, b) in enumerate(zip(qt, bt)):
            if a != b and not any(x in a for x in expect_diff):
                bad += 1
                print("DIFF #%d\n qsd: %s\n bjd: %s" % (i, a, b))
        if len(qt) != len(bt):
            bad += 1
            print("DIFF lengths %d %d" % (len(qt), len(bt)))
        for f in sorted(set(qi) | set(bi)):
            a, b = qi.get(f), bi.get(f)
            if f in layout_differs and a and b:
                a, b = (a[0],) + a[2:], (b[0],) + b[2:]
            if a != b:
                bad += 1
                print("IMAGE %s\n qsd: %s\n bjd: %s" % (f, qi.get(f),
                                                        bi.get(f)))
        assert bad == 0, "%d differences" % bad
    finally:
        shutil.rmtree(base, ignore_errors=True)


def job(i, options):
    jid = "j%d" % i
    return [("blockdev-create", {"job-id": jid, "options": options}),
            ("wait", (jid, "concluded")),
            ("query-jobs", {}),
            ("job-dismiss", {"id": jid})]


def session(cases, pre=()):
    def script(d):
        s = [("blockdev-add", {"driver": "file", "node-name": n,
                               "filename": d + "/" + f})
             for n, f in (("f", "f.raw"), ("g", "g.raw"), ("k", "junk.raw"))]
        s.append(("blockdev-add", {"driver": "file", "node-name": "ro",
                                   "filename": d + "/g.raw",
                                   "read-only": True}))
        s += [(n, a) for n, a in pre]
        for i, c in enumerate(cases(d)):
            s += job(i, c)
        s.append(("query-named-block-nodes", {"flat": True}))
        return s
    return script


def test_qcow2_layouts():
    # Each on its own file: the image files must come out identical.
    def cases(d):
        out = []
        opts = [{}, {"cluster-size": 512}, {"cluster-size": 4096},
                {"cluster-size": 8192}, {"cluster-size": 2097152},
                {"version": "v2"}, {"lazy-refcounts": True},
                {"refcount-bits": 1}, {"refcount-bits": 64},
                {"backing-file": "b.qcow2", "backing-fmt": "qcow2"},
                {"backing-file": "b.raw"},
                {"backing-file": "x" * 20, "backing-fmt": "raw",
                 "cluster-size": 512},
                {"version": "v2", "backing-file": "b", "backing-fmt": "raw"},
                {"preallocation": "metadata"},
                {"preallocation": "metadata", "cluster-size": 4096},
                {"size": 0}, {"size": 1 << 40}]
        for i, o in enumerate(opts):
            name = "c%d.qcow2" % i
            out.append({"driver": "file", "filename": d + "/" + name,
                        "size": 0})
            q = {"driver": "qcow2", "size": 64 << 20,
                 "file": {"driver": "file", "filename": d + "/" + name}}
            q.update(o)
            out.append(q)
        return out
    # More refcount blocks than one: QEMU places them where its allocation
    # ran out, ours go after the table (same size, info and check).
    compare(session(cases), layout_differs=("c14.qcow2",))


def test_qcow2_errors():
    def cases(d):
        q = {"driver": "qcow2", "file": "f", "size": 65536}
        bad = [{"file": "nosuch", "size": 1000}, {"size": 1000},
               {"cluster-size": 1000}, {"cluster-size": 4194304},
               {"cluster-size": 256},
               {"backing-fmt": "qcow2", "preallocation": "metadata"},
               {"backing-file": "x", "preallocation": "falloc",
                "version": "v2", "lazy-refcounts": True},
               {"lazy-refcounts": True, "version": "v2",
                "refcount-bits": 3},
               {"version": "v2", "refcount-bits": 8},
               {"refcount-bits": 128},
               {"extended-l2": True, "version": "v2"},
               {"extended-l2": True, "cluster-size": 4096},
               {"data-file-raw": True}, {"data-file": "nosuch"},
               {"data-file": "g", "version": "v2"},
               {"compression-type": "zstd", "version": "v2"},
               {"encrypt": {"format": "luks", "key-secret": "s0"}},
               {"encrypt": {"format": "qcow"}},
               {"backing-file": "y" * 1100}, {"size": -512},
               {"size": 1 << 62}, {"file": "ro"}, {"file": "k"},
               {"file": {"driver": "file", "filename": d + "/new.qcow2"}},
               {"file": {"driver": "file", "filename": d + "/qq.qcow2"}}]
        return [dict(q, **b) for b in bad]
    compare(session(cases, pre=[
        ("blockdev-add", {"driver": "qcow2", "node-name": "q",
                          "file": {"driver": "file",
                                   "filename": "@/qq.qcow2"}})]))


def test_file_driver():
    def cases(d):
        return [{"driver": "file", "filename": d + "/nodir/x", "size": 0},
                {"driver": "file", "filename": d + "/a", "size": 1000},
                {"driver": "file", "filename": d + "/b", "size": 65536,
                 "preallocation": "metadata"},
                {"driver": "file", "filename": d + "/c", "size": 65536,
                 "preallocation": "full", "nocow": True},
                {"driver": "file", "filename": d + "/e", "size": 1 << 20,
                 "preallocation": "falloc"},
                {"driver": "file", "filename": d + "/f.raw", "size": 4096},
                {"driver": "file", "filename": d + "/g", "size": -1}]
    compare(session(cases))


def test_sync_errors_and_verbs():
    def script(d):
        return [("blockdev-create", {"job-id": "x", "options": {
                    "driver": "raw", "size": 5}}),
                ("blockdev-create", {"options": {"driver": "raw"}}),
                ("blockdev-create", {"job-id": "x", "options": {
                    "driver": "raw"}}),
                ("blockdev-create", {"job-id": "x", "options": {
                    "driver": "qcow2", "file": "f", "size": 0,
                    "preallocation": "bogus"}}),
                ("blockdev-create", {"job-id": "1x", "options": {
                    "driver": "file", "filename": d + "/a", "size": 0}}),
                ("blockdev-create", {"job-id": "a", "options": {
                    "driver": "file", "filename": d + "/a", "size": 0}}),
                ("wait", ("a", "concluded")),
                ("block-job-cancel", {"device": "a"}),
                ("query-block-jobs", {}),
                ("job-cancel", {"id": "a"}),
                ("blockdev-create", {"job-id": "a", "options": {
                    "driver": "file", "filename": d + "/a", "size": 0}}),
                ("query-jobs", {}),
                ("job-dismiss", {"id": "a"})]
    compare(script)


def info_of(p):
    j = json.loads(subprocess.run(["qemu-img", "info", "--output=json", p],
                                  capture_output=True, text=True,
                                  check=True).stdout)
    for k in ("filename", "actual-size", "full-backing-filename"):
        j.pop(k, None)
    return j


def test_same_as_qemu_img_create():
    """blockjobd's image and qemu-img create's: same info, both clean."""
    variants = [
        ([], {}),
        (["-o", "cluster_size=4096,lazy_refcounts=on"],
         {"cluster-size": 4096, "lazy-refcounts": True}),
        (["-o", "compat=0.10"], {"version": "v2"}),
        (["-o", "refcount_bits=8"], {"refcount-bits": 8}),
        (["-b", "base.qcow2", "-F", "qcow2", "-u"],
         {"backing-file": "base.qcow2", "backing-fmt": "qcow2"}),
        (["-o", "preallocation=metadata"], {"preallocation": "metadata"}),
        (["-o", "preallocation=falloc"], {"preallocation": "falloc"}),
        (["-o", "preallocation=full"], {"preallocation": "full"}),
    ]
    d = qmp.tempfile.mkdtemp(prefix="create-img-")
    try:
        sh("qemu-img", "create", "-q", "-f", "qcow2", d + "/base.qcow2",
           "8M")
        with qmp.Daemon() as dm:
            c = dm.connect()
            for i, (args, opts) in enumerate(variants):
                ours, theirs = d + "/o%d.qcow2" % i, d + "/t%d.qcow2" % i
                sh("qemu-img", "create", "-q", "-f", "qcow2", *args, theirs,
                   "8M")
                o = {"driver": "qcow2", "size": 8 << 20,
                     "file": {"driver": "file", "filename": ours}}
                o.update(opts)
                for jid, opt in (("f%d" % i, {"driver": "file",
                                              "filename": ours, "size": 0}),
                                 ("q%d" % i, o)):
                    c.ok("blockdev-create", {"job-id": jid, "options": opt})
                    c.event("JOB_STATUS_CHANGE",
                            lambda e, j=jid: e == {"id": j,
                                                   "status": "concluded"})
                    jobs = c.ok("query-jobs")
                    assert "error" not in jobs[0], jobs
                    c.ok("job-dismiss", {"id": jid})
                sh("qemu-img", "check", "-q", ours)
                assert info_of(ours) == info_of(theirs), (args, info_of(ours),
                                                          info_of(theirs))
                r = subprocess.run(["qemu-img", "compare", "-q", ours,
                                    theirs])
                assert r.returncode == 0, args
                if "preallocation" not in opts:
                    with open(ours, "rb") as a, open(theirs, "rb") as b:
                        assert a.read() == b.read(), args
            c.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    qmp.Runner(globals()).run()
