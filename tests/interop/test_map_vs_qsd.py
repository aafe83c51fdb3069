#!/usr/bin/env python3
"""Differential test of the images block-stream leaves: the same chain,
streamed by qemu-storage-daemon 7.2 and by blockjobd, must give the same
`qemu-img map --output=json` of every layer (data/zero flags, depth and
extents; host offsets aside) and the same content.

Each case is a chain of layers, bottom first: (format, size, cluster size,
qemu-io commands)."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from stream_util import (  # noqa: E402
    KiB, MiB, QSD_CLASS, Daemon, Runner, require, run, same_content, wait_first_chunk,
    wait_status)

require("qemu-storage-daemon", "qemu-img", "qemu-io")


def facts(path, fmt):
    """qemu-img map without host offsets, extents with the same flags
    merged."""
    out = []
    for e in json.loads(subprocess.check_output(
            ["qemu-img", "map", "--output=json", "-U", "-f", fmt, path])):
        e.pop("offset", None)
        if out and all(out[-1][k] == e[k] for k in e
                       if k not in ("start", "length")):
            out[-1]["length"] += e["length"]
        else:
            out.append(e)
    return out


def make_layers(w, layers):
    paths = []
    for i, (fmt, size, cluster, cmds) in enumerate(layers):
        p = os.path.join(w, "l%d.%s" % (i, fmt))
        args = ["qemu-img", "create", "-q", "-f", fmt]
        if fmt == "qcow2":
            args += ["-o", "cluster_size=%d" % cluster]
        if paths:
            args += ["-b", paths[-1], "-F", layers[i - 1][0]]
        run(*(args + [p, str(size)]))
        if cmds:
            io = ["qemu-io", "-f", fmt]
            for c in cmds:
                io += ["-c", c]
            run(*(io + [p]))
        paths.append(p)
    return paths


def add_layers(c, layers, paths):
    for i, ((fmt, _, _, _), p) in enumerate(zip(layers, paths)):
        opts = {"driver": fmt, "node-name": "n%d" % i,
                "file": {"driver": "file", "filename": p}}
        if fmt == "qcow2":
            opts["backing"] = "n%d" % (i - 1) if i else None
        c.ok("blockdev-add", opts)


def stream_on(d, layers, args, limited):
    """limited: the offset the first chunk copied ends at or after (a
    query may catch qsd between two skipped runs, not busy, before it)."""
    paths = make_layers(d.workdir, layers)
    top = len(layers) - 1
    flat = os.path.join(d.workdir, "flat.raw")
    run("qemu-img", "convert", "-U", "-O", "raw", paths[-1], flat)
    c = d.connect()
    add_layers(c, layers, paths)
    a = {"device": "n%d" % top, "job-id": "s0"}
    a.update(args)
    if limited:
        # speed 1: the job copies its first chunk and sleeps; cancelled
        # then, the top holds that chunk only.
        a["speed"] = 1
    c.ok("block-stream", a)
    offset = None
    if limited:
        offset = wait_first_chunk(c, "s0", limited)["offset"]
        c.ok("block-job-cancel", {"device": "s0", "force": True})
    wait_status(c, "s0", "null")
    for i in range(top, -1, -1):
        c.ok("blockdev-del", {"node-name": "n%d" % i})
    same_content(paths[-1], flat, layers[-1][0])
    return [offset] + [facts(p, f[0]) for p, f in zip(paths, layers)]


def compare(layers, args=None, limited=0):
    got = []
    for cls in (QSD_CLASS, Daemon):
        with cls() as d:
            got.append(stream_on(d, layers, args or {}, limited))
    q, o = got
    assert q == o, "first chunk or maps differ:\nqsd:  %s\nours: %s" % (
        json.dumps([q[0], q[-1]]), json.dumps([o[0], o[-1]]))


def q2(size, cmds, cluster=64 * KiB):
    return ("qcow2", size, cluster, cmds)


# -- what a copied chunk leaves: data, or zero clusters if all of it is zero
# (QEMU's copy-on-read rounds each chunk out to the top's clusters and
# writes it at once) --


def test_partly_zero_chunk_is_data():
    compare([q2(2 * MiB, ["write -P 0x11 0 64k", "write -P 0 64k 1M"]),
             q2(2 * MiB, [])])


def test_zero_chunks_and_zero_clusters():
    compare([q2(2 * MiB, ["write -P 0 0 1M", "write -P 0x11 1M 1M",
                          "write -z 1088k 128k"]),
             q2(2 * MiB, [])])


def test_raw_base_with_holes():
    compare([("raw", 2 * MiB, 0, ["write -P 0x11 0 64k",
                                  "write -P 0x22 1M 4k"]),
             q2(2 * MiB, [])])


def test_chunk_rounded_to_bigger_top_clusters():
    """A zero cluster of the base fills half a 128 KiB cluster of the top:
    the whole top cluster is copied, and reads as zeroes."""
    compare([q2(2 * MiB, ["write -P 0x11 0 64k", "write -P 0 64k 64k",
                          "write -z 192k 64k"]),
             q2(2 * MiB, [], 128 * KiB)])


def test_rounded_chunk_ends_inside_next_run():
    """4 KiB clusters below 64 KiB ones: a 512 KiB chunk ending inside a
    top cluster copies up to that cluster's end; the next chunk starts
    there (all zeroes: zero clusters)."""
    compare([q2(2 * MiB, ["write -P 0 1184k 864k", "write -P 0 1068k 4k",
                          "write -P 198 1340k 128k"], 4 * KiB),
             q2(2 * MiB, [])])


# -- where block-status runs end (the chunks of a rate-limited stream) --


def test_run_ends_where_host_offsets_jump():
    """Guest cluster 64k was written before cluster 0: the run of data at
    0 is one cluster long in the base, so is the first chunk."""
    compare([q2(2 * MiB, ["write -P 1 64k 64k", "write -P 2 0 64k",
                          "write -P 3 128k 384k"]),
             q2(2 * MiB, [])], limited=1)


def test_run_of_zero_clusters_with_host_clusters():
    """Zeroed clusters that kept their host clusters: a run as long as
    those are contiguous."""
    compare([q2(2 * MiB, ["write -P 1 64k 64k", "write -P 2 0 64k",
                          "write -z 0 128k", "write -P 3 128k 384k"]),
             q2(2 * MiB, [])], limited=1)


def test_run_in_middle_layer():
    compare([q2(2 * MiB, ["write -P 1 0 2M"]),
             q2(2 * MiB, ["write -P 1 128k 64k", "write -P 2 0 128k"]),
             q2(2 * MiB, [])], limited=1)


def test_run_ends_with_l2_table():
    """4 KiB clusters: one L2 table maps 2 MiB; a run ends there."""
    compare([q2(4 * MiB, ["write -P 1 1792k 1280k"], 4 * KiB),
             q2(4 * MiB, [])], limited=1792 * KiB + 1)


# -- backings shorter than their overlay --


def test_top_backing_shorter():
    """Where the top's own backing ends, the rest of the disk is left:
    nothing below is looked at (the base is longer than the middle)."""
    compare([q2(2 * MiB, ["write -P 0x11 0 2M"]),
             q2(1 * MiB, ["write -P 0x22 0 64k"]),
             q2(2 * MiB, [])])


def test_deeper_backing_shorter():
    """Past the end of a deeper backing its zeroes are copied: zero
    clusters in the top."""
    compare([q2(1 * MiB, ["write -P 0x11 0 1M"]),
             q2(2 * MiB, ["write -P 0x22 1536k 64k"]),
             q2(2 * MiB, [])])


def test_deeper_backing_ends_inside_cluster():
    compare([q2(1 * MiB + 512, ["write -P 0x11 0 1M"]),
             q2(2 * MiB, ["write -P 0x22 1536k 64k"]),
             q2(2 * MiB + 12288, [])])


if __name__ == "__main__":
    Runner(globals()).run()
