#!/usr/bin/env python3
"""Seeded differential sessions: qemu-storage-daemon 7.2 and blockjobd play
the same QMP session, a user's session of the block-job API, and must give
the same replies (exact JSON) and events in the same order (timestamps
aside), and leave the same images behind.

A seed makes a few small chains (qcow2 and raw layers, patterns written with
qemu-io, backing names relative or absolute, various sizes and cluster
sizes) and a session of random commands: blockdev-add of the layers in the
ways a user adds them (explicit backing references, implicit backings from
the header, backing null, separate file nodes, read-only, cache, discard,
detect-zeroes, auto-read-only, bad values), blockdev-del, block-stream with
every argument and bad combinations of them, the block-job-* and job-* verbs
on live, ended and unknown jobs, the queries, and protocol mistakes
(negotiating twice, unknown commands, wrong argument types).

The session is generated against qsd as it runs (each command is chosen
from the state the previous replies left), then replayed on blockjobd.

Jobs only ever sit in states that do not change by themselves, so both
daemons are compared at the same point: after every command the session
waits (by polling queries whose replies are not compared, and by the
events) until every job is paused, or sleeping in its rate limit after its
first chunk (a speed of a few KiB/s at most: the next chunk is hours away),
or pending/concluded waiting for the user, or gone. Everything received
meanwhile - the reply and every event - belongs to that command's step.

Compared after normalising only what legitimately differs: the digits of
implicit #blockNNN names (renumbered in order of appearance), on-disk sizes
(actual-size; the length of written qcow2 files) and the package string.
At the end both daemons are stopped and each image is compared: qemu-img
check, qemu-img info (backing name and format), qemu-img map --output=json
(host offsets dropped) and the data (qemu-img compare against what qsd left,
for each layer alone and for the whole chain).

Environment:
  SESSIONS_SEEDS  seeds to run instead of the fixed set: "1-200", "3,7,9"
  SESSIONS_OPS    commands per session (default 40)
  SESSIONS_SHRINK 1: reduce each failing session to the commands needed
                  for its first difference and print that reproduction
  SESSIONS_REPLAY a JSON file written by a failing run: replay it
  SESSIONS_KEEP_GOING 1: run every seed even after failures
  SESSIONS_AVOID  known differences the generator steers clear of (see
                  KNOWN; "" for none, "a,b" for those only)
  SESSIONS_STATS  1: print how often each command succeeded/failed and
                  each event was seen
"""
import json
import os
import random
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from qmp import QSD, TIMEOUT, Daemon, QMP, Runner, require  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10
IMG = "@IMG@"  # the image directory in commands and normalised replies

# Seeds make check runs: they pass, and together take well under a minute.
CHECK_SEEDS = list(range(1, 11))
DEFAULT_OPS = 40


