#!/usr/bin/env python3
"""Fault matrix of block-stream (issue 7, item 3).

Every on-error policy (report, ignore, stop, enospc) x errno (EIO, ENOSPC)
x operation (read, write) x position (first, middle, last cluster) is
injected with blkdebug (reference 6.4) into a 2 MiB chain whose base has
exactly three allocated clusters (at 0, 1 MiB and 2 MiB - 64 KiB):
  * read errors: blkdebug under the base's file, on read_aio, at the host
    sector of that cluster (from qemu-img map);
  * write errors: blkdebug under the top's file, on the 1st/2nd/3rd
    write_aio (a state machine counts the data writes).
For each case the events and replies (without timestamps), the job's query
while paused (stop), the final chain and content are checked against the
contract (reference 3.5, 4) and qemu-img check must be clean.

The same matrix runs against qemu-storage-daemon 7.2 first (when
installed) and blockjobd's transcripts must equal qsd's. Where qsd and the
reference document disagree, qsd wins: the differences are printed as
"NOTE contract" lines."""
import json
import os
import subprocess
import sys

from soak_util import (KiB, MiB, QSD, Daemon, Runner, backing_of, cleanup,
                       compare, discard, flatten, qemu_check, require, run,
                       transcript, wait_status, workdir)

require("qemu-img", "qemu-io")

SIZE = 2 * MiB
CLUSTERS = {"first": 0, "middle": 1 * MiB, "last": SIZE - 64 * KiB}
POLICIES = ["report", "ignore", "stop", "enospc"]
ERRNOS = {"EIO": 5, "ENOSPC": 28}
OPS = ["read", "write"]
STRERROR = {5: "Input/output error", 28: "No space left on device"}
ONLY = os.environ.get("FAULT_ONLY")  # e.g. "stop-ENOSPC-write"


def cases():
    for pol in POLICIES:
        for en in ERRNOS:
            for op in OPS:
                for pos in CLUSTERS:
                    name = "%s-%s-%s-%s" % (pol, en, op, pos)
                    if ONLY and ONLY not in name:
                        continue
                    yield name, pol, en, op, pos


def make_images(d, name):
    """Returns (base, top, flat, host offsets of the base's clusters)."""
    base = os.path.join(d, name + "-base.qcow2")
    top = os.path.join(d, name + "-top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE))
    run("qemu-io", "-f", "qcow2",
        "-c", "write -P 0x11 %d 64k" % CLUSTERS["first"],
        "-c", "write -P 0x22 %d 64k" % CLUSTERS["middle"],
        "-c", "write -P 0x33 %d 64k" % CLUSTERS["last"], base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
        top)
    flat = os.path.join(d, name + "-flat.raw")
    flatten(top, flat)
    host = {}
    for ext in json.loads(subprocess.check_output(
            ["qemu-img", "map", "--output=json", "-f", "qcow2", base])):
        if ext.get("data") and "offset" in ext:
            for pos, g in CLUSTERS.items():
                if ext["start"] <= g < ext["start"] + ext["length"]:
                    host[pos] = ext["offset"] + g - ext["start"]
    assert len(host) == 3, host
    return base, top, flat, host


def add_nodes(c, tag, base, top, en, op, pos, host):
    errno = ERRNOS[en]
    bfile = {"driver": "file", "filename": base}
    tfile = {"driver": "file", "filename": top}
    if op == "read":
        bfile = {"driver": "blkdebug", "image": bfile,
                 "inject-error": [{"event": "read_aio", "errno": errno,
                                   "sector": host[pos] // 512,
                                   "once": True}]}
    else:
        nth = {"first": 1, "middle": 2, "last": 3}[pos]
        tfile = {"driver": "blkdebug", "image": tfile,
                 "inject-error": [{"event": "write_aio", "errno": errno,
                                   "state": nth, "once": True}],
                 "set-state": [{"event": "write_aio", "state": s,
                                "new_state": s + 1} for s in (1, 2, 3)]}
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": "b" + tag,
                          "file": bfile})
    c.ok("blockdev-add", {"driver": "qcow2", "node-name": "t" + tag,
                          "backing": "b" + tag, "file": tfile})


def clean_query(j):
    keep = ("device", "type", "len", "offset", "busy", "paused", "speed",
            "ready", "status", "io-status")
    return {k: j.get(k) for k in keep}


def run_case(c, d, tag, name, pol, en, op, pos):
    """Runs one case on connection c; returns a dict of observations."""
    base, top, flat, host = make_images(d, name)
    add_nodes(c, tag, base, top, en, op, pos, host)
    c.events.clear()
    since = len(c.lines)
    job = "j" + tag
    c.ok("block-stream", {"device": "t" + tag, "job-id": job,
                          "on-error": pol})
    paused_query = None
    while True:
        e = c.event("JOB_STATUS_CHANGE", lambda x: x["id"] == job and
                    x["status"] in ("paused", "null"))
        if e["data"]["status"] == "null":
            break
        jobs = [j for j in c.ok("query-block-jobs") if j["device"] == job]
        paused_query = clean_query(jobs[0]) if jobs else None
        c.ok("block-job-resume", {"device": job})
    c.ok("blockdev-del", {"node-name": "t" + tag})
    c.ok("blockdev-del", {"node-name": "b" + tag})
    obs = {"leaks": 0}
    obs["transcript"] = [m for m in transcript(c, since)
                          if "return" not in m or m["return"] != []]
    obs["paused_query"] = paused_query
    obs["leaks"] = qemu_check(top, allow_leaks=True).get("leaks", 0)
    compare(top, flat)
    obs["backing"] = backing_of(top) is not None
    for p in (base, top, flat):
        os.unlink(p)
    return obs


