#!/usr/bin/env python3
"""query-qmp-schema: every command and event blockjobd offers exists in
qemu-storage-daemon 7.2 with the same arguments, types, optionality, enum
values and return type (type names are masked differently, so the types are
compared structurally)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from qmp import QSD, Daemon, Runner, require  # noqa: E402

require("qemu-storage-daemon")



def shape(schema, name, seen=()):
    """A comparable structure for type `name`."""
    if name in seen:
        return ("recursive",)
    t = schema[name]
    seen = seen + (name,)
    mt = t["meta-type"]
    if mt == "builtin":
        return ("builtin", t["json-type"])
    if mt == "enum":
        return ("enum", tuple(sorted(t["values"])))
    if mt == "array":
        return ("array", shape(schema, t["element-type"], seen))
    if mt == "alternate":
        return ("alternate", tuple(sorted(
            (shape(schema, m["type"], seen) for m in t["members"]),
            key=repr)))
    if mt == "object":
        members = tuple(sorted(
            (m["name"], "default" in m, shape(schema, m["type"], seen))
            for m in t["members"]))
        variants = tuple(sorted(
            (v["case"], shape(schema, v["type"], seen))
            for v in t.get("variants", [])))
        return ("object", t.get("tag"), members, variants)
    raise AssertionError("unknown meta-type %r" % mt)


def diff(a, b, path="", out=None, notes=None):
    """Where shape `a` (ours) is not a faithful subset of `b` (qsd's): a
    member, variant or enum value qsd lacks, a different type or
    optionality, or a mandatory member we lack. Optional members and
    variants we do not offer go to `notes`."""
    out = [] if out is None else out
    notes = [] if notes is None else notes
    if a == b:
        return out
    kind = a[0] if a[0] == b[0] else None
    if kind == "object":
        am = {m[0]: m for m in a[2]}
        bm = {m[0]: m for m in b[2]}
        for k in sorted(set(am) | set(bm)):
            if k not in am:
                (notes if bm[k][1] else out).append(
                    "%s.%s: missing in blockjobd" % (path, k))
            elif k not in bm and k.startswith("x-") and am[k][1]:
                # blockjobd's own optional extensions, x- as QEMU names
                # experimental arguments (block-stream's tuning knobs).
                notes.append("%s.%s: blockjobd extension" % (path, k))
            elif k not in bm:
                out.append("%s.%s: not in qsd" % (path, k))
            elif am[k] != bm[k]:
                if am[k][1] != bm[k][1]:
                    out.append("%s.%s: optional %s vs %s" % (
                        path, k, am[k][1], bm[k][1]))
                diff(am[k][2], bm[k][2], path + "." + k, out, notes)
        av, bv = dict(a[3]), dict(b[3])
        for k in sorted(set(av) | set(bv)):
            if k not in av:
                notes.append("%s<%s>: variant missing in blockjobd" % (
                    path, k))
            elif k not in bv:
                out.append("%s<%s>: variant not in qsd" % (path, k))
            else:
                diff(av[k], bv[k], "%s<%s>" % (path, k), out, notes)
        if a[1] != b[1]:
            out.append("%s: tag %r vs %r" % (path, a[1], b[1]))
        return out
    if kind == "enum":
        extra = set(a[1]) - set(b[1])
        if extra:
            out.append("%s: values not in qsd: %s" % (path, sorted(extra)))
        if set(b[1]) - set(a[1]):
            notes.append("%s: values not offered: %s" % (
                path, sorted(set(b[1]) - set(a[1]))))
        return out
    if kind == "array":
        return diff(a[1], b[1], path + "[]", out, notes)
    if kind == "alternate" and len(a[1]) == len(b[1]):
        for x, y in zip(a[1], b[1]):
            diff(x, y, path + "|", out, notes)
        return out
    out.append("%s: %s\n      vs %s" % (path, repr(a)[:300], repr(b)[:300]))
    return out


def test_commands_and_events_match_qsd():
    with QSD() as q:
        ref = {x["name"]: x for x in q.connect().ok("query-qmp-schema")}
    with Daemon() as d:
        ours = {x["name"]: x for x in d.connect().ok("query-qmp-schema")}
    problems, notes = [], []
    for name, ent in sorted(ours.items()):
        if ent["meta-type"] not in ("command", "event"):
            continue
        if name == "SHUTDOWN":
            # qsd 7.2 does not declare it; blockjobd tells its clients it is
            # going away, with the event QEMU's system emulator uses.
            continue
        if name not in ref:
            problems.append("%s: not offered by qsd 7.2" % name)
            continue
        keys = ["arg-type"] + (["ret-type"] if ent["meta-type"] == "command"
                               else [])
        for key in keys:
            a = shape(ours, ent[key])
            b = shape(ref, ref[name][key])
            diff(a, b, "%s %s" % (name, key), problems, notes)
    print("not offered (optional in qsd): %d members/variants/values" %
          len(notes))
    for n in notes:
        if "variant missing" not in n:
            print("  note: " + n[:200])
    for p in problems:
        print("DIFF " + p)
    assert not problems, "%d differences" % len(problems)


if __name__ == "__main__":
    Runner(globals()).run()