# ---- images ---------------------------------------------------------------


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def gen_chains(rng):
    """Chains as data: [[layer, ...], ...], bottom layer first."""
    chains = []
    for k in range(rng.choice([1, 2, 2, 3])):
        layers = []
        n = rng.choice([1, 2, 2, 3, 3, 3])
        for i in range(n):
            fmt = "raw" if i == 0 and rng.random() < 0.3 else "qcow2"
            size = rng.choice([1, 2, 2, 3, 4]) * MiB
            if rng.random() < 0.15:
                size += rng.choice([64 * KiB, 512, 4096 * 3])
            if "short-backing" in avoided() and layers:
                size = min(size, layers[-1]["size"])
            layer = {"name": "c%dl%d" % (k, i), "fmt": fmt, "size": size,
                     "file": "c%dl%d.%s" % (k, i, fmt)}
            if fmt == "qcow2":
                layer["cluster"] = rng.choice([65536] * 6 +
                                              [4096, 32768, 131072])
                if i > 0:
                    layer["absolute"] = rng.random() < 0.3
            writes = []
            for _ in range(rng.choice([0, 1, 1, 2, 3, 4])):
                length = rng.choice([4 * KiB, 64 * KiB, 128 * KiB, 512 * KiB,
                                     MiB, 3 * KiB + 512])
                length = min(length, size)
                off = rng.randrange(0, size - length + 1, 512)
                if rng.random() < 0.5:
                    off -= off % (64 * KiB)
                zero = rng.random() < 0.2
                writes.append((off, length, None if zero else
                               rng.randrange(1, 256)))
            if "chunk-boundaries" in avoided():
                # data clusters allocated in guest order (contiguous host
                # runs); zero clusters whole and first (no zero cluster
                # that kept a host cluster next to one that has none)
                cl = layer.get("cluster", 512)
                writes = sorted(
                    ((o - o % cl, -(-(o + n) // cl) * cl - (o - o % cl), p)
                     for o, n, p in writes if p is None),
                    key=lambda w: (w[0], w[1])) + sorted(
                    (w for w in writes if w[2] is not None),
                    key=lambda w: (w[0], w[1]))
                writes = [(o, min(n, size - o), p) for o, n, p in writes]
            layer["writes"] = writes
            layers.append(layer)
        # an injected read error in the bottom layer (when it is added by
        # name: blkdebug under its format node), in one of its data writes
        # (where no layer above hides it: a stream reads it)
        def hidden(pos):
            return any(o - 128 * KiB <= pos < o + n + 128 * KiB
                       for l in layers[1:] for o, n, _ in l["writes"])
        spots = [o + n // 2 for o, n, p in layers[0]["writes"]
                 if p is not None and not hidden(o + n // 2)]
        if spots and len(layers) > 1 and rng.random() < 0.4:
            layers[0]["error"] = {"sector": rng.choice(spots) // 512,
                                  "errno": rng.choice([5, 5, 28]),
                                  "once": rng.random() < 0.7}
        chains.append(layers)
    return chains


def build_chains(chains, d):
    for layers in chains:
        for i, l in enumerate(layers):
            path = os.path.join(d, l["file"])
            if l["fmt"] == "raw":
                sh("qemu-img", "create", "-q", "-f", "raw", path,
                   str(l["size"]))
            else:
                cmd = ["qemu-img", "create", "-q", "-f", "qcow2",
                       "-o", "cluster_size=%d" % l["cluster"]]
                if i > 0:
                    below = layers[i - 1]
                    name = below["file"]
                    if l.get("absolute"):
                        name = os.path.join(d, name)
                    cmd += ["-b", name, "-F", below["fmt"]]
                sh(*cmd, path, str(l["size"]))
            cmds = []
            for off, length, pat in l["writes"]:
                if pat is None:
                    cmds += ["-c", "write -z %d %d" % (off, length)]
                else:
                    cmds += ["-c", "write -P 0x%x %d %d" % (pat, off, length)]
            if cmds:
                sh("qemu-io", "-f", l["fmt"], *cmds, path)


def image_facts(d, chains, flats):
    """What each image looks like after the session. The data of each
    layer (alone, and read through its chain) goes to raw files in
    `flats`, for compare_data()."""
    facts = {}
    os.makedirs(flats, exist_ok=True)
    for layers in chains:
        for l in layers:
            path = os.path.join(d, l["file"])
            f = {}
            if l["fmt"] == "qcow2":
                r = subprocess.run(["qemu-img", "check", "--output=json", path],
                                   stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
                try:
                    c = json.loads(r.stdout)
                    f["check"] = {k: c.get(k, 0) for k in (
                        "corruptions", "leaks", "check-errors",
                        "corruptions-fixed", "leaks-fixed")}
                except ValueError:
                    f["check"] = norm_text(r.stderr, d)
                f["check-rc"] = r.returncode
            r = subprocess.run(["qemu-img", "info", "--output=json", "-U",
                                "-f", l["fmt"], path],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
            info = json.loads(r.stdout) if r.returncode == 0 else {}
            f["backing"] = info.get("backing-filename", "").replace(d, IMG)
            f["backing-format"] = info.get("backing-filename-format")
            f["virtual-size"] = info.get("virtual-size")
            fs = info.get("format-specific", {}).get("data", {})
            f["dirty"] = info.get("dirty-flag")
            f["corrupt"] = fs.get("corrupt")
            alone = "json:" + json.dumps({"driver": l["fmt"], "file": {
                "driver": "file", "filename": path}, **(
                    {"backing": None} if l["fmt"] == "qcow2" else {})})
            # (the data/zero split of a raw file is where its file system
            # has holes, which qemu-io's write -z leaves differently from
            # one build to the next: raw layers show presence only)
            r = subprocess.run(["qemu-img", "info", "--output=json", "-U",
                                "--backing-chain", "-f", l["fmt"], path],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
            formats = [i["format"] for i in json.loads(r.stdout)] \
                if r.returncode == 0 else []
            f["map-alone"] = qemu_map(alone, raw_depths={0} if
                                      l["fmt"] == "raw" else set())
            f["map-chain"] = qemu_map(path, l["fmt"], raw_depths={
                d for d, fmt in enumerate(formats) if fmt == "raw"})
            for what, src in (("alone", alone), ("chain", path)):
                flat = os.path.join(flats, "%s.%s.raw" % (l["file"], what))
                args = ["qemu-img", "convert", "-U", "-O", "raw", src, flat]
                if not src.startswith("json:"):
                    args[3:3] = ["-f", l["fmt"]]
                r = subprocess.run(args, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
                f["data-" + what] = ("readable" if r.returncode == 0 else
                                     norm_text(r.stdout, d))
            facts[l["file"]] = f
    return facts


def compare_data(chains, qflats, oflats, ofacts):
    """qemu-img compare of the data both daemons left (where both could
    be read): the result goes into ours' facts."""
    for layers in chains:
        for l in layers:
            f = ofacts[l["file"]]
            for what in ("alone", "chain"):
                name = "%s.%s.raw" % (l["file"], what)
                q, o = os.path.join(qflats, name), os.path.join(oflats, name)
                if f["data-" + what] == "readable" and os.path.exists(q):
                    r = subprocess.run(["qemu-img", "compare", "-f", "raw",
                                        "-F", "raw", q, o],
                                       stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
                    if r.returncode != 0:
                        f["data-" + what] = "differs from qsd's: " + \
                            r.stdout.strip().replace(qflats, "<qsd>") \
                            .replace(oflats, "<ours>")


def norm_text(s, d):
    return s.replace(d, "<D>").strip()


def qemu_map(src, fmt=None, raw_depths=()):
    args = ["qemu-img", "map", "--output=json", "-U"]
    if fmt:
        args += ["-f", fmt]
    r = subprocess.run(args + [src], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return "error"
    out = []
    for e in json.loads(r.stdout):
        # Where data sits in the file may differ: host offsets go, and the
        # extents they split are merged again.
        e.pop("offset", None)
        if e.get("depth") in raw_depths or \
                "cor-zero-granularity" in avoided():
            e.pop("zero", None)
            e.pop("data", None)
        if out and all(out[-1].get(k) == e.get(k) for k in e
                       if k not in ("start", "length")) and \
                out[-1]["start"] + out[-1]["length"] == e["start"]:
            out[-1]["length"] += e["length"]
        else:
            out.append(e)
    return out


# ---- talking to a daemon --------------------------------------------------


class Link:
    """One QMP connection; every line received is kept in order. Replies to
    polls (ids "poll-N") are taken out of the compared stream."""

    def __init__(self, d):
        self.c = connect(d)
        self.npoll = 0
        self.out = []  # compared messages of the current step

    def send(self, msg):
        self.c.send_raw(json.dumps(msg))

    def recv(self, timeout):
        m = self.c.recv(timeout)
        while "QMP" in m:
            # (qsd greets twice when a connection arrives while it closes
            # the start-up probe's)
            m = self.c.recv(timeout)
        if m.get("id") is not None and str(m.get("id")).startswith("poll-"):
            return m
        self.out.append(m)
        return m

    def poll(self, name, args=None):
        self.npoll += 1
        pid = "poll-%d" % self.npoll
        msg = {"execute": name, "id": pid}
        if args is not None:
            msg["arguments"] = args
        self.send(msg)
        while True:
            m = self.recv(TIMEOUT)
            if m.get("id") == pid:
                assert "return" in m, m
                return m["return"]

    def wait_input(self, timeout):
        """Reads whatever arrives within `timeout` (keeps it)."""
        deadline = time.monotonic() + timeout
        while True:
            if b"\n" in self.c.buf:
                self.recv(timeout)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([self.c.s], [], [], left)
            if not r:
                return
            chunk = self.c.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.c.buf += chunk


def connect(d):
    """qsd creates its socket file before it listens: a refused connection
    right after start means "not yet"."""
    for _ in range(500):
        try:
            return d.connect(negotiate=False)
        except ConnectionRefusedError:
            time.sleep(0.01)
        except EOFError:
            # qsd's monitor serves one client at a time: a connection
            # made while it still closes the start-up probe's is hung up
            if not isinstance(d, QSD) or d.proc.poll() is not None:
                raise
            time.sleep(0.01)
    return d.connect(negotiate=False)


def job_stable(j):
    """A job state that does not change by itself."""
    st = j["status"]
    if st == "paused":
        return not j["busy"]
    if st == "running":
        # asleep in the rate limit after a chunk: hours until the next one
        return (not j["busy"] and not j["paused"] and 0 < j["speed"] <= 8192
                and j["offset"] > 0)
    if st == "pending":
        return not j["auto-finalize"]
    if st == "concluded":
        return not j["auto-dismiss"]
    return False


def settle(link):
    """Waits until every job is in a stable state (see job_stable): two
    polls at least 20 ms apart must agree that running jobs sleep at the
    same offset (a job also sleeps an instant between its chunks)."""
    deadline = time.monotonic() + TIMEOUT
    pause = 0.001
    while True:
        jobs = link.poll("query-block-jobs")
        if all(job_stable(j) for j in jobs):
            if not any(j["status"] == "running" for j in jobs):
                return jobs
            link.wait_input(0.02)
            again = link.poll("query-block-jobs")
            if again == jobs:
                return jobs
            continue
        if time.monotonic() > deadline:
            raise AssertionError("jobs never settled: %r" % jobs)
        link.wait_input(pause)
        pause = min(pause * 2, 0.05)


# ---- normalising ------------------------------------------------------------


class Norm:
    """Per-session renaming of implicit nodes (#blockNNN: a counter and
    random digits in QEMU) in order of appearance."""

    def __init__(self, img):
        self.names = {}
        self.img = img

    def name(self, m):
        n = self.names.setdefault(m.group(0), len(self.names))
        return "#block<%d>" % n

    def __call__(self, msg):
        msg = dict(msg)
        msg.pop("timestamp", None)
        if "return" in msg and isinstance(msg["return"], dict) and \
                "package" in msg["return"]:
            msg["return"] = dict(msg["return"], package="P")
        if "QMP" in msg:
            msg = {"QMP": "greeting"}
        if isinstance(msg.get("return"), list):
            msg["return"] = [strip_sizes(x) for x in msg["return"]]
        s = json.dumps(msg).replace(self.img, IMG)
        s = re.sub(r"#block\d+", self.name, s)
        msg = json.loads(s)
        if "json-name-order" in avoided():
            msg = sort_json_names(msg)
        return msg


def sort_json_names(v):
    """json:{...} strings with their members sorted (see
    json-name-order)."""
    if isinstance(v, dict):
        return {k: sort_json_names(x) for k, x in v.items()}
    if isinstance(v, list):
        return [sort_json_names(x) for x in v]
    if isinstance(v, str) and v.startswith("json:{"):
        try:
            return "json:" + json.dumps(json.loads(v[5:]), sort_keys=True)
        except ValueError:
            return v
    return v


def strip_sizes(node):
    """A query-named-block-nodes element without on-disk sizes."""
    if not isinstance(node, dict) or "image" not in node:
        return node
    node = json.loads(json.dumps(node))
    img = node["image"]
    if "file-length" in avoided() and img.get("filename", "").endswith(
            ".qcow2") and img.get("format") in ("file", "raw"):
        img["virtual-size"] = "<file size>"
    while img:
        img.pop("actual-size", None)
        img = img.get("backing-image")
    return node


# ---- sessions ---------------------------------------------------------------


def resolve(v, implicit, img):
    """Symbolic references: {"$implicit": k} is the k-th #block node of the
    last node list (newest first); IMG in a string the image directory."""
    if isinstance(v, dict):
        if set(v) == {"$implicit"}:
            k = v["$implicit"]
            return implicit[k] if k < len(implicit) else "#nonode"
        return {k: resolve(x, implicit, img) for k, x in v.items()}
    if isinstance(v, list):
        return [resolve(x, implicit, img) for x in v]
    if isinstance(v, str):
        return v.replace(IMG, img)
    return v


class Player:
    """Plays ops on one daemon: one step per op (the op's reply and the
    events until the jobs settled)."""

    def __init__(self, d, img):
        self.link = Link(d)
        self.img = img
        self.norm = Norm(img)
        self.steps = []
        self.implicit = []
        self.jobs = []
        self.nodes = []
        self.nodes_fresh = True
        greeting = self.link.c.greeting
        assert "QMP" in greeting, greeting

    def play(self, op):
        link = self.link
        link.out = []
        msg = resolve({k: v for k, v in op.items() if k[0] != "_"},
                      self.implicit, self.img)
        link.send(msg)
        # the op's own reply (events may come first)
        while not any("return" in m or "error" in m for m in link.out):
            link.recv(TIMEOUT)
        self.jobs = settle(link)
        # (qsd 7.2 crashes in query-named-block-nodes while a stream job
        # is concluded and not dismissed: the node list waits until then)
        self.nodes_fresh = not any(j["status"] == "concluded"
                                   for j in self.jobs)
        if self.nodes_fresh:
            self.nodes = link.poll("query-named-block-nodes", {"flat": True})
        self.implicit = [n["node-name"] for n in self.nodes
                         if n["node-name"].startswith("#")]
        out = [self.norm(m) for m in link.out]
        self.steps.append(out)
        return out

    def reply(self):
        """The reply of the last step."""
        for m in self.steps[-1]:
            if "return" in m or "error" in m:
                return m
        return None


class SessionError(AssertionError):
    """A session that could not be played to its end (a daemon hung up, a
    job never settled); carries the ops played so far."""

    def __init__(self, text, ops, kind):
        super().__init__(text)
        self.ops, self.kind = ops, kind


def run_session(ops_or_gen, chains, root, kind):
    """Plays a session on qsd ("qsd") or blockjobd ("ours") in root/img;
    returns (ops played, steps, image facts)."""
    img = os.path.join(root, "img")
    shutil.rmtree(img, ignore_errors=True)
    os.makedirs(img)
    build_chains(chains, img)
    wd = os.path.join(root, kind)
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    ops = []
    with (QSD(workdir=wd) if kind == "qsd" else Daemon(workdir=wd)) as d:
        p = Player(d, img)
        p.play({"execute": "qmp_capabilities"})
        ops.append({"execute": "qmp_capabilities"})
        source = ops_or_gen(p, img) if callable(ops_or_gen) \
            else ops_or_gen[1:]
        try:
            for op in source:
                ops.append(op)
                p.play(op)
        except (AssertionError, EOFError, OSError) as e:
            raise SessionError("%s: %s after %s\n%s\ndaemon log:\n%s" % (
                kind, e, json.dumps(ops[-1]),
                "\n".join(map(json.dumps, p.link.out)),
                d.logtext()[-3000:] + " (exit %r)" % d.proc.poll()),
                ops, kind) from e
        p.link.c.close()
    facts = image_facts(img, chains, os.path.join(root, "flat-" + kind))
    return ops, p.steps, facts


# ---- the generator -----------------------------------------------------------

# Argument validation (the schema's texts): wrong types, nested members,
# unions, alternates, enums, integer ranges. (F: a file of chain 0.)
F = IMG + "/c0l0.x"
PROTOCOL_CASES = [
    ("block-stream", {"device": "d", "job-id": "s", "speed": "1"}),
    ("block-stream", {"device": "d", "job-id": "s", "speed": 1e3}),
    ("block-stream", {"device": "d", "job-id": "s",
                      "speed": 9223372036854775808}),
    ("block-stream", {"device": "d", "job-id": "s", "on-error": 5}),
    ("block-stream", {"device": "d", "job-id": "s", "on-error": None}),
    ("block-stream", {"device": "d", "job-id": "s", "a": 1, "b": 2, "c": 3}),
    ("block-stream", {"device": "d", "job-id": "s", "zz": 1,
                      "base-node": 5}),
    ("block-stream", {"device": ["d"]}),
    ("block-stream", {"device": True}),
    ("block-job-cancel", {"device": "x", "force": 0}),
    ("query-jobs", {"a": 1, "b": 2}),
    ("query-named-block-nodes", {"flat": None}),
    ("query-named-block-nodes", {"flat": True, "x": 1}),
    ("blockdev-add", {}),
    ("blockdev-add", {"driver": 5}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": None}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": []}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {}}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n",
                      "file": {"filename": F}}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F, "bogus": 1}}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F, "aio": "bogus"}}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F}, "backing": []}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F}, "backing": {}}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F}, "backing": {"driver": "nosuch"}}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F}, "cache": []}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F}, "cache": {"direct": True, "x": 1}}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F}, "overlap-check": "bogus"}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F}, "overlap-check": 5}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F},
        "overlap-check": {"template": "bogus"}}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F}, "encrypt": {}}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "file", "filename": F}, "l2-cache-size": 1.5}),
    ("blockdev-add", {"driver": "null-co", "node-name": "n2",
                      "latency-ns": -1}),
    ("blockdev-add", {"driver": "null-co", "node-name": "n3", "size": "1"}),
    ("blockdev-add", {"driver": "blkdebug", "node-name": "b", "image": {
        "driver": "file", "filename": F}, "inject-error": [{"event": "x"}]}),
    ("blockdev-add", {"driver": "blkdebug", "node-name": "b", "image": {
        "driver": "file", "filename": F},
        "inject-error": {"event": "read_aio"}}),
    ("blockdev-add", {"driver": "blkdebug", "node-name": "b", "image": {
        "driver": "file", "filename": F}, "inject-error": [{}]}),
    ("blockdev-add", {"driver": "blkdebug", "node-name": "b", "image": {
        "driver": "file", "filename": F},
        "set-state": [{"event": "read_aio"}]}),
    ("blockdev-add", {"driver": "blkdebug", "node-name": "b", "image": {
        "driver": "file", "filename": F}, "max-transfer": 4294967296}),
    ("blockdev-add", {"driver": "blkdebug", "node-name": "b", "image": {
        "driver": "file", "filename": F}, "take-child-perms": ["bogus"]}),
    ("blockdev-add", {"driver": "file", "node-name": "f2", "filename": F,
                      "locking": "bogus"}),
    ("blockdev-del", {"node-name": None}),
    ("blockdev-del", {"node-name": "f", "force": True}),
    ("query-version", {"x": 1}),
]

