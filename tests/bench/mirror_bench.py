#!/usr/bin/env python3
"""blockdev-mirror beside qemu-storage-daemon 7.2 (issue 14, item 9): the
1 GiB chain of make bench (base full of random data, mid with 5 % of the
clusters, empty top), sync full into an empty qcow2, on blockjobd, qsd with
defaults and qsd with aio=native + cache.direct=on, rounds alternating
(order rotated), page cache dropped before each run. Prints, per system,
the time to BLOCK_JOB_READY and the durable time (READY, job-complete,
the job's end and blockdev-del of every node, whose close flushes), CPU
seconds of the daemon, and whether qemu-img compare found the target
identical to the chain.

    python3 tests/bench/mirror_bench.py [SIZE_BYTES [ROUNDS ['{"granularity": N, "buf-size": N}']]]

Not part of make check (timings); not yet wired into make bench."""
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("BLOCKJOBD", os.path.join(HERE, "..", "..", "blockjobd"))
import bench  # noqa: E402
from qmp import QSD, Daemon  # noqa: E402

SIZE = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 30
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
EXTRA = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
d = tempfile.mkdtemp(prefix="mbench-", dir=os.path.join(HERE, "..", "..", "build"))
ch = bench.make_chain(d, "c", SIZE, random.Random(1)); bench.fresh_top(ch)
tgt = os.path.join(d, "tgt.qcow2")
def one(kind):
    if os.path.exists(tgt): os.unlink(tgt)
    subprocess.check_call(["qemu-img", "create", "-q", "-f", "qcow2", tgt, str(SIZE)])
    subprocess.call("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True)
    dm = Daemon() if kind == "bjd" else QSD()
    c = dm.connect()
    fopt = {"driver": "file"}
    if kind == "qsd-native": fopt.update({"aio": "native", "cache": {"direct": True}})
    def f(p): return dict(fopt, filename=p)
    cache = {"cache": {"direct": True}} if kind == "qsd-native" else {}
    c.ok("blockdev-add", dict({"driver": "qcow2", "node-name": "base", "file": f(ch["base"])}, **cache))
    c.ok("blockdev-add", dict({"driver": "qcow2", "node-name": "mid", "backing": "base", "file": f(ch["mid"])}, **cache))
    c.ok("blockdev-add", dict({"driver": "qcow2", "node-name": "top", "backing": "mid", "file": f(ch["top"])}, **cache))
    c.ok("blockdev-add", dict({"driver": "qcow2", "node-name": "tgt", "file": f(tgt)}, **cache))
    t0 = time.monotonic()
    c.ok("blockdev-mirror", dict({"device": "top", "target": "tgt", "sync": "full", "job-id": "m"}, **EXTRA))
    c.event("BLOCK_JOB_READY", timeout=600); t1 = time.monotonic()
    c.ok("job-complete", {"id": "m"})
    c.event("JOB_STATUS_CHANGE", lambda x: x["status"] == "null")
    for n in ("tgt", "top", "mid", "base"): c.ok("blockdev-del", {"node-name": n})
    t2 = time.monotonic()
    cpu = None
    try:
        with open("/proc/%d/stat" % dm.proc.pid) as fh: st = fh.read().split()
        cpu = (int(st[13]) + int(st[14])) / os.sysconf("SC_CLK_TCK")
    except Exception: pass
    dm.stop()
    r = subprocess.call(["qemu-img", "compare", "-q", ch["top"], tgt])
    return t1 - t0, t2 - t0, cpu, r == 0
res = {k: [] for k in ("bjd", "qsd", "qsd-native")}
for i in range(ROUNDS):
    order = list(res)[i % 3:] + list(res)[:i % 3]
    for k in order: res[k].append(one(k))
for k, v in res.items():
    v.sort(key=lambda x: x[1])
    print(k, "ready s", [round(x[0], 2) for x in v], "durable s", [round(x[1], 2) for x in v], "cpu s", [x[2] for x in v], "identical", all(x[3] for x in v))
subprocess.call(["rm", "-rf", d])
