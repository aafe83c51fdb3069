#!/usr/bin/env python3
"""blockdev-add errors against qemu-storage-daemon 7.2: which error comes
first when several options are wrong (QEMU's open order), option value
checks and their texts. Each test runs the same commands on both daemons
over identical image trees and compares every reply."""
import json
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
    run("qemu-img", "create", "-q", "-f", "raw", d + "/plain.raw", "1M")
    run("qemu-img", "create", "-q", "-f", "raw", d + "/odd.raw", "1000")
    run("qemu-img", "create", "-q", "-f", "qcow2", d + "/a.qcow2", "1M")
    run("qemu-img", "create", "-q", "-f", "qcow2", d + "/b.qcow2", "1M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 7 0 192k", d + "/b.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
        "-b", "b.qcow2", "-F", "qcow2", d + "/lazy.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F",
        "qcow2", d + "/over.qcow2")


def f(d, name, **kw):
    return dict({"driver": "file", "filename": d + "/" + name}, **kw)


def compare(script, ignore_actual_size=False):
    """script(d) -> [(command, arguments)]: run on both, all replies the
    same (the directory and implicit names' digits aside; ignore_actual_size:
    the allocated bytes of images written to, which differ)."""
    base = qmp.tempfile.mkdtemp(prefix="bdadd-")
    try:
        out = []
        for cls in (qmp.QSD, qmp.Daemon):
            d = os.path.join(base, cls.__name__)
            os.mkdir(d)
            make_tree(d)
            replies = []
            with cls() as dm:
                c = dm.connect()
                for name, args in script(d):
                    if name == "wait-completed":  # a job's end
                        r = c.event("BLOCK_JOB_COMPLETED")
                        r = {"event": r["event"], "data": r["data"]}
                    else:
                        r = c.cmd(name, args)
                    text = json.dumps(r).replace(d, "@")
                    if ignore_actual_size:
                        text = re.sub(r'"actual-size": \d+', '"actual-size"',
                                      text)
                    replies.append(re.sub(r"#block\d+", "#block", text))
                c.close()
            out.append(replies)
        bad = 0
        for (name, args), w, g in zip(script("@"), *out):
            if w != g:
                bad += 1
                print("DIFF %s %s\n qsd: %s\n bjd: %s" % (name, args, w, g))
        assert bad == 0, "%d replies differ" % bad
    finally:
        shutil.rmtree(base, ignore_errors=True)


ADD = "blockdev-add"


