#!/usr/bin/env python3
"""Differential test of block-stream: the same QMP session against
qemu-storage-daemon 7.2 and blockjobd must give the same replies and the
same events in the same order (timestamps aside; paths normalised), and
leave images with the same content, allocation map and backing.

query-named-block-nodes is compared too (before, during and after jobs:
the copy-on-read filter each job inserts above its top), with what
legitimately differs taken out: the digits of implicit #blockNNN names
and on-disk sizes (see Session.nodes)."""
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from stream_util import (  # noqa: E402
    QSD_CLASS, VALIDATION, Daemon, Runner, add_chain, add_erroring_raw_chain,
    add_write_error_chain, check_wrong_verbs, del_nodes, make_chain,
    make_raw_base, mark, require, same_content, transcript, wait_first_chunk,
    wait_status)

require("qemu-storage-daemon", "qemu-img", "qemu-io")


class Session:
    """Records the comparable parts of a session: every reply and event
    received during a step (not the polling in between)."""

    def __init__(self, d, c):
        self.d, self.c, self.log = d, c, []

    def norm(self, v):
        """Paths and the digits of implicit #blockNNN names (a counter
        plus two random ones in QEMU) go."""
        s = json.dumps(v, sort_keys=False).replace(self.d.workdir, "<D>")
        return json.loads(re.sub(r"#block\d+", "#block", s))

    def step(self, fn, *args):
        m = mark(self.c)
        r = fn(*args)
        self.log.append(self.norm(transcript(self.c, m)))
        return r

    def cmd(self, name, args=None):
        return self.step(self.c.cmd, name, args)

    def wait(self, job, status):
        return self.step(wait_status, self.c, job, status)

    def event(self, name):
        return self.step(self.c.event, name)

    def cmd_until(self, name, args, job, status):
        """A command and then the job's `status` event, as one step (the
        event may come before the reply)."""
        def both():
            r = self.c.cmd(name, args)
            wait_status(self.c, job, status)
            return r
        return self.step(both)

    def nodes(self, args=None):
        """query-named-block-nodes as a step, without the sizes that depend
        on where each daemon put the data (every actual-size, and the
        length of `file` nodes)."""
        r = self.cmd("query-named-block-nodes", args)
        for m in self.log[-1]:
            for node in m.get("return", []):
                if node["drv"] == "file":
                    node["image"]["virtual-size"] = 0
                img = node["image"]
                while img:
                    img.pop("actual-size", None)
                    img = img.get("backing-image")
        return r


def filter_name(nodes):
    """The name of the copy-on-read node in a query-named-block-nodes
    reply (exactly one must be there)."""
    names = [n["node-name"] for n in nodes["return"]
             if n["drv"] == "copy-on-read"]
    assert len(names) == 1, names
    return names[0]


def image_facts(path, fmt="qcow2"):
    """qemu-img map and the backing of an image, paths normalised."""
    d = os.path.dirname(path)
    m = []
    for e in json.loads(subprocess.check_output(
            ["qemu-img", "map", "--output=json", "-f", fmt, path])):
        # Where the data sits in the file may differ: drop host offsets and
        # merge the extents they split.
        e.pop("offset", None)
        if m and all(m[-1][k] == e[k] for k in e if k not in ("start",
                                                              "length")):
            m[-1]["length"] += e["length"]
        else:
            m.append(e)
    info = json.loads(subprocess.check_output(
        ["qemu-img", "info", "--output=json", "-f", fmt, path]))
    back = info.get("backing-filename", "").replace(d, "<D>")
    return {"map": m, "backing": back,
            "backing-format": info.get("backing-filename-format")}


def depth0(facts):
    """64 KiB clusters each image holds itself."""
    out = {}
    for name, f in facts.items():
        out[name] = {(e["start"] + i) // 65536 for e in f["map"]
                     if e["depth"] == 0
                     for i in range(0, e["length"], 65536)}
    return out


def connect(d):
    """qsd creates its socket file before it listens: a refused connection
    right after start means "not yet" (bounded retries, as QSD() itself
    polls for the file)."""
    for _ in range(500):
        try:
            return d.connect()
        except ConnectionRefusedError:
            time.sleep(0.01)
    return d.connect()


