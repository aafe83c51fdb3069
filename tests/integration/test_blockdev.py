#!/usr/bin/env python3
"""The block layer over the real daemon's socket: a 3-layer qcow2 chain made
by qemu-img (v2 and v3 layers, a compressed base) opened from its top alone,
as query-named-block-nodes shows it (nesting, flat, implicit read-only
nodes); blockdev-del ordering and errors; malformed images refused with a
clear error while the daemon keeps serving; OFD locks against qemu-io and
qemu-img; a dirty (lazy refcounts) image repaired on open; and the issue's
`socat` session."""
import json
import os
import shutil
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qmp import TIMEOUT, Daemon, Runner, require  # noqa: E402

require("qemu-img", "qemu-io")

MiB = 1 << 20
SIZE = 4 * MiB


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def check(path):
    """qemu-img check exit code: 0 clean, 2 corrupt, 3 leaks."""
    return subprocess.run(["qemu-img", "check", "-q", path],
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode


def make_chain(d):
    """base (v3, compressed data) <- mid (v2) <- top (v3); flat.raw is the
    chain read by qemu-img for comparisons."""
    base, mid, top = (os.path.join(d, n)
                      for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE))
    run("qemu-io", "-f", "qcow2", "-c", "write -c -P 0x11 0 2M",
        "-c", "write -P 0x12 2M 1M", "-c", "write -z 1M 64k", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10",
        "-b", "base.qcow2", "-F", "qcow2", mid)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 512k 1M", mid)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2",
        "-F", "qcow2", top)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 64k",
        "-c", "write -P 0x34 3M 4k", top)
    flat = os.path.join(d, "flat.raw")
    run("qemu-img", "convert", "-U", "-O", "raw", top, flat)
    return base, mid, top, flat


def nodes(c, flat=True):
    return c.ok("query-named-block-nodes", {"flat": flat})


def by_name(c, flat=True):
    return {n["node-name"]: n for n in nodes(c, flat)}


def alive(c):
    assert c.ok("query-version")["qemu"]["major"] == 7


def test_implicit_chain():
    """Adding the top opens mid and base from the headers (relative names),
    read-only, named #blockN; query shows the nesting."""
    with Daemon() as d:
        c = d.connect()
        base, mid, top, _ = make_chain(d.workdir)
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                              "file": {"driver": "file", "filename": top}})
        ns = nodes(c)
        # top, its file, the implicit backing nodes and their files; the
        # backing nodes are newer than top (opened by it), as in qsd.
        assert len(ns) == 6, [n["node-name"] for n in ns]
        assert ns[0]["node-name"].startswith("#block"), ns[0]
        t = [n for n in ns if n["node-name"] == "top"][0]
        assert t["drv"] == "qcow2" and t["ro"] is False, t
        # flat: true leaves the depth at 0, as qsd does.
        assert t["backing_file_depth"] == 0, t
        assert by_name(c, False)["top"]["backing_file_depth"] == 2
        assert t["backing_file"] == mid, t
        assert t["file"] == top, t
        assert t["cache"] == {"no-flush": False, "direct": False,
                              "writeback": True}, t
        img = t["image"]
        assert "backing-image" not in img, img  # flat
        assert img["backing-filename"] == "mid.qcow2", img
        assert img["full-backing-filename"] == mid, img
        assert img["backing-filename-format"] == "qcow2", img
        assert img["virtual-size"] == SIZE and img["cluster-size"] == 65536
        assert img["format-specific"]["data"]["compat"] == "1.1", img
        assert img["dirty-flag"] is False, img
        q = {n["node-name"]: n for n in ns}
        implicit = [n for n in ns if n["node-name"].startswith("#block")]
        assert len(implicit) == 5, sorted(q)
        fmt = [n for n in implicit if n["drv"] == "qcow2"]
        assert sorted(n["file"] for n in fmt) == sorted([base, mid]), fmt
        backing = [n for n in implicit if n["file"] != top]
        assert len(backing) == 4 and all(n["ro"] for n in backing), implicit
        midn = [n for n in fmt if n["file"] == mid][0]
        midf = [n["node-name"] for n in implicit
                if n["drv"] == "file" and n["file"] == mid][0]
        assert midn["image"]["format-specific"]["data"]["compat"] == "0.10"
        assert midn["backing_file"] == base, midn

        # Without flat the whole chain nests under image.
        t = [n for n in nodes(c, False) if n["node-name"] == "top"][0]
        bi = t["image"]["backing-image"]
        assert bi["filename"] == mid, bi
        assert bi["backing-image"]["filename"] == base, bi
        assert "backing-image" not in bi["backing-image"], bi
        assert bi["backing-image"]["actual-size"] > 0, bi

        # Implicit nodes are not the monitor's (a backing one is refused
        # first as the overlay's backing, as qsd does; its file child for
        # not being the monitor's); deleting top frees them.
        c.err("blockdev-del", {"node-name": midn["node-name"]},
              desc="Node '%s' is busy: node is used as backing hd of 'top'"
              % midn["node-name"])
        c.err("blockdev-del", {"node-name": midf},
              desc="Node %s is not owned by the monitor" % midf)
        c.ok("blockdev-del", {"node-name": "top"})
        assert nodes(c) == []
        assert check(top) == 0