def test_error_order():
    # The file child opens first, then force-share, the file name,
    # detect-zeroes, the node name; the backing after the driver; options
    # nothing consumed at the very end.
    def script(d):
        return [
            (ADD, {"driver": "null-co", "node-name": "used"}),
            (ADD, {"driver": "qcow2", "node-name": "used",
                   "file": f(d, "missing")}),
            (ADD, {"driver": "qcow2", "node-name": "1abc",
                   "file": f(d, "missing")}),
            (ADD, {"driver": "qcow2", "node-name": "used",
                   "file": f(d, "a.qcow2"), "force-share": True}),
            (ADD, {"driver": "qcow2", "node-name": "1abc",
                   "file": f(d, "a.qcow2"), "detect-zeroes": "unmap"}),
            (ADD, {"driver": "file", "node-name": "x1", "filename": "",
                   "detect-zeroes": "unmap", "force-share": True}),
            (ADD, {"driver": "file", "node-name": "used", "filename": "",
                   "detect-zeroes": "unmap"}),
            (ADD, {"driver": "qcow2", "node-name": "x2",
                   "file": f(d, "plain.raw"), "backing": "nonode"}),
            (ADD, {"driver": "qcow2", "node-name": "x3",
                   "file": f(d, "a.qcow2"), "backing": "nonode",
                   "cache": {}}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script)


def test_detect_zeroes_unmap():
    def script(d):
        return [
            (ADD, {"driver": "qcow2", "node-name": "x1",
                   "file": f(d, "a.qcow2"), "detect-zeroes": "unmap"}),
            (ADD, {"driver": "qcow2", "node-name": "x2",
                   "file": f(d, "a.qcow2"), "detect-zeroes": "unmap",
                   "discard": "ignore"}),
            # a child's discard is unmap unless it says otherwise
            (ADD, {"driver": "qcow2", "node-name": "x3",
                   "file": f(d, "a.qcow2", **{"detect-zeroes": "unmap",
                                              "discard": "ignore"})}),
            (ADD, {"driver": "qcow2", "node-name": "x4",
                   "file": f(d, "a.qcow2", **{"detect-zeroes": "unmap"})}),
            (ADD, {"driver": "raw", "node-name": "x5",
                   "file": f(d, "plain.raw"), "detect-zeroes": "unmap",
                   "discard": "unmap"}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script)


def test_nested_backing_errors():
    def script(d):
        return [
            (ADD, {"driver": "null-co", "node-name": "used"}),
            (ADD, {"driver": "qcow2", "node-name": "x1",
                   "file": f(d, "a.qcow2"), "backing": "nonode"}),
            (ADD, {"driver": "qcow2", "node-name": "x2",
                   "file": f(d, "a.qcow2"),
                   "backing": {"driver": "qcow2", "file": f(d, "missing")}}),
            (ADD, {"driver": "qcow2", "node-name": "x3",
                   "file": f(d, "a.qcow2"),
                   "backing": {"driver": "qcow2",
                               "file": f(d, "plain.raw")}}),
            (ADD, {"driver": "qcow2", "node-name": "x4",
                   "file": f(d, "a.qcow2"),
                   "backing": {"driver": "qcow2", "node-name": "1x",
                               "file": f(d, "b.qcow2")}}),
            (ADD, {"driver": "qcow2", "node-name": "x5",
                   "file": f(d, "a.qcow2"),
                   "backing": {"driver": "qcow2", "node-name": "used",
                               "file": f(d, "b.qcow2")}}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script)


def test_read_only_file_child():
    def script(d):
        return [
            (ADD, f(d, "a.qcow2", **{"node-name": "rof", "read-only": True})),
            (ADD, {"driver": "qcow2", "node-name": "x1", "file": "rof"}),
            (ADD, {"driver": "qcow2", "node-name": "x2",
                   "file": f(d, "b.qcow2", **{"read-only": True})}),
            # checked when the child is taken: before qcow2's options
            (ADD, {"driver": "qcow2", "node-name": "x3",
                   "file": f(d, "b.qcow2", **{"read-only": True}),
                   "cache-size": -1}),
            (ADD, {"driver": "qcow2", "node-name": "x4", "file": {
                "driver": "raw", "file": f(d, "b.qcow2",
                                           **{"read-only": True})}}),
            # raw passes on what its parents need: nothing yet
            (ADD, {"driver": "raw", "node-name": "x5",
                   "file": f(d, "plain.raw", **{"read-only": True})}),
            (ADD, {"driver": "qcow2", "node-name": "x6", "file": "rof",
                   "read-only": True}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script)


def test_empty_cache():
    def script(d):
        return [
            (ADD, {"driver": "qcow2", "node-name": "x1",
                   "file": f(d, "a.qcow2"), "cache": {}}),
            (ADD, {"driver": "qcow2", "node-name": "x2",
                   "file": f(d, "a.qcow2", cache={})}),
            (ADD, f(d, "b.qcow2", **{"node-name": "x3", "cache": {}})),
            (ADD, {"driver": "null-co", "node-name": "x4", "cache": {}}),
            (ADD, {"driver": "raw", "node-name": "x5",
                   "file": f(d, "plain.raw"), "cache": {"direct": False}}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script)


def test_option_checks():
    def script(d):
        q = {"driver": "qcow2", "file": f(d, "a.qcow2")}
        return [
            (ADD, dict(q, **{"node-name": "x1", "cache-size": -1})),
            (ADD, dict(q, **{"node-name": "x2", "l2-cache-size": -4096})),
            (ADD, dict(q, **{"node-name": "x3",
                             "cache-clean-interval": -1})),
            (ADD, dict(q, **{"node-name": "x4",
                             "cache-clean-interval": 1 << 33})),
            (ADD, dict(q, **{"node-name": "x5",
                             "encrypt": {"format": "luks"}})),
            (ADD, dict(q, **{"node-name": "x6",
                             "encrypt": {"format": "aes"}})),
            # the header is read first
            (ADD, {"driver": "qcow2", "node-name": "x7",
                   "file": f(d, "plain.raw"), "cache-size": -1}),
            (ADD, {"driver": "raw", "node-name": "x8",
                   "file": f(d, "plain.raw"), "size": -1}),
            (ADD, {"driver": "raw", "node-name": "x9",
                   "file": f(d, "plain.raw"), "offset": -512}),
            (ADD, {"driver": "blkdebug", "node-name": "x10",
                   "image": f(d, "plain.raw"), "align": 3}),
            (ADD, {"driver": "blkdebug", "node-name": "x11",
                   "image": f(d, "missing"), "align": 3}),
            (ADD, {"driver": "blkdebug", "node-name": "x12",
                   "image": f(d, "plain.raw"), "align": -1}),
            (ADD, {"driver": "file", "node-name": "x13", "filename": ""}),
            (ADD, f(d, "plain.raw", **{"node-name": "x14",
                                       "pr-manager": "x"})),
            (ADD, f(d, "plain.raw", **{"node-name": "x15",
                                       "pr-manager": "x", "aio": "native"})),
            (ADD, {"driver": "blkdebug", "node-name": "x16",
                   "image": f(d, "plain.raw"), "align": 4096}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script)


def test_raw_offset_size():
    # raw's offset and size name the node (json:{...}); the file's length
    # is counted in whole sectors
    def script(d):
        r = {"driver": "raw", "file": f(d, "plain.raw")}
        o = {"driver": "raw", "file": f(d, "odd.raw")}
        return [
            (ADD, dict(r, **{"node-name": "r1", "offset": 0})),
            (ADD, dict(r, **{"node-name": "r2", "offset": 512,
                             "size": 1024})),
            (ADD, dict(o, **{"node-name": "r3", "size": 1024})),
            (ADD, dict(o, **{"node-name": "r4", "size": 2048})),
            (ADD, dict(o, **{"node-name": "r5", "offset": 1025})),
            (ADD, dict(o, **{"node-name": "r6", "offset": 512,
                             "size": 1000})),
            (ADD, {"driver": "qcow2", "node-name": "q1", "file": {
                "driver": "raw", "file": f(d, "a.qcow2"),
                "size": 1048576}}),
            (ADD, {"driver": "qcow2", "node-name": "q2", "file": {
                "driver": "raw", "file": f(d, "b.qcow2"), "offset": 0}}),
            ("query-named-block-nodes", {"flat": True}),
            ("query-named-block-nodes", {}),
        ]
    compare(script)



def test_lazy_refcounts_dirty():
    # qsd's qcow2 sets the dirty bit at the first cluster a lazy-refcounts
    # node links in (the image's compat bit or the option) and clears it
    # when the node goes read-only again
    def script(d):
        return [
            (ADD, {"driver": "qcow2", "node-name": "lz",
                   "file": f(d, "lazy.qcow2")}),
            (ADD, {"driver": "qcow2", "node-name": "ov",
                   "file": f(d, "over.qcow2"), "lazy-refcounts": True}),
            ("query-named-block-nodes", {"flat": True}),
            ("block-stream", {"device": "lz", "job-id": "j1"}),
            ("wait-completed", None),
            ("block-stream", {"device": "ov", "job-id": "j2"}),
            ("wait-completed", None),
            ("query-named-block-nodes", {"flat": True}),
            ("blockdev-del", {"node-name": "lz"}),
            ("blockdev-del", {"node-name": "ov"}),
            (ADD, {"driver": "qcow2", "node-name": "ro", "read-only": True,
                   "file": f(d, "lazy.qcow2"), "backing": {
                       "driver": "qcow2", "file": f(d, "b.qcow2")}}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script, ignore_actual_size=True)



def test_protocol_backing_names():
    # a header's backing name with a protocol prefix (json:{...}, nbd:...)
    # is shown as it is in full-backing-filename, not put under the
    # image's directory; plain relative names are
    def script(d):
        js = ('json:{"driver": "qcow2", "file": {"driver": "file", '
              '"filename": "%s/b.qcow2"}}' % d)
        if d != "@":
            for name, backing in (("js.qcow2", js), ("nbd.qcow2",
                                                      "nbd:localhost:1"),
                                  ("rel.qcow2", "sub/x:y.qcow2")):
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                                "-u", "-b", backing, "-F", "qcow2",
                                d + "/" + name, "1M"], check=True,
                               stdout=subprocess.DEVNULL)
        return [(ADD, {"driver": "qcow2", "node-name": n, "backing": None,
                       "file": f(d, n + ".qcow2")})
                for n in ("js", "nbd", "rel")] + [
            ("query-named-block-nodes", {"flat": True})]
    compare(script)


def test_stream_leaves_named_file_child():
    # a read-only top reopened read-write for a stream (and back) takes
    # along the file children it opened itself, not a node the monitor
    # added (QEMU's reopen queue): that one keeps its own mode
    def script(d):
        return [
            (ADD, {"driver": "file", "node-name": "f",
                   "filename": d + "/over.qcow2"}),
            (ADD, {"driver": "qcow2", "node-name": "top", "read-only": True,
                   "file": "f"}),
            ("query-named-block-nodes", {"flat": True}),
            ("block-stream", {"device": "top", "job-id": "j"}),
            ("wait-completed", None),
            ("query-named-block-nodes", {"flat": True}),
            ("blockdev-del", {"node-name": "top"}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script, ignore_actual_size=True)


def test_inherited_options():
    # children opened by a node (its file, a backing given or named in the
    # header, blkdebug's image) take its cache modes and force-share
    def script(d):
        return [
            (ADD, {"driver": "qcow2", "node-name": "fs", "read-only": True,
                   "force-share": True, "file": f(d, "lazy.qcow2")}),
            # the implicit backing shares writes: no lock conflict
            (ADD, {"driver": "qcow2", "node-name": "w",
                   "file": f(d, "b.qcow2")}),
            (ADD, {"driver": "qcow2", "node-name": "w2",
                   "file": f(d, "lazy.qcow2")}),
            ("blockdev-del", {"node-name": "w"}),
            ("blockdev-del", {"node-name": "fs"}),
            (ADD, {"driver": "qcow2", "node-name": "c",
                   "cache": {"direct": True, "no-flush": True},
                   "file": f(d, "a.qcow2"),
                   "backing": {"driver": "qcow2", "file": f(d, "b.qcow2")}}),
            (ADD, {"driver": "blkdebug", "node-name": "bd",
                   "cache": {"no-flush": True},
                   "image": f(d, "plain.raw")}),
            (ADD, {"driver": "qcow2", "node-name": "c2",
                   "cache": {"no-flush": True}, "file": f(d, "over.qcow2")}),
            ("query-named-block-nodes", {"flat": True}),
            (ADD, {"driver": "qcow2", "node-name": "fs3", "read-only": True,
                   "force-share": True, "file": f(d, "lazy.qcow2"),
                   "backing": {"driver": "qcow2", "read-only": False,
                               "file": f(d, "plain.raw")}}),
        ]
    compare(script)


def test_stream_of_force_share():
    # the read-write reopen for a stream cannot keep force-share on the top
    # or on a child it opened (its file, its backing)
    def script(d):
        return [
            (ADD, {"driver": "qcow2", "node-name": "fs", "read-only": True,
                   "force-share": True, "file": f(d, "lazy.qcow2")}),
            ("block-stream", {"device": "fs", "job-id": "j1"}),
            (ADD, {"driver": "qcow2", "node-name": "fs2", "read-only": True,
                   "file": f(d, "over.qcow2", **{"force-share": True})}),
            ("block-stream", {"device": "fs2", "job-id": "j2"}),
            ("blockdev-del", {"node-name": "fs2"}),
            (ADD, {"driver": "qcow2", "node-name": "fs3", "read-only": True,
                   "file": f(d, "a.qcow2", **{"force-share": True,
                                              "read-only": True})}),
            ("block-stream", {"device": "fs3", "job-id": "j3"}),
            (ADD, {"driver": "qcow2", "node-name": "t", "read-only": True,
                   "file": f(d, "over.qcow2"),
                   "backing": {"driver": "qcow2", "force-share": True,
                               "read-only": True, "file": f(d, "b.qcow2")}}),
            ("block-stream", {"device": "t", "job-id": "j4"}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script)



def test_blkdebug_names():
    # json: names list the flattened rules as QEMU's QDict does
    def script(d):
        img = f(d, "plain.raw")
        return [
            (ADD, {"driver": "blkdebug", "node-name": "b1", "image": img,
                   "inject-error": [{
                       "event": "read_aio", "errno": 5, "once": True,
                       "sector": 8, "state": 1, "iotype": "read",
                       "immediately": False}]}),
            (ADD, {"driver": "blkdebug", "node-name": "b2", "image": img,
                   "inject-error": [{"event": "read_aio", "errno": 28},
                                    {"event": "write_aio", "errno": 5,
                                     "sector": 16}],
                   "set-state": [{"event": "read_aio", "new_state": 2}],
                   "align": 512}),
            (ADD, {"driver": "raw", "node-name": "r3", "file": {
                "driver": "blkdebug", "image": img,
                "inject-error": [{"errno": 5, "event": "read_aio"}]}}),
            (ADD, {"driver": "raw", "node-name": "r4", "file": {
                "driver": "blkdebug", "image": img}}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script)



def test_file_length_of_written_image():
    # another node opened on a file written to sees the data's length (no
    # space reserved past it), as does its reader after the writer left
    def script(d):
        return [
            (ADD, {"driver": "qcow2", "node-name": "lz",
                   "file": f(d, "lazy.qcow2")}),
            ("block-stream", {"device": "lz", "job-id": "j1"}),
            ("wait-completed", None),
            (ADD, {"driver": "raw", "node-name": "r", "read-only": True,
                   "file": f(d, "lazy.qcow2")}),
            (ADD, f(d, "lazy.qcow2", **{"node-name": "fl",
                                        "read-only": True})),
            ("query-named-block-nodes", {"flat": True}),
            ("blockdev-del", {"node-name": "lz"}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script, ignore_actual_size=True)



def test_stream_reopens_file_chain():
    # a read-only top over blkdebug over its file: the stream's read-write
    # reopen reaches the file, the copy-on-read filter goes over it and the
    # job writes through blkdebug
    def script(d):
        return [
            (ADD, {"driver": "qcow2", "node-name": "t", "read-only": True,
                   "file": {"driver": "blkdebug",
                            "image": f(d, "over.qcow2")}}),
            ("block-stream", {"device": "t", "job-id": "j1"}),
            ("wait-completed", None),
            ("query-named-block-nodes", {"flat": True}),
            (ADD, {"driver": "qcow2", "node-name": "a", "read-only": True,
                   "file": {"driver": "blkdebug", "image": f(d, "a.qcow2")}}),
            ("block-stream", {"device": "a", "job-id": "j2"}),
            ("wait-completed", None),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script, ignore_actual_size=True)



def test_copy_on_read_writes_its_child():
    # copy-on-read always takes write-unchanged on its child: refused over
    # a read-only node, read-only itself or not; a stream's filter too
    def script(d):
        return [
            (ADD, {"driver": "copy-on-read", "node-name": "c1",
                   "file": f(d, "plain.raw", **{"read-only": True})}),
            (ADD, {"driver": "copy-on-read", "node-name": "c2",
                   "read-only": True, "file": f(d, "plain.raw")}),
            (ADD, {"driver": "raw", "node-name": "r0", "read-only": True,
                   "file": f(d, "a.qcow2")}),
            (ADD, {"driver": "copy-on-read", "node-name": "c3",
                   "file": "r0"}),
            (ADD, f(d, "b.qcow2", **{"node-name": "fo", "read-only": True})),
            (ADD, {"driver": "raw", "node-name": "r1", "file": "fo"}),
            ("block-stream", {"device": "r1", "job-id": "j"}),
            (ADD, {"driver": "copy-on-read", "node-name": "c4",
                   "file": f(d, "plain.raw")}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script)



def test_given_backing_of_image_naming_one():
    # the header's backing name is passed on as the given backing's
    # 'filename': only a 'file' child takes it
    def script(d):
        ro = {"driver": "qcow2", "read-only": True,
              "file": f(d, "over.qcow2")}
        bd = {"driver": "blkdebug", "image": f(d, "b.qcow2")}
        return [
            (ADD, f(d, "b.qcow2", **{"node-name": "bf", "read-only": True})),
            (ADD, dict(ro, **{"node-name": "q1", "backing": {
                "driver": "qcow2", "file": "bf"}})),
            (ADD, dict(ro, **{"node-name": "q2", "backing": {
                "driver": "raw", "file": {"driver": "null-co"}}})),
            (ADD, dict(ro, **{"node-name": "q3", "backing": {
                "driver": "raw", "file": {"driver": "raw",
                                          "file": f(d, "b.qcow2")}}})),
            (ADD, dict(ro, **{"node-name": "q4", "backing": {
                "driver": "qcow2", "file": bd}})),
            (ADD, dict(ro, **{"node-name": "q5", "backing": {
                "driver": "raw", "file": f(d, "b.qcow2")}})),
            # no backing in the header: all fine
            (ADD, {"driver": "qcow2", "node-name": "q6", "read-only": True,
                   "file": f(d, "a.qcow2"), "backing": {
                       "driver": "qcow2", "file": bd}}),
            ("query-named-block-nodes", {"flat": True}),
        ]
    compare(script)


qmp.Runner(globals()).run()
