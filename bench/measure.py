"""Measurement helpers shared by the benchmarks: CPU time of a process from /proc, percentiles."""

from __future__ import annotations

import os
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            kids.extend(int(k) for k in text)
    except OSError:
        pass
    return kids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process and its live descendants have used so far (utime + stime of
    /proc/<pid>/stat, summed over the process tree: a launcher's real server runs as its child)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK
        todo.extend(_children(p))
    return total


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]