ON_ERROR = ["report", "ignore", "enospc", "stop", "auto"]

# Differences found and reported but not fixed yet: the generator steers
# clear of them so that sessions get past them (SESSIONS_AVOID="" shows
# them again; SESSIONS_AVOID="a,b" avoids only those). Fixed since and no
# longer avoided: error order and checks of blockdev-add, the job list
# order, qcow2 block-status runs, lazy-refcounts' dirty flag, copy-on-read
# zero runs, short backings, reopens of read-only tops, base lookup,
# bottom filters, cache and force-share inheritance, verbs that end a job
# before their reply, rate limits around errors and speed changes, reopens
# of read-only tops (failed ones, named file children), json: backing
# names in headers.
KNOWN = {
    # qsd drains the jobs of a chain whose graph changes (another job's
    # start or end, nodes added over or deleted from it): paused/running
    # events (being worked on)
    "drain-events",
    # json: filenames: members of a flattened list (blkdebug's
    # inject-error.0.event, .errno, ...) of a child node come in another
    # order
    "json-name-order",
    # blockdev-add reports the first error in QEMU's order: a lock
    # conflict of the file child comes before the format's header check
    "add-error-order",
    # a concluded job (auto-dismiss false) keeps its nodes blocked until
    # it is dismissed
    # (and the nodes that fell out of its chain stay, "in use by block
    # job")
    "concluded-claims",
    # block-stream of a protocol node under a format node: permission
    # conflict in qsd
    # (texts of the lock and permission errors differ)
    "stream-protocol-node",
    # the length of a qcow2 file that was written to includes blockjobd's
    # preallocated tail (file nodes' virtual-size; a raw node over it)
    "file-length",
    # a verb that wakes a job replies after what the job does until it
    # yields in qsd: block-job-set-speed to 0 on a sleeping job whose rest
    # needs no I/O (the job ends before the reply), a wake whose next read
    # fails at once (BLOCK_JOB_ERROR, and for stop the paused event,
    # before the reply)
    "wake-reply-order",
    # lazy-refcounts: the dirty flag qsd shows once the image was written
    # (fixed for most cases; still differs after some streams)
    "lazy-refcounts",
    # a job that failed on a read error (on-error report, speed 0) leaves
    # more copied clusters in the top than qsd's (its next chunks were in
    # flight): accepted, but a later stream of that chain has less to do
    # than qsd's (ends sooner, other offsets)
    "extra-copies",
}


