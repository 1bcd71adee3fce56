"""Memory-aligned comparison (Zhou, Wang, Ye, Zhan, ICLR 2023, "A Model or 603 Exemplars"): every method is
charged for everything it keeps, in bytes, so that methods that store exemplars, models, prototypes or bases can
be compared at equal total memory.

A run's `result.json` holds `memory` (written by `Strategy.memory_footprint`, docs/memory.md):
model_bytes (the network that is trained and evaluated), exemplar_bytes (kept inputs in their stored dtype:
uint8 images), extra_model_bytes (old models, EMA copies, teachers), other_state_bytes (labels and logits of
kept samples, prototypes, bases, importance weights), kept_bytes (the last three) and total_bytes (all four).

Here: per aggregated configuration (clbench.report.aggregate's groups), mean ± std of those numbers, the total
in MiB (the paper's "MB" is 2^20 bytes: ResNet-32 + 2000 CIFAR images = 23.5 MB) and in exemplar equivalents
(total bytes / bytes of one input: 603 CIFAR images per ResNet-32), and the table sorted by total memory.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from clbench.escape import markdown_cell
from clbench.metrics import mean_std, pm   # the one mean/std/n over seeds and its text

MIB = 2 ** 20
FIELDS = ("model_bytes", "exemplar_bytes", "extra_model_bytes", "other_state_bytes", "kept_bytes", "total_bytes")
DTYPE_BYTES = {"uint8": 1, "int8": 1, "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int64": 8}


def input_bytes(result: dict) -> Optional[int]:
    """Bytes of one input of the run's dataset in its stored dtype (784 for MNIST, 3072 for CIFAR)."""
    ds = (result.get("stream") or {}).get("dataset") or {}
    shape, dtype = ds.get("input_shape"), ds.get("dtype")
    if not isinstance(shape, list) or not all(type(d) is int and d > 0 for d in shape) or dtype not in DTYPE_BYTES:
        return None
    return math.prod(shape) * DTYPE_BYTES[dtype]


def summarize(results: Sequence[dict]) -> dict:
    """Mean/std of every memory field over the runs of one configuration, plus MiB and exemplar equivalents."""
    def numbers(field):                     # records may come from elsewhere (submissions): numbers only
        vals = [(r.get("memory") or {}).get(field) for r in results]
        return [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {f: mean_std(numbers(f)) for f in FIELDS}
    total = out["total_bytes"]["mean"]
    per_input = input_bytes(results[0]) if results else None
    out["total_mib"] = total / MIB if total is not None else None
    out["input_bytes"] = per_input
    out["total_exemplar_equivalents"] = total / per_input if total is not None and per_input else None
    return out


def equal_memory_table(rows: Sequence[dict], metric: str = "acc") -> str:
    """Markdown: one line per configuration (report rows carrying `memory`), sorted by benchmark then total memory."""
    head = ["benchmark", "configuration", "n", "total MiB", "exemplar-equivalents", "model", "exemplars",
            "extra models", "other kept", f"{metric} (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    kib = lambda s: "-" if s.get("mean") is None else f"{s['mean'] / 1024:.1f} KiB"  # noqa: E731
    ordered = sorted((r for r in rows if r.get("memory")),
                     key=lambda r: (r["benchmark"], r["memory"]["total_bytes"]["mean"] or 0))
    for r in ordered:
        m, acc = r["memory"], r["metrics"].get(metric, {})
        acc_txt = pm(acc)
        eq = m["total_exemplar_equivalents"]
        lines.append("| " + " | ".join([
            markdown_cell(r["benchmark"]), markdown_cell(r["label"]), str(r["n"]),
            "-" if m["total_mib"] is None else f"{m['total_mib']:.3f}",
            "-" if eq is None else f"{eq:.0f}",
            kib(m["model_bytes"]), kib(m["exemplar_bytes"]), kib(m["extra_model_bytes"]),
            kib(m["other_state_bytes"]), acc_txt]) + " |")
    lines += ["", "Total memory = trained model + kept exemplars (inputs in their stored dtype) + kept models + other "
                  "kept state (docs/memory.md). Exemplar-equivalents: total bytes / bytes of one input. Compare "
                  "methods at (nearly) equal total memory, not at equal buffer size."]
    return "\n".join(lines) + "\n"