def run_both(scenario, extra_copies_ok=False):
    """Runs scenario(session, workdir) on qsd and on blockjobd and compares
    replies/events, then the images. extra_copies_ok: a job that failed
    may have copied more than qsd (its later chunks were in flight when
    the error came); the scenarios check the data themselves."""
    out = []
    for kind in ("qsd", "ours"):
        with (QSD_CLASS() if kind == "qsd" else Daemon()) as d:
            s = Session(d, connect(d))
            images = scenario(s, d.workdir)
            facts = {os.path.basename(p): image_facts(p, f)
                     for p, f in images}
            out.append((s.log, facts))
    (qlog, qfacts), (olog, ofacts) = out
    for i, (q, o) in enumerate(zip(qlog, olog)):
        assert q == o, "step %d differs:\nqsd:  %s\nours: %s" % (
            i, json.dumps(q), json.dumps(o))
    assert len(qlog) == len(olog), (len(qlog), len(olog))
    if extra_copies_ok:
        q0, o0 = depth0(qfacts), depth0(ofacts)
        for name in q0:
            assert q0[name] <= o0[name], (name, qfacts, ofacts)
            qfacts[name].pop("map")
            ofacts[name].pop("map")
    assert qfacts == ofacts, "images differ:\nqsd:  %s\nours: %s" % (
        qfacts, ofacts)
    return qlog


def chain_scenario(args, finish):
    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        s.cmd("block-stream", args)
        finish(s)
        s.cmd("query-block-jobs")
        s.cmd("query-jobs")
        del_nodes(s.c, "top", "mid", "base")
        same_content(paths[2], paths[3])
        return [(p, "qcow2") for p in paths[:3]]
    return scenario


def test_full_stream():
    run_both(chain_scenario({"device": "top", "job-id": "s0"},
                            lambda s: s.wait("s0", "null")))


def test_base_node_stream():
    run_both(chain_scenario({"device": "top", "job-id": "s0",
                             "base-node": "base"},
                            lambda s: s.wait("s0", "null")))


def test_bottom_and_noop_streams():
    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        s.cmd("block-stream", {"device": "top", "job-id": "n0",
                               "base-node": "mid"})
        s.cmd("block-stream", {"device": "mid", "job-id": "n1",
                               "bottom": "mid", "auto-dismiss": False})
        s.cmd("query-block-jobs")
        s.cmd("job-dismiss", {"id": "n1"})
        del_nodes(s.c, "top", "mid", "base")
        return [(p, "qcow2") for p in paths[:3]]
    run_both(scenario)


def test_cancel_at_pause():
    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        s.cmd("block-stream", {"device": "top", "job-id": "s0", "speed": 1})
        wait_first_chunk(s.c, "s0")
        s.cmd("query-block-jobs")
        s.cmd("block-job-pause", {"device": "s0"})
        s.cmd("query-block-jobs")
        s.cmd("query-jobs")
        check_wrong_verbs(s.c, "paused", user_paused=True)
        s.cmd("block-job-set-speed", {"device": "s0", "speed": 4096})
        s.cmd("block-job-resume", {"device": "s0"})
        wait_first_chunk(s.c, "s0", 1024 * 1024)
        s.cmd("query-block-jobs")
        s.cmd("block-job-set-speed", {"device": "s0", "speed": 1})
        s.cmd("query-block-jobs")
        s.cmd("job-pause", {"id": "s0"})
        s.cmd("block-job-cancel", {"device": "s0"})
        s.cmd("block-job-cancel", {"device": "s0", "force": True})
        s.cmd("query-jobs")
        del_nodes(s.c, "top", "mid", "base")
        return [(p, "qcow2") for p in paths[:3]]
    run_both(scenario)