def avoided():
    env = os.environ.get("SESSIONS_AVOID")
    return KNOWN if env is None else set(filter(None, env.split(",")))
SPEEDS = [0, 0, 1, 1, 1, 1, 512, 4096, 8192]


class Gen:
    """Chooses the next command from the state qsd's replies left (the
    generated ops are then replayed as they are on blockjobd)."""

    def __init__(self, rng, chains, nops):
        self.rng, self.chains, self.nops = rng, chains, nops
        self.named = {}  # node name -> {"kind", "chain", "layer"}
        self.avoid = avoided()
        self.job_ids = []  # every id block-stream was given
        self.force_shared = False  # a force-share node was added
        self.job_chain = {}  # job id -> chain of its device
        self.error_chains = set()  # chains with an injected error
        self.tainted = set()  # chains a failed job copied into
        self.njob = self.nfilter = 0

    # -- state --

    def path(self, k, i):
        return os.path.join(IMG, self.chains[k][i]["file"])

    def live_nodes(self):
        return [n["node-name"] for n in self.p.nodes]

    def live_jobs(self):
        return [j["device"] for j in self.p.jobs]

    def ok(self):
        r = self.p.reply()
        return r is not None and "return" in r

    def pick(self, *weighted):
        """pick((w, value), ...) -> a value."""
        total = sum(w for w, _ in weighted)
        x = self.rng.uniform(0, total)
        for w, v in weighted:
            x -= w
            if x <= 0:
                return v
        return weighted[-1][1]

    def chance(self, p):
        return self.rng.random() < p

    def implicit_ref(self, formats=False):
        """An implicit node (formats: only qcow2/raw ones)."""
        idx = [k for k, n in enumerate(self.p.implicit)
               if not formats or self.drv(n) in ("qcow2", "raw")]
        if not idx:
            return "#nonode"
        return {"$implicit": self.rng.choice(idx)}

    def file_users(self, path):
        """Nodes of the file driver open on `path` (a path with IMG)."""
        real = path.replace(IMG, self.img)
        return [n["node-name"] for n in self.p.nodes
                if n["drv"] == "file" and n["image"]["filename"] == real]

    def node_info(self, name):
        for n in self.p.nodes:
            if n["node-name"] == name:
                return n
        return None

    def drv(self, name):
        for n in self.p.nodes:
            if n["node-name"] == name:
                return n["drv"]
        return None

    def any_node(self, filters=True):
        """A node name for a command: named nodes mostly."""
        live = [n for n in self.live_nodes() if not n.startswith("#") and (
            filters or self.drv(n) != "copy-on-read")]
        return self.pick((8, self.rng.choice(live) if live else "nonode"),
                         (2, self.implicit_ref(formats=not filters)),
                         (1, "nonode"))

    # -- the session --

    def __call__(self, player, img):
        self.p, self.img = player, img
        for k in range(len(self.chains)):
            for op in self.add_chain(k):
                yield op
                self.after(op)
        for _ in range(self.nops):
            for op in self.next_ops():
                yield op
                self.after(op)
        # The end: jobs the user still has are cancelled, finalized and
        # dismissed (qsd 7.2 crashes at exit while a job is concluded).
        for _ in range(4):
            ends = []
            for j in self.p.jobs:
                verb = {"pending": "job-finalize",
                        "concluded": "job-dismiss"}.get(j["status"],
                                                       "job-cancel")
                ends.append({"execute": verb,
                             "arguments": {"id": j["device"]}})
            for op in ends:
                yield op
        for op in ({"execute": "query-block-jobs"},
                   {"execute": "query-jobs"},
                   {"execute": "query-named-block-nodes"}):
            yield op

    def after(self, op):
        args = op.get("arguments") or {}
        if op["execute"] == "blockdev-add" and self.ok():
            self.named[args["node-name"]] = op.get("_meta", {})
            if "blkdebug" in json.dumps(args):
                self.error_chains.add(op.get("_meta", {}).get("chain"))
                count("(error layers added)")
            if args.get("force-share"):
                self.force_shared = True
            f = args.get("file")
            if isinstance(f, dict) and "node-name" in f:
                self.named[f["node-name"]] = {"kind": "file"}
        if op["execute"] == "block-stream" and self.ok():
            self.job_chain[args.get("job-id")] = self.chain_of(
                args.get("device"))
            if self.job_chain[args.get("job-id")] in self.error_chains:
                count("(streams on chains with an error layer)")
        for m in self.p.steps[-1] if self.p.steps else []:
            if m.get("event") == "BLOCK_JOB_ERROR":
                self.tainted.add(self.job_chain.get(m["data"]["device"]))
        if op["execute"] == "blockdev-del" and self.ok():
            self.named.pop(args.get("node-name"), None)
        op.pop("_meta", None)
        if self.p.nodes_fresh:
            live = set(self.live_nodes())
            for n in list(self.named):
                if n not in live:
                    del self.named[n]

    def chain_of(self, ref):
        """The chain a node belongs to (by its file names), or None."""
        info = self.node_info(resolve(ref, self.p.implicit, self.img))
        m = re.search(r"/c(\d+)l\d+\.", info["image"]["filename"]) \
            if info else None
        return int(m.group(1)) if m else None

    def drains(self, chain):
        """Whether a graph change in `chain` would drain a live job (see
        drain-events)."""
        return "drain-events" in self.avoid and chain is not None and any(
            self.job_chain.get(j["device"], chain) == chain
            for j in self.p.jobs)

    def known_names(self):
        """Node names in use (the node list is not refreshed while a job
        is concluded: the names this session added count too)."""
        return set(self.live_nodes()) | set(self.named)

    def next_ops(self):
        live = 3 if self.p.jobs else 1  # verbs mostly while jobs live
        choices = [(10, self.add_layer_ops), (4, self.bad_add_ops),
                   (5, self.del_ops), (16, self.stream_ops),
                   (6, self.bad_stream_ops), (10 * live, self.verb_ops),
                   (3 * live, self.speed_ops), (10, self.query_ops),
                   (8, self.misc_ops)]
        if "concluded-claims" in self.avoid and self.concluded():
            choices = [c for c in choices if c[1] not in (
                self.del_ops, self.stream_ops, self.bad_stream_ops)]
        while True:
            # (ops come one at a time: each is made after the one before
            # was played)
            it = iter(self.pick(*choices)())
            first = next(it, None)
            if first is not None:
                yield first
                yield from it
                return

    def job_lists_differ(self):
        return "job-order" in self.avoid and len(self.p.jobs) > 1

    # -- blockdev-add --

    def add_chain(self, k):
        """How a user adds a chain: every layer with explicit backing
        references, or only the top (implicit backing), or a mix."""
        layers = self.chains[k]
        style = self.pick((4, "explicit"), (3, "top"), (2, "mixed"))
        if "error" in layers[0]:
            style = "explicit"  # error injection needs the named bottom
        if style == "explicit":
            idx = range(len(layers))
        elif style == "top":
            idx = [len(layers) - 1]
        else:
            idx = sorted(set([self.rng.randrange(len(layers)),
                              len(layers) - 1]))
        for i in idx:
            yield from self.add_layer(k, i, explicit=style == "explicit")

    def add_layer_ops(self):
        k = self.rng.randrange(len(self.chains))
        i = self.rng.randrange(len(self.chains[k]))
        if self.drains(k):
            return []
        return self.add_layer(k, i)

    def add_layer(self, k, i, explicit=False):
        l = self.chains[k][i]
        name = "c%dl%d" % (k, i)
        if "add-error-order" in self.avoid and name in self.known_names():
            return
        args = {"driver": l["fmt"], "node-name": name}
        fname = "c%df%d" % (k, i)
        ro_file = False
        if "error" in l:
            pass  # (its file is blkdebug over the file, below)
        elif self.chance(0.2) and fname not in self.named:
            fop = {"driver": "file", "node-name": fname,
                   "filename": self.path(k, i)}
            if self.chance(0.2):
                fop["read-only"] = ro_file = True
            yield {"execute": "blockdev-add", "arguments": fop,
                   "_meta": {"kind": "file"}}
            args["file"] = fname
        elif fname in self.named and self.chance(0.5):
            args["file"] = fname
            ro_file = bool((self.node_info(fname) or {}).get("ro"))
        if not isinstance(args.get("file"), str):
            args["file"] = {"driver": "file", "filename": self.path(k, i)}
            if self.chance(0.15) and not (
                    "add-error-order" in self.avoid and
                    fname in self.known_names()):
                args["file"]["node-name"] = fname
            if self.chance(0.1):
                args["file"]["aio"] = self.rng.choice(["threads", "native"])
            if self.chance(0.1):
                args["file"]["locking"] = self.rng.choice(["auto", "on",
                                                           "off"])
            if "error" in l:
                e = l["error"]
                args["file"] = {"driver": "blkdebug", "inject-error": [{
                    "event": "read_aio", "errno": e["errno"],
                    "sector": e["sector"], "once": e["once"]}],
                    "image": args["file"]}
        if l["fmt"] == "qcow2" and i > 0:
            below = "c%dl%d" % (k, i - 1)
            # (the header's backing cannot be opened while a node of it
            # is open read-write: a reference mostly then)
            choice = self.pick(
                (30 if below in self.named else 8 if explicit else 3, "ref"),
                (3, "omit"), (1, "null"), (1, "nested"))
            if choice == "ref" and below in self.named:
                args["backing"] = below
            elif choice == "null":
                args["backing"] = None
            elif choice == "nested" and not (
                    "nested-backing-prefix" in self.avoid and
                    any(self.file_users(self.path(k, j)) for j in range(i))):
                bl = self.chains[k][i - 1]
                args["backing"] = {"driver": bl["fmt"], "file": {
                    "driver": "file", "filename": self.path(k, i - 1)}}
        elif l["fmt"] == "qcow2" and self.chance(0.1):
            args["backing"] = None
        if self.chance(0.1):
            args["read-only"] = self.chance(0.8)
        if self.chance(0.05):
            args["auto-read-only"] = self.chance(0.5)
        if self.chance(0.1):
            cache = {}
            if self.chance(0.6):
                cache["direct"] = self.chance(0.5)
            if self.chance(0.6):
                cache["no-flush"] = self.chance(0.5)
            if cache or "cache-empty" not in self.avoid:
                args["cache"] = cache
        if self.chance(0.08):
            args["discard"] = self.rng.choice(["ignore", "unmap"])
        if self.chance(0.08):
            args["detect-zeroes"] = self.rng.choice(["off", "on", "unmap"])
            if "detect-zeroes-unmap" in self.avoid and \
                    args["detect-zeroes"] == "unmap" and \
                    args.get("discard") != "unmap":
                args["discard"] = "unmap"
        if self.chance(0.04):
            args["force-share"] = True
        if l["fmt"] == "qcow2" and self.chance(0.06):
            opt = self.rng.choice([
                ("lazy-refcounts", "lazy-refcounts" not in self.avoid),
                ("cache-size", 1 * MiB),
                ("l2-cache-size", 65536), ("cache-clean-interval", 0),
                ("pass-discard-request", False),
                ("overlap-check", "none")])
            args[opt[0]] = opt[1]
        if l["fmt"] == "raw" and self.chance(0.1) and \
                "raw-size" not in self.avoid:
            args["size"] = min(l["size"], MiB)
            if self.chance(0.5):
                args["offset"] = 0
        if ro_file and "readonly-file-child" in self.avoid and \
                not args.get("read-only"):
            args["read-only"] = True
        if "force-share-implicit" in self.avoid and args.get("force-share") \
                and args.get("read-only") and "backing" not in args and \
                l["fmt"] == "qcow2" and i > 0:
            args["backing"] = None
        named_file = isinstance(args["file"], str) or \
            "node-name" in args["file"]
        if "cache-inheritance" in self.avoid and (
                isinstance(args.get("backing"), dict) or
                "blkdebug" in json.dumps(args.get("file"))):
            args.pop("cache", None)
        yield {"execute": "blockdev-add", "arguments": args,
               "_meta": {"kind": "fmt", "chain": k, "layer": i,
                         "force-share": bool(args.get("force-share")),
                         "named-file": named_file}}

    def bad_add_ops(self):
        k = self.rng.randrange(len(self.chains))
        i = self.rng.randrange(len(self.chains[k]))
        l = self.chains[k][i]
        path = self.path(k, i)
        if "add-error-order" in self.avoid and self.file_users(path):
            return []
        live = self.known_names()
        fresh = [n for n in ("x%d" % j for j in range(9)) if n not in live]
        good = {"driver": l["fmt"], "node-name": fresh[0] if fresh else "x9",
                "file": {"driver": "file", "filename": path}}
        bad = self.rng.choice([
            dict(good, driver="nosuch"),
            {"node-name": "x1", "file": good["file"]},
            {"driver": "qcow2", "node-name": "x1"},
            dict(good, file="nonode"),
            dict(good, file={"driver": "file",
                             "filename": path + ".missing"}),
            dict(good, **{"node-name": "1abc"}),
            dict(good, **{"node-name": "#x"}),
            dict(good, **{"node-name": "n" * 32}),
            dict(good, **{"node-name": self.any_node()})
            if "add-error-order" not in self.avoid else good,
            {k2: v for k2, v in good.items() if k2 != "node-name"},
            dict(good, bogus=1),
            dict(good, **{"read-only": "yes"}),
            dict(good, cache={"direct": "on"}),
            dict(good, cache={"bogus": True}),
            dict(good, cache={}) if "cache-empty" not in self.avoid
            else good,
            dict(good, driver="qcow2" if l["fmt"] == "raw" else "raw"),
            dict(good, file={"driver": "file", "filename": 5}),
            dict(good, file={"driver": "file"}),
            dict(good, discard="bogus"),
            dict(good, **{"detect-zeroes": "unmap"})
            if "detect-zeroes-unmap" not in self.avoid else good,
            dict(good, **{"detect-zeroes": "unmap", "discard": "unmap"}),
            dict(good, **{"force-share": True}),
            dict(good, **{"force-share": True, "read-only": True}, **(
                {"backing": None} if "force-share-implicit" in self.avoid
                and l["fmt"] == "qcow2" else {})),
            dict(good, backing="nonode")
            if "nested-backing-prefix" not in self.avoid else good,
            dict(good, backing=5),
            dict(good, **{"aio": "native"}),
            dict(good, file={"driver": "file", "filename": path,
                             "aio": "native"}),
            dict(good, file={"driver": "file", "filename": path,
                             "aio": "native", "cache": {"direct": True}}),
            dict(good, file={"driver": "file", "filename": path,
                             "locking": "maybe"}),
            dict(good, **{"auto-read-only": 1}),
            dict(good, cache={"direct": True}),
        ] + ([] if "option-checks" in self.avoid else [
            dict(good, driver="qcow2", **{"cache-size": -1}),
            dict(good, driver="qcow2", **{"cache-clean-interval": -1}),
            dict(good, driver="qcow2", encrypt={"format": "luks"}),
            dict(good, driver="raw", size=-1),
            dict(good, driver="raw", offset=-512),
            {"driver": "blkdebug", "node-name": good["node-name"],
             "image": good["file"], "align": 3},
            {"driver": "file", "node-name": good["node-name"],
             "filename": ""},
            {"driver": "file", "node-name": good["node-name"],
             "filename": path, "pr-manager": "x"},
        ]))
        return [{"execute": "blockdev-add", "arguments": bad}]

    # -- blockdev-del --

    def del_ops(self):
        live = self.live_nodes()
        named = [n for n in live if not n.startswith("#")]
        target = self.pick((6, self.rng.choice(named) if named else "nonode"),
                           (2, self.implicit_ref()), (1, "nonode"),
                           (1, ""))
        if self.drains(self.chain_of(target)):
            return []
        return [{"execute": "blockdev-del",
                 "arguments": {"node-name": target}}]

    # -- block-stream --

    def fmt_nodes(self):
        return [n for n, m in self.named.items() if m.get("kind") == "fmt"]

    def chain_below(self, top):
        """Node names below `top` in its chain (as the flat list shows
        them: backing_file names are filenames, so walk our own map)."""
        m = self.named.get(top, {})
        if "chain" not in m:
            return []
        return ["c%dl%d" % (m["chain"], i) for i in range(m["layer"])]

    def job_id(self):
        self.njob += 1
        fresh = "j%d" % self.njob
        live = self.live_jobs()
        jid = self.pick((20, fresh), (1, None), (1, "1j"), (1, ""),
                        (2, self.rng.choice(live) if live else fresh),
                        (1, self.rng.choice(self.job_ids) if self.job_ids
                         else fresh))
        return jid

    def stream_device_ok(self, device):
        """Whether a stream of `device` stays clear of the known
        differences around reopening a read-only top."""
        name = resolve(device, self.p.implicit, self.img)
        info = self.node_info(name)
        if not info or not info["ro"]:
            return True
        m = self.named.get(name, {})
        if "failed-reopen-ro" in self.avoid and (
                m.get("force-share") or
                (name.startswith("#") and self.force_shared)):
            return False
        if "force-share-stream" in self.avoid and (
                m.get("force-share") or
                (name.startswith("#") and self.force_shared)):
            return False
        if "reopen-named-child" in self.avoid and m.get("named-file"):
            return False
        if "failed-reopen-ro" in self.avoid:
            path = info["image"]["filename"].replace(self.img, IMG)
            if len(self.file_users(path)) > 1:
                return False
        return True

    def json_in_chain(self, device):
        """Whether a node at or below `device` has a json: filename (as
        far as the node list tells: backing_file names the next one)."""
        if not self.p.nodes_fresh:
            return True  # (the node list is old: assume the worst)
        k = self.chain_of(device)
        if k is not None and any(
                (n["image"]["filename"].startswith("json:") or
                 n.get("backing_file", "").startswith("json:")) and
                "/c%dl" % k in n["image"]["filename"] for n in self.p.nodes):
            return True  # (any node of its chain)
        info = self.node_info(resolve(device, self.p.implicit, self.img))
        while info:
            if info["image"]["filename"].startswith("json:"):
                return True
            below = info.get("backing_file")
            if not below:
                return False
            if below.startswith("json:"):
                return True
            info = next((n for n in self.p.nodes
                         if n["image"]["filename"] == below and
                         n["drv"] != "file"), None)
        return False

    def base_by_name_ok(self, device):
        """'base' as a path finds the node in both daemons (see
        base-lookup) only along plain filenames."""
        return "base-lookup" not in self.avoid or \
            not self.json_in_chain(device)

    def stream_ops(self):
        # tops with a backing mostly (a stream of a node without one has
        # nothing to do)
        fmts = [n for n in self.fmt_nodes() for _ in range(
            5 if (self.node_info(n) or {}).get("backing_file") else 1)]
        if "stream-protocol-node" in self.avoid:
            device = self.pick(
                (12, self.rng.choice(fmts) if fmts else "nonode"),
                (1, self.implicit_ref(formats=True)))
        else:
            device = self.pick(
                (12, self.rng.choice(fmts) if fmts else "nonode"),
                (1, self.implicit_ref()), (1, self.any_node()))
        if not self.stream_device_ok(device) or \
                self.drains(self.chain_of(device)) or (
                    "extra-copies" in self.avoid and
                    self.chain_of(device) in self.tainted):
            return []
        args = {"device": device}
        jid = self.job_id()
        if jid is not None:
            args["job-id"] = jid
            self.job_ids.append(jid)
        below = self.chain_below(device) if isinstance(device, str) else []
        if "base-json-name" in self.avoid and self.json_in_chain(device):
            below = []
        r = self.rng.random()
        if r < 0.25 and below:
            args["base-node"] = self.rng.choice(below)
        elif r < 0.35 and below:
            args["bottom"] = self.rng.choice(below + [device])
        elif r < 0.45 and below and self.base_by_name_ok(device):
            m = self.named[device]
            i = self.rng.randrange(m["layer"])
            f = self.chains[m["chain"]][i]["file"]
            args["base"] = os.path.join(IMG, f)
            if "base-lookup" not in self.avoid and self.chance(0.5):
                args["base"] = f
        if self.chance(0.15):
            args["backing-file"] = self.rng.choice(
                ["other.qcow2", "c0l0.qcow2", os.path.join(IMG, "x"),
                 ""])
        if self.chance(0.8):
            args["speed"] = self.rng.choice(SPEEDS)
        if self.chance(0.25):
            args["on-error"] = self.rng.choice(ON_ERROR)
        if "error-while-limited" in self.avoid and args.get("speed") and \
                self.chain_of(device) in self.error_chains:
            args["on-error"] = "ignore"
        if self.chance(0.15):
            self.nfilter += 1
            args["filter-node-name"] = "cor%d" % self.nfilter
        if self.chance(0.25):
            args["auto-finalize"] = self.chance(0.5)
        if self.chance(0.25):
            args["auto-dismiss"] = self.chance(0.5)
        info = self.node_info(resolve(device, self.p.implicit, self.img))
        if "failed-reopen-ro" in self.avoid and info and info["ro"]:
            for k in ("filter-node-name", "backing-file", "base",
                      "base-node", "bottom"):
                args.pop(k, None)
            self.njob += 1
            args["job-id"] = "j%d" % self.njob
        if self.chance(0.1):
            keys = list(args)
            self.rng.shuffle(keys)
            args = {k: args[k] for k in keys}
        return [{"execute": "block-stream", "arguments": args}]

    def bad_stream_ops(self):
        fmts = self.fmt_nodes()
        dev = self.rng.choice(fmts) if fmts else "nonode"
        info = self.node_info(dev)
        if self.drains(self.chain_of(dev)) or (
                "failed-reopen-ro" in self.avoid and info and info["ro"]) \
                or ("error-while-limited" in self.avoid and
                    self.chain_of(dev) in self.error_chains) \
                or ("base-json-name" in self.avoid and
                    self.json_in_chain(dev)) \
                or ("extra-copies" in self.avoid and
                    self.chain_of(dev) in self.tainted):
            return []
        below = self.chain_below(dev)
        b = self.rng.choice(below) if below else dev
        self.njob += 1
        jid = "j%d" % self.njob
        base = {"device": dev, "job-id": jid}
        args = self.rng.choice([
            dict(base, device="nonode"),
            dict(base, base="x", **{"base-node": b}),
            dict(base, base="x", bottom=b),
            dict(base, bottom=b, **{"base-node": b}),
            dict(base, **{"base-node": "nonode"}),
            dict(base, bottom="nonode"),
            dict(base, base="/nonexistent.img"),
            dict(base, **{"base-node": dev}),
            dict(base, **{"base-node": self.any_node()}),
            dict(base, bottom=self.any_node(filters=
                                            "bottom-filter" not in self.avoid)),
            dict(base, **{"backing-file": "x"}),
            dict(base, **{"backing-file": "x", "bottom": b}),
            dict(base, speed=-1),
            dict(base, speed="fast"),
            dict(base, speed=1.5),
            dict(base, **{"on-error": "bogus"}),
            dict(base, **{"filter-node-name": dev}),
            dict(base, **{"filter-node-name": "#bad"}),
            dict(base, **{"filter-node-name": "f" * 32}),
            dict(base, **{"filter-node-name": ""}),
            dict(base, **{"job-id": "1j", "filter-node-name": dev}),
            dict(base, **{"auto-finalize": "yes"}),
            dict(base, **{"job-id": 7}),
            dict(base, device=None),
            {"job-id": jid},
            dict(base, bogus=True),
            dict(base, **{"job-id": "a" * 200, "speed": 1}),
        ])
        return [{"execute": "block-stream", "arguments": args}]

    # -- jobs --

    def some_job(self):
        live = self.live_jobs()
        return self.pick((10, self.rng.choice(live) if live else "nojob"),
                         (2, self.rng.choice(self.job_ids) if self.job_ids
                          else "nojob"), (1, "nojob"))

    def verb_ops(self):
        jid = self.some_job()
        cmd = self.pick(
            (4, "block-job-pause"), (4, "block-job-resume"),
            (4, "block-job-cancel"), (1, "block-job-complete"),
            (2, "block-job-finalize"), (2, "block-job-dismiss"),
            (3, "job-pause"), (3, "job-resume"), (3, "job-cancel"),
            (1, "job-complete"), (2, "job-finalize"), (2, "job-dismiss"))
        if cmd in ("block-job-finalize", "block-job-dismiss") or \
                cmd.startswith("job-"):
            args = {"id": jid}
        else:
            args = {"device": jid}
        if cmd == "block-job-cancel" and self.chance(0.5):
            args["force"] = self.chance(0.5)
        return [{"execute": cmd, "arguments": args}]

    def speed_ops(self):
        jid = self.some_job()
        speed = self.pick((3, 0), (3, 1), (1, 4096), (1, -1), (1, 2048))
        if "set-speed-wakes" in self.avoid and speed > 0 and any(
                j["device"] == jid and j["status"] == "running"
                for j in self.p.jobs):
            speed = self.rng.choice([0, -1])
        return [{"execute": "block-job-set-speed",
                 "arguments": {"device": jid, "speed": speed}}]

    def concluded(self):
        return any(j["status"] == "concluded" for j in self.p.jobs)

    def query_ops(self):
        if self.concluded():
            if self.job_lists_differ():
                return []
            return [self.rng.choice([{"execute": "query-block-jobs"},
                                     {"execute": "query-jobs"}])]
        if self.job_lists_differ():
            return [self.rng.choice([
                {"execute": "query-named-block-nodes"},
                {"execute": "query-named-block-nodes",
                 "arguments": {"flat": True}}])]
        return [self.rng.choice([
            {"execute": "query-block-jobs"},
            {"execute": "query-jobs"},
            {"execute": "query-named-block-nodes"},
            {"execute": "query-named-block-nodes",
             "arguments": {"flat": True}},
            {"execute": "query-named-block-nodes",
             "arguments": {"flat": False}},
        ])]

    def misc_ops(self):
        jid = self.some_job()
        op = self.rng.choice([
            {"execute": "qmp_capabilities"},
            {"execute": "nosuch-command"},
            {"execute": "query-version", "id": "v1"},
            {"execute": "block-job-set-speed",
             "arguments": {"device": jid, "speed": "fast"}},
            {"execute": "block-job-set-speed", "arguments": {"device": jid}},
            {"execute": "block-job-cancel",
             "arguments": {"device": jid, "force": "yes"}},
            {"execute": "block-job-pause", "arguments": {"device": 5}},
            {"execute": "block-job-pause", "arguments": {}},
            {"execute": "job-pause", "arguments": {"id": None}},
            {"execute": "job-cancel", "arguments": {"id": jid, "x": 1}},
            {"execute": "query-jobs", "arguments": {"x": 1}},
            {"execute": "query-block-jobs", "arguments": {}},
            {"execute": "query-named-block-nodes",
             "arguments": {"flat": "yes"}},
            {"execute": "blockdev-del", "arguments": {"node-name": 1}},
            {"execute": "blockdev-del"},
            {"execute": "block-job-dismiss", "arguments": {"device": jid}},
            {"execute": "job-dismiss", "arguments": {"id": jid},
             "id": {"n": 1}},
        ] + [{"execute": c, "arguments": a} for c, a in PROTOCOL_CASES])
        if op["execute"] == "query-block-jobs" and self.job_lists_differ():
            return []
        return [op]


