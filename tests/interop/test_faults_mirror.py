#!/usr/bin/env python3
"""Fault matrix of blockdev-mirror (issue 14, item 4).

side (source read, target write) x on-source-error/on-target-error policy
(report, ignore, stop, enospc) x errno (EIO, ENOSPC) x position (first,
middle, last cluster of a 2 MiB disk), injected once with blkdebug:
  * source: blkdebug under the source qcow2's file, read_aio at the host
    sector of that cluster (from qemu-img map);
  * target: a raw target over blkdebug, write_aio at that sector.
The source is full of data (no write-zeroes in the copy). Each case: the
mirror starts (sync full), then every `paused` is answered by a query and
block-job-resume, READY by job-complete, until `null`. The events, replies
and paused queries must equal qemu-storage-daemon 7.2's, and the target
must equal the source unless the job failed (report); qemu-img check of
the source is clean and its content never changes.

For mirroring `ignore` re-dirties the failed range: the job reaches READY
and completes without an error (unlike block-stream's ignore)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from soak_util import (KiB, MiB, QSD, Daemon, Runner, cleanup,  # noqa: E402
                       discard, require, run, transcript, workdir)

require("qemu-storage-daemon", "qemu-img", "qemu-io")

SIZE = 2 * MiB
POS = {"first": 0, "middle": 1 * MiB, "last": SIZE - 64 * KiB}
POLICIES = ["report", "ignore", "stop", "enospc"]
ERRNOS = {"EIO": 5, "ENOSPC": 28}
SIDES = ["source", "target"]
ONLY = os.environ.get("FAULT_ONLY")


def cases():
    for side in SIDES:
        for pol in POLICIES:
            for en in ERRNOS:
                for pos in POS:
                    name = "%s-%s-%s-%s" % (side, pol, en, pos)
                    if not ONLY or ONLY in name:
                        yield name, side, pol, en, pos


def host_offset(path, guest):
    import json
    for e in json.loads(subprocess.check_output(
            ["qemu-img", "map", "--output=json", "-f", "qcow2", path])):
        if e.get("data") and e["start"] <= guest < e["start"] + e["length"]:
            return e["offset"] + guest - e["start"]
    raise AssertionError("no host offset for %d" % guest)


def make_images(d, name):
    src = os.path.join(d, name + "-src.qcow2")
    tgt = os.path.join(d, name + "-tgt.raw")
    run("qemu-img", "create", "-q", "-f", "qcow2", src, str(SIZE))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M",
        "-c", "write -P 0x22 1M 1M", src)
    run("qemu-img", "create", "-q", "-f", "raw", tgt, str(SIZE))
    return src, tgt


def run_case(c, d, tag, name, side, pol, en, pos):
    src, tgt = make_images(d, name)
    errno = ERRNOS[en]
    sfile = {"driver": "file", "filename": src}
    tfile = {"driver": "file", "filename": tgt}
    if side == "source":
        sfile = {"driver": "blkdebug", "image": sfile,
                 "inject-error": [{"event": "read_aio", "errno": errno,
                                   "sector": host_offset(src, POS[pos]) //
                                   512, "once": True}]}
    else:
        tfile = {"driver": "blkdebug", "image": tfile,
                 "inject-error": [{"event": "write_aio", "errno": errno,
                                   "sector": POS[pos] // 512,
                                   "once": True}]}
    s, t, job = "s" + tag, "t" + tag, "m" + tag
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": s, "file": sfile})
    c.ok("blockdev-add", {"driver": "raw", "node-name": t, "file": tfile})
    c.events.clear()
    since = len(c.lines)
    policy = {"on-source-error" if side == "source" else "on-target-error":
              pol}
    c.ok("blockdev-mirror", dict({"device": s, "target": t, "sync": "full",
                                  "job-id": job}, **policy))
    queries = []
    while True:
        e = c.event("JOB_STATUS_CHANGE", lambda x: x["id"] == job and
                    x["status"] in ("paused", "ready", "null"))
        st = e["data"]["status"]
        if st == "null":
            break
        if st == "paused":
            queries.append([{k: j[k] for k in ("status", "paused",
                                                "io-status", "ready")}
                            for j in c.ok("query-block-jobs")])
            c.ok("block-job-resume", {"device": job})
        else:
            c.ok("job-complete", {"id": job})
    c.ok("blockdev-del", {"node-name": t})
    c.ok("blockdev-del", {"node-name": s})
    tr = transcript(c, since)
    failed = any(m.get("event") == "BLOCK_JOB_COMPLETED" and
                 "error" in m["data"] for m in tr)
    obs = {"transcript": [normalise(m, tag) for m in tr],
           "queries": queries, "failed": failed}
    subprocess.check_call(["qemu-img", "check", "-q", src])
    if not failed:
        subprocess.check_call(["qemu-img", "compare", "-q", "-f", "qcow2",
                               "-F", "raw", src, tgt])
    os.unlink(src)
    os.unlink(tgt)
    return obs


def normalise(m, tag):
    """Names without the case's tag."""
    import json
    s = json.dumps(m).replace('"m%s"' % tag, '"m"').replace(
        '"s%s"' % tag, '"s"').replace('"t%s"' % tag, '"t"')
    m = json.loads(s)
    return m


def run_matrix(factory, label):
    d = workdir("mfaults-")
    res = {}
    daemon = factory()
    try:
        c = daemon.connect()
        for i, (name, side, pol, en, pos) in enumerate(cases()):
            try:
                res[name] = run_case(c, d, str(i), name, side, pol, en, pos)
            except Exception as e:
                raise AssertionError("%s, case %s: %s" % (label, name, e))
        c.close()
        daemon.stop()
    finally:
        discard(daemon)
        cleanup(d)
    return res


def test_matrix():
    ref = run_matrix(QSD, "qsd")
    ours = run_matrix(Daemon, "blockjobd")
    bad = []
    for name, side, pol, en, pos in cases():
        q, o = ref[name], ours[name]
        # ignore converges: READY, and the job ends without an error.
        want_fail = pol == "report" or (pol == "enospc" and en == "EIO")
        assert q["failed"] == want_fail, (name, q)
        if q != o:
            bad.append("%s:\n  qsd  %s\n  ours %s" % (name, q, o))
    print("%d cases, %d differ" % (len(ref), len(bad)))
    assert not bad, "\n".join(bad)


if __name__ == "__main__":
    Runner(globals()).run()