def expected(pol, en, op, pos):
    """The contract (reference 3.5 and 4) for one case: tokens after
    'running', whether the backing stays, io-status while paused."""
    errno = ERRNOS[en]
    action = {"report": "report", "ignore": "ignore", "stop": "stop",
              "enospc": "stop" if errno == 28 else "report"}[pol]
    err = "ERROR(read,%s)" % action
    if action == "report":
        return [err, "aborting", "COMPLETED+error", "concluded",
                "null"], True, None
    if action == "ignore":
        return [err, "aborting", "COMPLETED+error", "concluded",
                "null"], True, None
    return [err, "paused", "running", "waiting", "pending",
            "COMPLETED", "concluded", "null"], False, (
                "nospace" if errno == 28 else "failed")


def tokens(tr):
    out = []
    for m in tr:
        if "event" not in m:
            out.append("return" if "return" in m else "error")
        elif m["event"] == "JOB_STATUS_CHANGE":
            out.append(m["data"]["status"])
        elif m["event"] == "BLOCK_JOB_ERROR":
            out.append("ERROR(%s,%s)" % (m["data"]["operation"],
                                         m["data"]["action"]))
        elif m["event"] == "BLOCK_JOB_COMPLETED":
            out.append("COMPLETED" + ("+error" if "error" in m["data"]
                                      else ""))
        else:
            out.append(m["event"])
    return out


def contract_diffs(name, pol, en, op, pos, obs):
    """Differences between an observed run and the reference document."""
    toks = tokens(obs["transcript"])
    want, keep_backing, io_status = expected(pol, en, op, pos)
    diffs = []
    try:
        after = toks[toks.index("running") + 1:]
    except ValueError:
        after = toks
    after = [t for t in after if t != "return"]
    if after != want:
        diffs.append("events %s, contract %s" % (after, want))
    if obs["backing"] != keep_backing:
        diffs.append("backing %s, contract %s" % (
            "kept" if obs["backing"] else "removed",
            "kept" if keep_backing else "removed"))
    if obs["leaks"]:
        diffs.append("qemu-img check: %d leaked clusters" % obs["leaks"])
    q = obs["paused_query"]
    if io_status:
        if not q or q["io-status"] != io_status or not q["paused"] or \
                q["status"] != "paused":
            diffs.append("paused query %r, contract io-status %s" % (
                q, io_status))
    for m in obs["transcript"]:
        if m.get("event") == "BLOCK_JOB_COMPLETED" and "error" in m["data"]:
            if m["data"]["error"] != STRERROR[ERRNOS[en]]:
                diffs.append("error text %r" % m["data"]["error"])
            if pol == "ignore" and m["data"]["offset"] != SIZE:
                diffs.append("ignore: offset %d != len" % m["data"]["offset"])
    return diffs


def run_matrix(daemon_factory, label):
    d = workdir("faults-")
    results = {}
    daemon = daemon_factory()
    try:
        c = daemon.connect()
        for i, (name, pol, en, op, pos) in enumerate(cases()):
            try:
                results[name] = run_case(c, d, str(i), name, pol, en, op,
                                         pos)
            except Exception as e:
                raise AssertionError("%s, case %s: %s" % (label, name, e))
        c.close()
        daemon.stop()
    finally:
        discard(daemon)
        cleanup(d)
    return results


def normalise(obs):
    """Transcript with the job/node tags removed, for qsd comparison."""
    s = json.dumps(obs, sort_keys=True)
    return json.loads(s)


QSD_RESULTS = {}


def test_matrix_qsd_reference():
    """qemu-storage-daemon 7.2 on the same matrix (the authority)."""
    if not os.path.exists("/usr/bin/qemu-storage-daemon") and \
            subprocess.run(["which", "qemu-storage-daemon"],
                           stdout=subprocess.DEVNULL).returncode:
        print("SKIP qsd part: qemu-storage-daemon is not installed")
        return
    QSD_RESULTS.update(run_matrix(QSD, "qsd"))
    notes = 0
    for name, pol, en, op, pos in cases():
        for diff in contract_diffs(name, pol, en, op, pos,
                                   QSD_RESULTS[name]):
            notes += 1
            print("NOTE contract vs qsd, %s: %s" % (name, diff))
    print("qsd: %d cases, %d differences from the reference document" % (
        len(QSD_RESULTS), notes))


def test_matrix_blockjobd():
    res = run_matrix(Daemon, "blockjobd")
    bad = []
    for name, pol, en, op, pos in cases():
        obs = res[name]
        ref = QSD_RESULTS.get(name)
        if ref is not None:
            # qsd wins over the document
            keys = [k for k in sorted(ref) if normalise(obs.get(k)) !=
                    normalise(ref.get(k))]
            if keys:
                bad.append("%s: differs from qsd in %s" % (name, keys))
                for k in keys:
                    if k == "transcript":
                        bad.append("  tokens %s\n  qsd    %s" % (
                            tokens(obs[k]), tokens(ref[k])))
                        for a, b in zip(obs[k], ref[k]):
                            if a != b:
                                bad.append("  first differing message:\n"
                                           "    %s\n    %s" % (
                                               json.dumps(a), json.dumps(b)))
                                break
                    else:
                        bad.append("  %s: %r, qsd %r" % (k, obs[k], ref[k]))
        else:
            for diff in contract_diffs(name, pol, en, op, pos, obs):
                bad.append("%s: %s" % (name, diff))
    print("blockjobd: %d cases, %d differ" % (len(res), len(
        [b for b in bad if not b.startswith(" ")])))
    assert not bad, "\n".join(bad)


if __name__ == "__main__":
    Runner(globals()).run()
    sys.exit(0)