# ---- running and comparing ---------------------------------------------------


def session_spec(seed, nops):
    rng = random.Random(seed)
    chains = gen_chains(rng)
    return chains, Gen(rng, chains, nops)


STATS = {}


def count(what, n=1):
    STATS[what] = STATS.get(what, 0) + n


def tally(ops, qsteps):
    """Coverage figures: commands (and how they ended), events."""
    for op, step in zip(ops, qsteps):
        reply = next((m for m in step if "event" not in m), {})
        count("%s -> %s" % (op["execute"], "error" if "error" in reply
                            else "ok"))
        for m in step:
            if "event" in m:
                d = m.get("data") or {}
                count("event %s%s" % (m["event"], " " + d["status"]
                                      if "status" in d else ""))


def play_pair(chains, ops_or_gen):
    """Plays on qsd (generating the ops when a Gen is given), then the
    same ops on blockjobd. Returns (ops, differences)."""
    root = tempfile.mkdtemp(prefix="sess-")
    try:
        ops, qsteps, qfacts = run_session(ops_or_gen, chains, root, "qsd")
        ops2, osteps, ofacts = run_session(ops, chains, root, "ours")
        compare_data(chains, os.path.join(root, "flat-qsd"),
                     os.path.join(root, "flat-ours"), ofacts)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    tally(ops, qsteps)
    if any(m.get("event") == "BLOCK_JOB_ERROR" for step in qsteps
           for m in step):
        # A job that failed may have copied more than qsd's (its next
        # chunks were in flight when the error came): allocation and the
        # data of a layer alone are not compared then, the data read
        # through the chain still is.
        for facts in (qfacts, ofacts):
            for f in facts.values():
                for k in ("map-alone", "map-chain", "data-alone"):
                    f.pop(k, None)
    diffs = []
    for i, (q, o) in enumerate(zip(qsteps, osteps)):
        if q != o and not (
                "wake-reply-order" in avoided() and ops[i]["execute"] in (
                    "block-job-resume", "job-resume", "block-job-set-speed")
                and reply_last(q) == reply_last(o)):
            diffs.append((i, ops[i], q, o))
    for name in qfacts:
        if qfacts[name] != ofacts[name]:
            keys = [k for k in qfacts[name]
                    if qfacts[name][k] != ofacts[name].get(k)]
            diffs.append(("image", name,
                          {k: qfacts[name][k] for k in keys},
                          {k: ofacts[name].get(k) for k in keys}))
    return ops, diffs