def test_cancel_running_and_finish_by_speed():
    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        s.cmd("block-stream", {"device": "top", "job-id": "s0", "speed": 1})
        wait_first_chunk(s.c, "s0")
        check_wrong_verbs(s.c, "running")
        s.cmd("block-job-cancel", {"device": "s0"})
        s.cmd("block-stream", {"device": "top", "job-id": "s1", "speed": 1,
                               "base-node": "base"})
        wait_first_chunk(s.c, "s1")
        s.cmd("block-job-set-speed", {"device": "s1", "speed": 0})
        s.wait("s1", "null")
        del_nodes(s.c, "top", "mid", "base")
        return [(p, "qcow2") for p in paths[:3]]
    run_both(scenario)


def test_manual_finalize_dismiss():
    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        s.cmd("block-stream", {"device": "top", "job-id": "s0",
                               "auto-finalize": False,
                               "auto-dismiss": False})
        s.event("BLOCK_JOB_PENDING")
        s.cmd("query-block-jobs")
        check_wrong_verbs(s.c, "pending")
        s.cmd("block-job-finalize", {"id": "s0"})
        s.cmd("query-block-jobs")
        check_wrong_verbs(s.c, "concluded")
        s.cmd("block-job-dismiss", {"id": "s0"})
        s.cmd("block-stream", {"device": "mid", "job-id": "s1",
                               "auto-finalize": False})
        s.event("BLOCK_JOB_PENDING")
        s.cmd("job-cancel", {"id": "s1"})
        s.cmd("query-jobs")
        del_nodes(s.c, "top", "mid", "base")
        return [(p, "qcow2") for p in paths[:3]]
    run_both(scenario)


def test_validation():
    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        for args, _ in VALIDATION:
            s.cmd("block-stream", args)
        s.cmd("block-stream", {"device": "top", "job-id": "s0", "speed": -1})
        s.cmd("block-stream", {"device": "top", "job-id": "s0", "speed": 1})
        wait_first_chunk(s.c, "s0")
        s.cmd("block-stream", {"device": "top", "job-id": "s1"})
        s.cmd("block-stream", {"device": "mid", "job-id": "s1"})
        s.cmd("block-stream", {"device": "base", "job-id": "s0"})
        s.cmd("blockdev-del", {"node-name": "top"})
        s.cmd("job-cancel", {"id": "s0"})
        del_nodes(s.c, "top", "mid", "base")
        return [(p, "qcow2") for p in paths[:3]]
    run_both(scenario)


def test_nodes_during_jobs():
    """The graph as query-named-block-nodes shows it: json: names for nodes
    whose backing was given by reference, the copy-on-read filter over the
    top while a job runs (implicit, then named by filter-node-name), what
    blockdev-del and block-stream say about the top and the filter, and
    the graph once the filter is gone."""
    def scenario(s, w):
        paths = make_chain(w)
        add_chain(s.c, paths)
        s.nodes()
        s.cmd("block-stream", {"device": "top", "job-id": "s0", "speed": 1})
        wait_first_chunk(s.c, "s0")
        s.nodes()
        cor = filter_name(s.nodes({"flat": True}))
        s.cmd("blockdev-del", {"node-name": "top"})
        s.cmd("blockdev-del", {"node-name": cor})
        s.cmd("block-stream", {"device": cor, "job-id": "s1"})
        s.cmd_until("block-job-cancel", {"device": "s0"}, "s0", "null")
        s.nodes()
        s.cmd("block-stream", {"device": "top", "job-id": "s1", "speed": 1,
                               "base-node": "base",
                               "filter-node-name": "cor0"})
        wait_first_chunk(s.c, "s1")
        s.nodes()
        s.cmd("blockdev-del", {"node-name": "cor0"})
        s.cmd("blockdev-del", {"node-name": "mid"})
        s.cmd("blockdev-del", {"node-name": "base"})
        s.cmd("block-stream", {"device": "cor0", "job-id": "s2"})
        s.cmd("block-stream", {"device": "base", "job-id": "s2",
                               "filter-node-name": "cor0"})
        s.cmd("block-stream", {"device": "base", "job-id": "s2",
                               "filter-node-name": "a" * 32})
        # (Not a valid filter over a node of the running job: qsd's graph
        # change would drain it, pausing and resuming s1 - not modelled.)
        s.nodes({"flat": True})
        s.cmd_until("block-job-set-speed", {"device": "s1", "speed": 0},
                    "s1", "null")
        s.nodes()
        # A no-op stream (base is the direct backing) also inserts and
        # removes its filter; its reply comes after the job ended.
        s.cmd("block-stream", {"device": "top", "job-id": "s3",
                               "base-node": "base",
                               "filter-node-name": "cor1"})
        s.nodes({"flat": True})
        del_nodes(s.c, "top", "mid", "base")
        return [(p, "qcow2") for p in paths[:3]]
    run_both(scenario)