def test_chain_reads_through_stream():
    """Every byte of the chain (compressed base, v2 mid, zero cluster) read
    through the daemon: a full block-stream copies it into top, which then
    equals what qemu-img read beforehand."""
    with Daemon() as d:
        c = d.connect()
        _, _, top, flat = make_chain(d.workdir)
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                              "file": {"driver": "file", "filename": top}})
        c.ok("block-stream", {"device": "top", "job-id": "s0"})
        e = c.event("BLOCK_JOB_COMPLETED")
        assert "error" not in e["data"], e
        c.event("JOB_STATUS_CHANGE",
                lambda x: x["id"] == "s0" and x["status"] == "null")
        c.ok("blockdev-del", {"node-name": "top"})
        assert check(top) == 0
        r = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw",
                            top, flat], stdout=subprocess.DEVNULL)
        assert r.returncode == 0


def test_del_ordering():
    """Explicit nodes referencing each other: the user deletes top-down;
    errors name the node as QEMU does."""
    with Daemon() as d:
        c = d.connect()
        base, mid, top, _ = make_chain(d.workdir)
        for name, path, backing in (("base", base, None), ("mid", mid, "base"),
                                    ("top", top, "mid")):
            opts = {"driver": "qcow2", "node-name": name,
                    "file": {"driver": "file", "filename": path}}
            if backing:
                opts["backing"] = backing
            elif name == "base":
                opts["read-only"] = True
            c.ok("blockdev-add", opts)
        q = by_name(c, False)
        assert len(q) == 6, sorted(q)
        assert q["top"]["backing_file_depth"] == 2
        c.err("blockdev-add", {"driver": "qcow2", "node-name": "top",
                               "file": {"driver": "file", "filename": top}},
              desc="Duplicate nodes with node-name='top'")
        # As qsd: a backing node is blocked for its overlay.
        c.err("blockdev-del", {"node-name": "base"},
              desc="Node 'base' is busy: node is used as backing hd of "
                   "'mid'")
        c.err("blockdev-del", {"node-name": "mid"},
              desc="Node 'mid' is busy: node is used as backing hd of "
                   "'top'")
        c.err("blockdev-del", {"node-name": "nope"},
              desc="Failed to find node with node-name='nope'")
        for name in ("top", "mid", "base"):
            c.ok("blockdev-del", {"node-name": name})
        assert nodes(c) == []
        for p in (base, mid, top):
            assert check(p) == 0, p