def reply_last(msgs):
    """A step's messages with its reply moved after the events."""
    return [m for m in msgs if "event" in m] + \
        [m for m in msgs if "event" not in m]


def jdiff(a, b, path="", out=None):
    """Where two JSON values differ: ["path: a | b", ...]."""
    out = [] if out is None else out
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b) and set(a) == set(b):
            out.append("%s: member order %s | %s" % (path, list(a), list(b)))
        for k in a:
            if k in b:
                jdiff(a[k], b[k], "%s.%s" % (path, k), out)
            else:
                out.append("%s.%s: %s | (absent)" % (path, k,
                                                     json.dumps(a[k])))
        for k in b:
            if k not in a:
                out.append("%s.%s: (absent) | %s" % (path, k,
                                                     json.dumps(b[k])))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            jdiff(x, y, "%s[%d]" % (path, i), out)
    elif a != b:
        out.append("%s: %s | %s" % (path, json.dumps(a)[:300],
                                    json.dumps(b)[:300]))
    return out


def show(diffs, limit=3):
    lines = []
    for d in diffs[:limit]:
        if d[0] == "error":
            lines.append("session failed: " + d[1])
        elif d[0] == "image":
            lines.append("image %s:\n  qsd:  %s\n  ours: %s" % (
                d[1], json.dumps(d[2]), json.dumps(d[3])))
        else:
            i, op, q, o = d
            where = jdiff(q, o)
            short = lambda ms: "\n        ".join(
                json.dumps(m) if len(json.dumps(m)) < 400 else
                json.dumps(m)[:400] + "..." for m in ms)
            lines.append("step %d %s\n  qsd:  %s\n  ours: %s\n  diff (qsd | ours): %s" % (
                i, json.dumps(op), short(q), short(o),
                "\n    ".join(where[:8])))
    if len(diffs) > limit:
        lines.append("... %d more differences" % (len(diffs) - limit))
    return "\n".join(lines)