def test_parallel_streams_nodes():
    """Two streams on disjoint parts of one chain (iotest 030's parallel
    case), the lower one started first: the upper one's base sits under the
    lower one's filter. The graph with both filters, a third stream refused
    as busy, then the graph and the images once both ended."""
    def scenario(s, w):
        paths = make_chain(w)
        over = []
        for i, name in enumerate(("t4", "t5")):
            path = os.path.join(w, name + ".qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                            paths[2] if i == 0 else over[0], "-F", "qcow2",
                            path], check=True)
            subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                            "write -P 0x%x %dk 64k" % (0x44 + i, 128 * (i + 1)),
                            path], check=True, stdout=subprocess.DEVNULL)
            over.append(path)
        add_chain(s.c, paths)
        for i, name in enumerate(("t4", "t5")):
            s.c.ok("blockdev-add", {"driver": "qcow2", "node-name": name,
                                    "backing": "top" if i == 0 else "t4",
                                    "file": {"driver": "file",
                                             "filename": over[i]}})
        s.cmd("block-stream", {"device": "top", "job-id": "s0", "speed": 1,
                               "bottom": "mid"})
        wait_first_chunk(s.c, "s0")
        s.cmd("block-stream", {"device": "t5", "job-id": "s1", "speed": 1,
                               "bottom": "t4"})
        wait_first_chunk(s.c, "s1", 192 * 1024)  # t4's one cluster
        s.nodes({"flat": True})
        s.cmd("block-stream", {"device": "t5", "job-id": "s2",
                               "base-node": "base"})
        # Not compared from here until both ended: each graph change in
        # qsd drains the other job (paused/running events, its sleep cut
        # short), which blockjobd does not model.
        s.c.ok("block-job-set-speed", {"device": "s1", "speed": 0})
        s.c.ok("block-job-set-speed", {"device": "s0", "speed": 0})
        ended = set()
        while ended != {"s0", "s1"}:
            ended.add(s.c.event("JOB_STATUS_CHANGE",
                                lambda d: d["status"] == "null")["data"]["id"])
        s.nodes()
        del_nodes(s.c, "t5", "t4", "top", "mid", "base")
        return [(p, "qcow2") for p in list(paths[:3]) + over]
    run_both(scenario)


def error_scenario(policy, errno, write=False):
    def scenario(s, w):
        raw, top = make_raw_base(w)
        if write:
            add_write_error_chain(s.c, raw, top, errno)
        else:
            add_erroring_raw_chain(s.c, raw, top, errno)
        s.cmd("block-stream", {"device": "top", "job-id": "e0",
                               "on-error": policy})
        e = s.step(s.c.event, "JOB_STATUS_CHANGE",
                   lambda d: d["status"] in ("paused", "null"))
        if e["data"]["status"] == "paused":
            s.cmd("query-block-jobs")
            # (a query right after the resume would race with the retry)
            s.cmd("block-job-resume", {"device": "e0"})
            s.wait("e0", "null")
        del_nodes(s.c, "top", "base")
        same_content(top, raw)
        return [(top, "qcow2")]
    return scenario


def test_eio_policies():
    for policy in ("report", "ignore", "stop", "enospc"):
        run_both(error_scenario(policy, 5),
                 extra_copies_ok=policy in ("report", "enospc"))


def test_enospc_policies():
    for policy in ("stop", "enospc"):
        run_both(error_scenario(policy, 28))
    for policy in ("report", "stop"):
        run_both(error_scenario(policy, 28, write=True),
                 extra_copies_ok=policy == "report")


if __name__ == "__main__":
    Runner(globals()).run()