def patch(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def make_bad(d, name="bad.qcow2"):
    p = os.path.join(d, name)
    run("qemu-img", "create", "-q", "-f", "qcow2", p, str(SIZE))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", p)
    return p


def test_malformed_images():
    """Each bad image gets a clear error from blockdev-add; the daemon keeps
    serving (and can add a good image afterwards)."""
    with Daemon() as d:
        c = d.connect()
        w = d.workdir

        def add(path, rw=True):
            return c.cmd("blockdev-add", {
                "driver": "qcow2", "node-name": "bad", "read-only": not rw,
                "file": {"driver": "file", "filename": path}})

        def refused(path, text, rw=True):
            r = add(path, rw)
            assert "error" in r, (text, r)
            assert r["error"]["class"] == "GenericError", r
            assert text in r["error"]["desc"], (text, r)
            alive(c)

        p = os.path.join(w, "raw.img")
        run("qemu-img", "create", "-q", "-f", "raw", p, "1M")
        refused(p, "Image is not in qcow2 format")
        p = make_bad(w)
        os.truncate(p, 100)
        refused(p, "qcow2 header is truncated")
        p = make_bad(w)
        os.truncate(p, 2 * 65536)
        refused(p, "Invalid L1 table offset")
        p = make_bad(w)
        patch(p, 36, struct.pack(">I", 0x40000000))
        refused(p, "Active L1 table too large")
        p = make_bad(w)
        patch(p, 24, struct.pack(">Q", 1 << 60))
        refused(p, "Image is too big")
        p = make_bad(w)
        patch(p, 96, struct.pack(">I", 7))
        refused(p, "Reference count entry width too large")
        p = make_bad(w)
        patch(p, 20, struct.pack(">I", 30))
        refused(p, "luster size")
        p = make_bad(w)
        patch(p, 72, struct.pack(">Q", 1 << 33))
        refused(p, "Unsupported qcow2 feature(s)")
        p = make_bad(w)
        patch(p, 72, struct.pack(">Q", 2))  # corrupt bit
        refused(p, "qcow2: Image is corrupt; cannot be opened read/write")
        # Dirty image whose L1 points past EOF: the repair refuses it.
        p = make_bad(w)
        patch(p, 72, struct.pack(">Q", 1))
        patch(p, 3 * 65536, struct.pack(">Q", (1 << 63) | (1 << 40)))
        refused(p, "qcow2: Could not repair dirty image: L2 table at offset "
                   "0x10000000000 lies past the end of the file")
        # ... read-only it opens (QEMU too); its data is simply unreadable.
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "ro",
                              "read-only": True,
                              "file": {"driver": "file", "filename": p}})
        c.ok("blockdev-del", {"node-name": "ro"})
        # lazy-refcounts needs a v3 image.
        p = os.path.join(w, "v2.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", p,
            "1M")
        c.err("blockdev-add", {"driver": "qcow2", "node-name": "x",
                               "lazy-refcounts": True,
                               "file": {"driver": "file", "filename": p}},
              desc="Lazy refcounts require a qcow2 image with at least qemu "
                   "1.1 compatibility level")
        # Missing file, bad option, unknown driver.
        c.err("blockdev-add", {"driver": "qcow2", "node-name": "x",
                               "file": {"driver": "file",
                                        "filename": os.path.join(w, "no")}},
              desc="Could not open '%s': No such file or directory"
              % os.path.join(w, "no"))
        c.err("blockdev-add", {"driver": "qcow3", "node-name": "x"})
        assert nodes(c) == []
        # A good image still works.
        p = make_bad(w, "good.qcow2")
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "good",
                              "file": {"driver": "file", "filename": p}})
        c.ok("blockdev-del", {"node-name": "good"})


def test_bad_l2_read_error():
    """An image whose L2 table offset lies past EOF opens (as in QEMU);
    reading it during a stream fails the job with an I/O error, and the
    daemon goes on."""
    with Daemon() as d:
        c = d.connect()
        base = make_bad(d.workdir, "base.qcow2")
        patch(base, 3 * 65536, struct.pack(">Q", (1 << 63) | (1 << 40)))
        top = os.path.join(d.workdir, "top.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2",
            "-F", "qcow2", "-u", top, str(SIZE))
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top",
                              "file": {"driver": "file", "filename": top}})
        c.ok("block-stream", {"device": "top", "job-id": "s0"})
        e = c.event("BLOCK_JOB_COMPLETED")
        assert e["data"].get("error"), e
        c.event("JOB_STATUS_CHANGE",
                lambda x: x["id"] == "s0" and x["status"] == "null")
        alive(c)
        c.ok("blockdev-del", {"node-name": "top"})
        assert check(top) == 0


