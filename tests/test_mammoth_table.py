"""benchmarks/mammoth_table.py: cells matched by strategy, variant keys, benchmark and buffer; gaps, counts, notes and
reduced protocols computed from the groups `clbench.report.aggregate` returns."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mammoth_table", ROOT / "benchmarks" / "mammoth_table.py")
mt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mt)


def group(strategy, bench, acc, task=None, buffer=None, n=3, extra=None, overrides=()):
    cfg = {"benchmark": {"name": bench}, "strategy": {"name": strategy, **({"buffer_size": buffer} if buffer else {}),
                                                        **(extra or {})}}
    metrics = {"acc": {"mean": acc / 100, "std": 0.01, "n": n}}
    if task is not None:
        metrics["acc_task_masked"] = {"mean": task / 100, "std": 0.002, "n": n}
    return {"row": {"benchmark": bench, "label": strategy, "n": n, "metrics": metrics},
            "result": {"config": cfg, "config_source": {"overrides": [f"benchmark={bench}", f"strategy={strategy}",
                                                                      "seed=0", *overrides]}},
            "folder": f"sweeps/mammoth/{strategy}", "seconds": 60.0 * n}


PUBLISHED = {
    "methods": {
        "iCaRL": {"strategy": "icarl", "match": {"strategy.replay": False}, "source": "mammoth",
                  "cells": {"seq-mnist/acc": {200: 70.51}, "seq-mnist/acc_task_masked": {200: 98.28}}},
        "ER": {"strategy": "replay", "source": "mammoth",
               "cells": {"perm-mnist/acc": {200: 72.37, 500: 80.60}}},
        "SGD": {"strategy": "naive", "source": "mammoth", "cells": {"seq-mnist/acc": {"-": 19.60}}},
    },
    "notes": {"ER": {"perm-mnist/acc@500": "explained here"}},
}


def test_cells_gaps_counts_notes_and_reduced_protocols():
    groups = [
        group("icarl", "seq-mnist", 71.0, 98.0, buffer=200, extra={"replay": False}),
        group("icarl", "seq-mnist", 90.0, 99.0, buffer=200, extra={"replay": True}),     # another variant: no match
        group("replay", "perm-mnist", 75.0, buffer=200, overrides=["scenario.train_samples_per_task=1000"]),
        group("replay", "perm-mnist", 84.0, buffer=500),
        group("naive", "seq-mnist", 19.0),
    ]
    cells, warnings = mt.build(PUBLISHED, groups)
    by = {(c["method"], c["column"], str(c["buffer"])): c for c in cells}
    icarl = by[("iCaRL", "seq-mnist/acc", "200")]
    assert icarl["clbench"]["mean"] == pytest.approx(71.0) and icarl["gap"] == pytest.approx(0.49)
    assert by[("iCaRL", "seq-mnist/acc_task_masked", "200")]["gap"] == pytest.approx(-0.28)
    er200, er500 = by[("ER", "perm-mnist/acc", "200")], by[("ER", "perm-mnist/acc", "500")]
    assert er200["changes"] == ["scenario.train_samples_per_task=1000"] and er200["gap"] == pytest.approx(2.63)
    assert er500["note"] == "explained here"
    assert by[("SGD", "seq-mnist/acc", "-")]["gap"] == pytest.approx(-0.6)
    assert any("match no entry" in w for w in warnings)          # the replay=true iCaRL runs are reported, not lost
    stats = mt.summary(cells)
    assert (stats["cells_compared"], stats["within_1"], stats["within_2"]) == (5, 3, 3)
    md = mt.markdown(cells, stats, PUBLISHED, "python benchmarks/mammoth_table.py")
    assert "**unexplained (open question)**" in md                # ER 200: 2.63 points off, no note
    assert "reduced/changed protocol: `scenario.train_samples_per_task=1000`" in md
    assert "| ER | P-MNIST Domain-IL | 500 | 84.00 ± 1.00 (3) | 80.60 | +3.40 | explained here |" in md


def test_every_published_value_is_a_number_or_null_and_every_column_is_known():
    data = yaml.safe_load((ROOT / "benchmarks" / "mammoth_published.yaml").read_text())
    assert set(data["sources"]) >= {e["source"] for e in data["methods"].values() if e["source"] != "none"}
    for method, entry in data["methods"].items():
        for column, values in (entry.get("cells") or {}).items():
            bench, metric = column.split("/")
            assert (ROOT / "configs" / "benchmark" / f"{bench}.yaml").is_file(), (method, column)
            assert metric in ("acc", "acc_task_masked")
            assert all(v is None or 0 < float(v) <= 100 for v in values.values()), (method, column)
    # spot checks against the DER paper's Table 2 (Mammoth README at its first commit)
    m = data["methods"]
    assert m["DER++"]["cells"]["perm-mnist/acc"][500] == 88.21 and m["iCaRL"]["cells"]["seq-mnist/acc"][200] == 70.51


def test_runs_a_sweep_superseded_are_left_out(tmp_path):
    out = tmp_path / "sweeps" / "icarl"
    results = [{"_path": str(out / "seq-mnist_icarl_s0_1")},
               {"_path": str(out / "superseded" / "seq-mnist_icarl_s0_1.aaaaaaaa-bbbbbbbb")}]
    assert mt.current(results, out) == results[:1]


def test_the_sweep_commands_behind_the_table_name_the_benchmarks_run_and_the_variant_keys(tmp_path):
    (tmp_path / "sweep.json").write_text('{"sweep": "mammoth-replay"}')
    common = ["eval.batch_size=10000", "wandb.mode=disabled", "progress=false", "strategy=replay", "seed=0",
              f"out={tmp_path}"]
    groups = [group("replay", "seq-mnist", 80.0, buffer=200, overrides=["strategy.buffer_size=200"]),
              group("replay", "rot-mnist", 85.0, buffer=200, overrides=["strategy.buffer_size=200"]),
              group("replay", "seq-mnist", 81.0, buffer=200, overrides=["strategy.buffer_size=200",
                                                                       "strategy.mem_batch_size=5"])]
    for g in groups:
        g["folder"] = str(tmp_path)
        g["result"]["config_source"]["overrides"] += common
    out = f"out={tmp_path.resolve()}"                              # not the sweep file's out: named
    assert mt.commands(groups) == [
        f"clbench sweep sweep=mammoth-replay benchmark=rot-mnist,seq-mnist {out}",
        f"clbench sweep sweep=mammoth-replay benchmark=seq-mnist strategy.mem_batch_size=5 {out}"]