def first_key(diffs, idx):
    """What identifies the first difference across reductions: the
    command (by its index in the unreduced session), the image, or how
    the session failed. idx: the unreduced index of each command."""
    d = diffs[0]
    if d[0] == "error":
        return ("error", d[1].split("\n")[0])
    if d[0] == "image":
        return ("image", d[1])
    return ("step", idx[d[0]])


def shrink(chains, ops, diffs):
    """Reduces a failing session to the commands its first difference
    needs: the commands after the differing one go, then blocks of
    commands (halves, quarters, ... single ones) are dropped as long as
    the first difference stays at the same command (or image, or
    failure)."""
    key = first_key(diffs, range(len(ops)))

    def cut(trial):
        if key[0] == "step" and key[1] in trial:
            return trial[:trial.index(key[1]) + 1]
        return None if key[0] == "step" else trial

    def fails(trial):
        try:
            _, d2 = play_pair(chains, [ops[i] for i in trial])
        except SessionError as e:
            d2 = [("error", str(e))]
        return d2 if d2 and first_key(d2, trial) == key else None

    keep = list(range(len(ops)))
    trial = cut(keep)
    if trial and len(trial) < len(keep):
        d2 = fails(trial)
        if d2:
            keep, diffs = trial, d2
    size = max(1, (len(keep) - 1) // 2)
    while True:
        i = len(keep)
        while i > 1:
            lo = max(1, i - size)
            trial = cut(keep[:lo] + keep[i:])
            d2 = fails(trial) if trial and len(trial) < len(keep) else None
            if d2:
                keep, diffs = trial, d2
                i = min(lo, len(keep))
            else:
                i = lo
        if size == 1:
            return [ops[i] for i in keep], diffs
        size = max(1, size // 2)


def parse_seeds(text):
    seeds = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            seeds += range(int(a), int(b) + 1)
        elif part.strip():
            seeds.append(int(part))
    return seeds


def run_seeds(seeds, nops):
    failed, skipped = [], []
    t0 = time.monotonic()
    for seed in seeds:
        chains, gen = session_spec(seed, nops)
        try:
            ops, diffs = play_pair(chains, gen)
        except SessionError as e:
            if e.kind == "qsd":
                # not comparable: the generator should not go there
                print("seed %d: qsd failed, skipped: %s" % (seed, e))
                skipped.append(seed)
                continue
            ops, diffs = e.ops, [("error", str(e))]
        print("seed %d: %d commands, %s (%.1fs)" % (
            seed, len(ops), "%d differences" % len(diffs) if diffs else
            "same", time.monotonic() - t0), flush=True)
        if not diffs:
            continue
        failed.append(seed)
        print(show(diffs))
        if os.environ.get("SESSIONS_SHRINK") == "1":
            ops, diffs = shrink(chains, ops, diffs)
            print("reduced to %d commands:" % len(ops))
            for op in ops:
                print("  " + json.dumps(op))
            print(show(diffs, 1))
        out = os.path.join(tempfile.gettempdir(),
                           "session-%d.json" % seed)
        with open(out, "w") as f:
            json.dump({"seed": seed, "chains": chains, "ops": ops}, f)
        print("replay: SESSIONS_REPLAY=%s" % out, flush=True)
        if os.environ.get("SESSIONS_KEEP_GOING") != "1":
            break
    print("%d sessions, %d differ, %d not comparable (qsd failed)" % (
        len(seeds), len(failed), len(skipped)))
    if os.environ.get("SESSIONS_STATS") == "1":
        for k in sorted(STATS):
            print("  %6d  %s" % (STATS[k], k))
    return failed


def test_sessions():
    require("qemu-storage-daemon", "qemu-img", "qemu-io")
    replay = os.environ.get("SESSIONS_REPLAY")
    if replay:
        with open(replay) as f:
            s = json.load(f)
        ops, diffs = play_pair(s["chains"], s["ops"])
        if diffs and os.environ.get("SESSIONS_SHRINK") == "1":
            ops, diffs = shrink(s["chains"], ops, diffs)
            for op in ops:
                print("  " + json.dumps(op))
        assert not diffs, show(diffs)
        return
    seeds = parse_seeds(os.environ.get("SESSIONS_SEEDS", "")) or CHECK_SEEDS
    nops = int(os.environ.get("SESSIONS_OPS", DEFAULT_OPS))
    failed = run_seeds(seeds, nops)
    assert not failed, "sessions differ for seeds %s" % failed


if __name__ == "__main__":
    Runner(globals()).run()