class QemuIo:
    """An interactive qemu-io holding an image open (and its locks)."""

    def __init__(self, path, *args):
        self.p = subprocess.Popen(["qemu-io"] + list(args) + [path],
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        # The image is open once a read through it answers.
        self.p.stdin.write(b"read 0 512\n")
        self.p.stdin.flush()
        out = b""
        deadline = time.monotonic() + TIMEOUT
        while b"read 512/512 bytes" not in out:
            assert time.monotonic() < deadline, out
            b = self.p.stdout.read1(4096)
            assert b, out
            out += b

    def close(self):
        self.p.stdin.close()
        self.p.wait(TIMEOUT)


def test_locks():
    with Daemon() as d:
        c = d.connect()
        p = make_bad(d.workdir, "img.qcow2")
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "n",
                              "file": {"driver": "file", "filename": p}})
        r = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write 0 4k", p],
                           capture_output=True, text=True)
        assert 'Failed to get "write" lock' in r.stdout + r.stderr, r
        r = subprocess.run(["qemu-img", "info", p], capture_output=True,
                           text=True)
        assert r.returncode != 0 and "lock" in r.stderr, r
        r = subprocess.run(["qemu-img", "info", "-U", "--output=json", p],
                           capture_output=True, text=True)
        assert r.returncode == 0, r
        c.ok("blockdev-del", {"node-name": "n"})

        # The other way round: qemu-io writes the image, blockdev-add fails.
        q = QemuIo(p, "-f", "qcow2")
        try:
            c.err("blockdev-add", {"driver": "qcow2", "node-name": "n",
                                   "file": {"driver": "file",
                                            "filename": p}},
                  desc='Failed to get "write" lock')
            # Read-only with force-share is fine next to a writer.
            c.ok("blockdev-add", {"driver": "qcow2", "node-name": "ro",
                                  "read-only": True, "force-share": True,
                                  "file": {"driver": "file", "filename": p,
                                           "read-only": True,
                                           "force-share": True}})
            c.ok("blockdev-del", {"node-name": "ro"})
        finally:
            q.close()
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "n",
                              "file": {"driver": "file", "filename": p}})
        c.ok("blockdev-del", {"node-name": "n"})


def test_dirty_image_repaired():
    """A lazy-refcounts image whose writer died (dirty bit set, refcounts
    stale) is repaired when added read-write: dirty-flag false, and after
    blockdev-del qemu-img check finds no errors."""
    with Daemon() as d:
        c = d.connect()
        p = os.path.join(d.workdir, "lazy.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
            "lazy_refcounts=on", p, str(SIZE))
        subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                        "write -P 0x5a 0 1M", "-c", "abort", p],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert check(p) == 2
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "ro",
                              "read-only": True,
                              "file": {"driver": "file", "filename": p}})
        assert by_name(c)["ro"]["image"]["dirty-flag"] is True
        c.ok("blockdev-del", {"node-name": "ro"})
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "rw",
                              "file": {"driver": "file", "filename": p}})
        assert by_name(c)["rw"]["image"]["dirty-flag"] is False
        c.ok("blockdev-del", {"node-name": "rw"})
        assert check(p) == 0
        r = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c",
                            "read -P 0x5a 0 1M", p], capture_output=True,
                           text=True)
        assert "Pattern verification failed" not in r.stdout, r


def test_socat_session():
    """The issue's "done when": a real socat process pipes a few QMP lines,
    adds a 3-layer chain made by qemu-img and sees it in
    query-named-block-nodes."""
    require("socat")
    with Daemon() as d:
        _, mid, top, _ = make_chain(d.workdir)
        lines = [
            {"execute": "qmp_capabilities"},
            {"execute": "blockdev-add", "arguments": {
                "driver": "qcow2", "node-name": "top",
                "file": {"driver": "file", "filename": top}}},
            {"execute": "query-named-block-nodes", "id": "q"},
        ]
        stdin = "".join(json.dumps(x) + "\n" for x in lines)
        p = subprocess.Popen(["socat", "-t", "30", "-",
                              "UNIX-CONNECT:" + d.sock],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        p.stdin.write(stdin.encode())
        p.stdin.flush()
        # Read until the query's reply, then hang up.
        got = []
        deadline = time.monotonic() + TIMEOUT
        while not got or got[-1].get("id") != "q":
            assert time.monotonic() < deadline, got
            line = p.stdout.readline()
            assert line, (got, p.stderr.read())
            assert line.endswith(b"\r\n"), line
            got.append(json.loads(line))
        p.stdin.close()
        p.stdout.close()
        p.wait(TIMEOUT)
        assert "QMP" in got[0], got[0]
        assert got[1] == {"return": {}} and got[2] == {"return": {}}, got
        ns = got[3]["return"]
        t = [n for n in ns if n["node-name"] == "top"][0]
        assert t["backing_file_depth"] == 2, t
        assert t["backing_file"] == mid, t
        chain = t["image"]
        depth = 0
        while "backing-image" in chain:
            chain = chain["backing-image"]
            depth += 1
        assert depth == 2 and chain["filename"].endswith("base.qcow2"), chain
        assert len(ns) == 6, [n["node-name"] for n in ns]


if __name__ == "__main__":
    if shutil.which("qemu-img") is None:
        sys.exit(77)
    Runner(globals()).run()
