"""Guard-link flows and relay sessions in the layout DeepCoFFEA and ESPRESSO read.

Both read two folders, ``inflow/`` and ``outflow/``, of per-flow text files,
one packet a line as ``timestamp<TAB>signed size``, where the two files of a
matching pair have the same name. Here a pair is one relay session of an
observed client:

- ``inflow/NAME``: the client's guard-link flow (``guardlink``), cut to the
  session's time span with ``margin`` seconds either side (the guard flow
  carries all of the client's sessions; the cut is what it carried while
  this one was open);
- ``outflow/NAME``: the session as the relay saw it (``flowcorr.relay_sessions``),
  one 16 KB block a line.

``NAME`` is ``OWNER_SESSION``. Timestamps are seconds from the session's
first event, the same origin in both files, so the latency stays visible.
Sizes are signed the same way on both sides: + towards the relay (what the
client sent), - back. Sessions with no known owner, or whose owner's flow is
not given, are left out: they have no true pair.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onionpost.lab.flowcorr import Series

_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def write_flow_file(path: Path, t, size, origin: float) -> None:
    """One flow in the published layout: ``seconds since origin<TAB>signed size`` a line.

    The one writer of ``inflow/``/``outflow/`` files (``export_pairs`` here, ``lab export`` in ``export``).
    """
    t, size = np.asarray(t, dtype=float), np.asarray(size, dtype=np.int64)
    path.write_text("".join(f"{x - origin:.6f}\t{int(s)}\n" for x, s in zip(t.tolist(), size.tolist())),
                    encoding="ascii")


def export_pairs(flows: Sequence[Series], sessions: Sequence[Series], out: str | os.PathLike[str], *,
                 margin: float = 1.0) -> list[str]:
    """Write ``out/inflow/NAME`` and ``out/outflow/NAME`` per pair; returns the names.

    Raises ValueError if ``out`` already holds an ``inflow`` or ``outflow``
    folder (an export never mixes with an older one) or two flows share an owner.
    """
    out = Path(out)
    inflow, outflow = out / "inflow", out / "outflow"
    if inflow.exists() or outflow.exists():
        raise ValueError(f"{out} already holds an export (inflow/ or outflow/)")
    by_owner: dict[str, Series] = {}
    for flow in flows:
        if flow.owner is None:
            continue
        if flow.owner in by_owner:
            raise ValueError(f"two flows of {flow.owner!r}")
        by_owner[flow.owner] = flow
    inflow.mkdir(parents=True)
    outflow.mkdir()
    names = []
    for session in sessions:
        flow = by_owner.get(session.owner) if session.owner is not None else None
        if flow is None or len(session.t) == 0:
            continue
        first, last = float(session.t.min()), float(session.t.max())
        keep = (flow.t >= first - margin) & (flow.t <= last + margin)
        name = _NAME.sub("-", f"{session.owner}_{session.name}")
        write_flow_file(inflow / name, flow.t[keep], flow.size[keep], first)
        write_flow_file(outflow / name, session.t, session.size, first)
        names.append(name)
    return names


def read_pair_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, signed sizes) of one exported file."""
    t, size = [], []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path} line {n}: 'timestamp<TAB>size' expected")
        t.append(float(parts[0]))
        size.append(int(parts[1]))
    return np.asarray(t), np.asarray(size, dtype=np.int64)
