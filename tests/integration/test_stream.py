#!/usr/bin/env python3
"""block-stream over the socket: what it copies and where the chain ends up
(3-layer qcow2 chains made by qemu-img/qemu-io, then qemu-img check and
compare against the chain flattened beforehand), the exact event order of a
run, streams with nothing to copy, and the command's validation errors.
Control verbs: test_stream_control.py; on-error: test_stream_errors.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stream_util import (  # noqa: E402
    MiB, SIZE, VALIDATION, Daemon, Runner, add_chain, allocated, check,
    del_nodes, img_info, img_map, job_info, make_chain, make_raw_base, mark,
    require, same_content, tokens, transcript, wait_first_chunk, wait_status)

require("qemu-img", "qemu-io")

SUCCESS = ["created", "running", "return", "waiting", "pending",
           "BLOCK_JOB_COMPLETED", "concluded", "null"]


def completed(c, since):
    return [m["data"] for m in transcript(c, since)
            if m.get("event") == "BLOCK_JOB_COMPLETED"]


def stream(c, args):
    """Runs block-stream to the end; returns the event/reply tokens."""
    m = mark(c)
    r = c.cmd("block-stream", args)
    assert r == {"return": {}}, (args, r)
    wait_status(c, args["job-id"], "null")
    return m, tokens(c, m)


def allocated_in_top(path):
    return allocated(path)


def test_full_stream():
    with Daemon() as d:
        c = d.connect()
        base, mid, top, flat = make_chain(d.workdir)
        add_chain(c, (base, mid, top))
        m, seq = stream(c, {"device": "top", "job-id": "s0"})
        assert seq == SUCCESS, seq
        assert completed(c, m) == [{"device": "s0", "len": SIZE,
                                    "offset": SIZE, "speed": 0,
                                    "type": "stream"}], completed(c, m)
        assert c.ok("query-block-jobs") == [] and c.ok("query-jobs") == []
        nodes = {n["node-name"]: n for n in
                 c.ok("query-named-block-nodes", {"flat": True})}
        assert "backing_file" not in nodes["top"], nodes["top"]
        assert nodes["top"]["backing_file_depth"] == 0, nodes["top"]
        # mid and base stay: the monitor still owns them.
        del_nodes(c, "top", "mid", "base")
        check(top)
        same_content(top, flat)
        info = img_info(top)
        assert "backing-filename" not in info, info
        # Only what the chain held is allocated; [3M, 4M) was never written.
        assert allocated_in_top(top) == [(0, 3 * MiB)], img_map(top)


def test_stream_to_base_node():
    with Daemon() as d:
        c = d.connect()
        base, mid, top, flat = make_chain(d.workdir)
        add_chain(c, (base, mid, top))
        m, seq = stream(c, {"device": "top", "job-id": "s0",
                            "base-node": "base"})
        assert seq == SUCCESS, seq
        assert completed(c, m)[0]["offset"] == SIZE
        nodes = {n["node-name"]: n for n in
                 c.ok("query-named-block-nodes", {"flat": True})}
        assert nodes["top"]["backing_file"] == base, nodes["top"]
        # mid fell out of the chain but the monitor still owns it.
        del_nodes(c, "top", "mid", "base")
        check(top)
        same_content(top, flat)
        info = img_info(top)
        assert info["backing-filename"] == base, info
        assert info["backing-filename-format"] == "qcow2", info
        # top's own cluster plus what mid held; base's data stays in base.
        assert allocated_in_top(top) == [(0, 64 * 1024),
                                         (512 * 1024, MiB)], img_map(top)


def test_stream_bottom_base_and_backing_file():
    """bottom=mid and base=<file name> both stream mid only; backing-file
    is written into the header as given."""
    for extra in ({"bottom": "mid"}, {"base": "BASE"},
                  {"base-node": "base", "backing-file": "custom.qcow2"}):
        with Daemon() as d:
            c = d.connect()
            base, mid, top, flat = make_chain(d.workdir)
            # A header name the chain can still be opened by.
            os.symlink(base, os.path.join(d.workdir, "custom.qcow2"))
            add_chain(c, (base, mid, top))
            args = {"device": "top", "job-id": "s0"}
            args.update({k: (base if v == "BASE" else v)
                         for k, v in extra.items()})
            m, seq = stream(c, args)
            assert seq == SUCCESS, (extra, seq)
            del_nodes(c, "top", "mid", "base")
            check(top)
            info = img_info(top)
            want = extra.get("backing-file", base)
            assert info["backing-filename"] == want, (extra, info)
            same_content(top, flat)
            assert allocated_in_top(top) == [(0, 64 * 1024),
                                             (512 * 1024, MiB)], img_map(top)


def test_nothing_to_copy():
    """base = the direct backing, bottom = the top itself, a top without
    backing: the job ends at once with len 0, every event before the
    reply (as qemu-storage-daemon sends them)."""
    with Daemon() as d:
        c = d.connect()
        base, mid, top, flat = make_chain(d.workdir)
        add_chain(c, (base, mid, top))
        for i, args in enumerate(({"device": "top", "base-node": "mid"},
                                  {"device": "top", "bottom": "top"},
                                  {"device": "base"})):
            args["job-id"] = "n%d" % i
            m = mark(c)
            r = c.cmd("block-stream", args)
            assert r == {"return": {}}, r
            assert tokens(c, m) == ["created", "running", "waiting",
                                    "pending", "BLOCK_JOB_COMPLETED",
                                    "concluded", "null", "return"], (
                args, tokens(c, m))
            assert completed(c, m) == [{"device": args["job-id"], "len": 0,
                                        "offset": 0, "speed": 0,
                                        "type": "stream"}]
        del_nodes(c, "top", "mid", "base")
        check(top)
        same_content(top, flat)
        # Even a job that copied nothing rewrites the backing string: the top
        # still names mid (the base given), and nothing was copied into it.
        assert img_info(top)["backing-filename"] == mid
        assert allocated_in_top(top) == [(0, 64 * 1024)], img_map(top)


def test_validation_errors():
    with Daemon() as d:
        c = d.connect()
        paths = make_chain(d.workdir)
        add_chain(c, paths)
        m = mark(c)
        for args, desc in VALIDATION:
            c.err("block-stream", args, desc=desc)
        assert [t for t in tokens(c, m) if not t.startswith("error")] == []
        # A negative speed fails once the job object exists (created, null).
        m = mark(c)
        c.err("block-stream", {"device": "top", "job-id": "s1", "speed": -1},
              desc="Parameter 'speed' expects a non-negative value")
        assert tokens(c, m) == ["created", "null", "error: Parameter 'speed' "
                                "expects a non-negative value"], tokens(c, m)
        assert c.ok("query-jobs") == []
        # Nothing was claimed by the failed attempts: a stream still runs.
        _, seq = stream(c, {"device": "top", "job-id": "s1"})
        assert seq == SUCCESS, seq


def test_busy_nodes_and_duplicate_id():
    with Daemon() as d:
        c = d.connect()
        paths = make_chain(d.workdir)
        add_chain(c, paths)
        other = os.path.join(d.workdir, "o")
        os.mkdir(other)
        raw, t2 = make_raw_base(other)
        c.ok("blockdev-add", {"driver": "raw", "node-name": "obase",
                              "file": {"driver": "file", "filename": raw}})
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "otop",
                              "backing": "obase",
                              "file": {"driver": "file", "filename": t2}})
        c.ok("block-stream", {"device": "top", "job-id": "s0", "speed": 1})
        wait_first_chunk(c, "s0")
        busy = "Node '%s' is busy: block device is in use by block job: stream"
        c.err("block-stream", {"device": "top", "job-id": "s1"},
              desc=busy % "top")
        c.err("block-stream", {"device": "mid", "job-id": "s1"},
              desc=busy % "mid")
        c.err("block-stream", {"device": "otop", "job-id": "s0"},
              desc="Job ID 's0' already in use")
        # A disjoint chain streams meanwhile.
        _, seq = stream(c, {"device": "otop", "job-id": "s1"})
        assert seq == SUCCESS, seq
        assert job_info(c, "s0")["status"] == "running"
        c.ok("block-job-set-speed", {"device": "s0", "speed": 0})
        wait_status(c, "s0", "null")


def test_read_only_top():
    with Daemon() as d:
        c = d.connect()
        base, mid, top, flat = make_chain(d.workdir)
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "ro",
                              "read-only": True,
                              "file": {"driver": "file", "filename": top,
                                       "read-only": True}})
        c.err("block-stream", {"device": "ro", "job-id": "s0"},
              desc="Block node is read-only")
        assert c.ok("query-jobs") == []
        del_nodes(c, "ro")


def test_read_only_top_reopened():
    """A top added read-only whose file child is read-only only by default
    is reopened read-write for the job and read-only again afterwards; the
    implicit backing nodes that fell out of the chain are released."""
    with Daemon() as d:
        c = d.connect()
        base, mid, top, flat = make_chain(d.workdir)
        c.ok("blockdev-add", {"driver": "qcow2", "node-name": "ro",
                              "read-only": True,
                              "file": {"driver": "file", "filename": top}})
        _, seq = stream(c, {"device": "ro", "job-id": "s0"})
        assert seq == SUCCESS, seq
        nodes = {n["node-name"]: n for n in
                 c.ok("query-named-block-nodes", {"flat": True})}
        assert nodes["ro"]["ro"] is True, nodes["ro"]
        assert len(nodes) == 2, sorted(nodes)  # ro and its file
        del_nodes(c, "ro")
        check(top)
        same_content(top, flat)


def test_tuning_arguments():
    """x-queue-depth and x-chunk-size (blockjobd's own, x- as QEMU names
    experimental arguments): bounds checked before anything else, and any
    allowed combination copies the same chain correctly."""
    with Daemon() as d:
        c = d.connect()
        m = mark(c)
        for args, desc in [
                ({"x-queue-depth": 0},
                 "Parameter 'x-queue-depth' expects a value between 1 and 64"),
                ({"x-queue-depth": 65},
                 "Parameter 'x-queue-depth' expects a value between 1 and 64"),
                ({"x-chunk-size": 65536 * 3},
                 "Parameter 'x-chunk-size' expects a power of 2 between "
                 "65536 and 67108864"),
                ({"x-chunk-size": 32768},
                 "Parameter 'x-chunk-size' expects a power of 2 between "
                 "65536 and 67108864"),
                ({"x-chunk-size": 1 << 27},
                 "Parameter 'x-chunk-size' expects a power of 2 between "
                 "65536 and 67108864"),
                ({"x-chunk-size": "big"},
                 "Invalid parameter type for 'x-chunk-size', expected: "
                 "integer")]:
            a = {"device": "nowhere", "job-id": "s0"}
            a.update(args)
            c.err("block-stream", a, desc=desc)
        assert [t for t in tokens(c, m) if not t.startswith("error")] == []
        for i, (depth, chunk) in enumerate([(1, 65536), (3, 1 << 20),
                                            (64, 2 << 20), (2, 64 << 20)]):
            sub = os.path.join(d.workdir, str(i))
            os.mkdir(sub)
            paths = make_chain(sub)
            base, mid, top, flat = paths
            add_chain(c, paths[:3])
            m, seq = stream(c, {"device": "top", "job-id": "s%d" % i,
                                "x-queue-depth": depth,
                                "x-chunk-size": chunk})
            assert seq == SUCCESS, (depth, chunk, seq)
            assert completed(c, m)[0]["offset"] == SIZE, completed(c, m)
            del_nodes(c, "top", "mid", "base")
            check(top)
            same_content(top, flat)
            assert allocated_in_top(top) == [(0, 3 * MiB)], img_map(top)


if __name__ == "__main__":
    Runner(globals()).run()
