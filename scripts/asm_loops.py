#!/usr/bin/env python3
"""The FMA share of the innermost loops of a model's assembly
(`resnetc build --emit asm`; AArch64 or x86-64 AT&T syntax), as read off
the machine code: for each loop (a label and the last branch back to it,
with no loop inside), its instructions, its FMAs (`fmla`, `vfmadd*`) and
their share, loops with the most FMAs first.

    scripts/asm_loops.py model.s [TOP]
"""
import re
import sys

FMA = re.compile(r"^\s*(fmla|vfmadd\w*|vfnmadd\w*)\b")
LABEL = re.compile(r"^(\.?L\w+):")
FUNC = re.compile(r"^([A-Za-z_]\w*):")
BRANCH = re.compile(r"^\s*(b(\.\w+)?|cbn?z|tbn?z|j\w+)\s+(?:.*,\s*)?(\.?L\w+)\s*$")


def loops(lines):
    func, labels, found = "?", {}, []
    for i, line in enumerate(lines):
        if m := FUNC.match(line):
            func, labels = m.group(1), {}
        elif m := LABEL.match(line):
            labels[m.group(1)] = i
        elif (m := BRANCH.match(line)) and m.group(3) in labels:
            start = labels[m.group(3)]
            body = [l for l in lines[start + 1 : i + 1] if l.startswith("\t") and not l.lstrip().startswith((".", "//", "#"))]
            found.append((func, m.group(3), start, i, body))
    # Innermost: no other loop strictly inside.
    inner = [l for l in found if not any(o is not l and l[2] <= o[2] and o[3] <= l[3] and (o[2], o[3]) != (l[2], l[3]) for o in found)]
    return inner


def main():
    lines = open(sys.argv[1]).read().splitlines()
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    rows = []
    for func, label, _, _, body in loops(lines):
        fma = sum(1 for l in body if FMA.match(l))
        if fma:
            rows.append((fma, len(body), func, label))
    rows.sort(reverse=True)
    print(f"{'function':<32} {'loop':<12} {'insns':>6} {'FMAs':>5} {'share':>6}")
    for fma, n, func, label in rows[:top]:
        print(f"{func:<32} {label:<12} {n:>6} {fma:>5} {100 * fma / n:>5.1f}%")


if __name__ == "__main__":
    main()
