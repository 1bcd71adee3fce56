"""`clbench report`: aggregation over seeds (hand-computed), tables, and figures that are really drawn."""
import csv
import io

import matplotlib.image as mpimg
import pytest

from clbench import cli
from clbench.engine import run
from clbench.report import aggregate, find_results, load_results, render_table


def _fake(strategy, seed, acc, forgetting, buffer_size=200):
    cfg = {"benchmark": {"name": "b"}, "strategy": {"name": strategy, "buffer_size": buffer_size},
           "seed": seed, "stream_seed": seed, "train": {"lr": 0.1}, "out": f"o{seed}", "wandb": {"mode": "x"}}
    return {"config": cfg, "seed": seed, "run_id": f"{strategy}{seed}", "config_hash": "h",
            "accuracy_matrix": [[acc]], "initial_accuracy": [0.0],
            "metrics": {"acc": acc, "forgetting": forgetting, "bwt": None}}


def test_aggregate_mean_std_n_over_seeds_and_labels():
    rows = aggregate([_fake("replay", 0, 0.8, 0.1), _fake("replay", 1, 0.6, 0.3), _fake("replay", 2, 0.7, 0.2),
                      _fake("naive", 0, 0.2, 0.9),
                      _fake("replay", 0, 0.9, 0.05, buffer_size=500)])
    assert [r["label"] for r in rows] == ["replay (buffer_size=500)", "replay (buffer_size=200)", "naive"]
    r = rows[1]
    assert r["n"] == 3 and r["seeds"] == [0, 1, 2]
    assert r["metrics"]["acc"]["mean"] == pytest.approx(0.7)
    assert r["metrics"]["acc"]["std"] == pytest.approx(0.1)          # sample std (ddof=1)
    assert r["metrics"]["forgetting"]["std"] == pytest.approx(0.1)
    assert r["metrics"]["bwt"] == {"mean": None, "std": None, "n": 0}
    assert rows[0]["n"] == 1 and rows[0]["metrics"]["acc"]["std"] is None
    text = render_table(rows)
    assert "70.00 ± 10.00" in text and "forgetting (-)" in text and "acc (+)" in text
    md = render_table(rows, fmt="markdown")
    assert md.startswith("| benchmark | strategy | n |") and "| b | naive | 1 | 20.00 |" in md
    table = list(csv.DictReader(io.StringIO(render_table(rows, fmt="csv"))))
    assert float(table[1]["acc_mean"]) == pytest.approx(0.7) and float(table[1]["acc_std"]) == pytest.approx(0.1)
    assert table[1]["seeds"] == "0 1 2" and table[0]["acc_std"] == ""
    with pytest.raises(ValueError, match="format"):
        render_table(rows, fmt="latex")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("report_runs")
    for strategy in ("naive", "replay"):
        for seed in (0, 1):
            run([f"out={out}", f"strategy={strategy}", f"seed={seed}", "train.epochs=1", "progress=false",
                 "wandb.mode=disabled", "device=cpu", "eval.every_steps=25"], console=False)
    (out / ".crashed_run.partial").mkdir()            # an unfinished run: must be ignored
    (out / ".crashed_run.partial" / "result.json").write_text("{")
    return out


def _is_real_png(path, min_bytes=10_000):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_bytes
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.05          # not a blank canvas


def test_report_command_prints_table_and_writes_figures(runs, capsys):
    found = find_results(runs)
    assert len(found) == 4
    # several paths at once (submit takes run and sweep folders): sorted, each result once
    assert find_results([found[2].parent, runs, str(found[0])]) == found
    assert cli.main(["report", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "4 run(s) in 2 configuration(s)" in out
    assert "±" in out and "naive" in out and "replay" in out
    rep = runs / "report"
    for name in ("report.csv", "report.md"):
        assert (rep / name).stat().st_size > 100
    rows = list(csv.DictReader(open(rep / "report.csv")))
    assert {r["strategy"] for r in rows} == {"naive", "replay"} and all(r["n"] == "2" for r in rows)
    results = load_results(runs)
    mean_acc = sum(r["metrics"]["acc"] for r in results if r["config"]["strategy"]["name"] == "naive") / 2
    assert float(next(r for r in rows if r["strategy"] == "naive")["acc_mean"]) == pytest.approx(mean_acc)
    pngs = sorted(p.name for p in rep.glob("*.png"))
    for strategy in ("naive", "replay"):
        for kind in ("heatmap", "tasks", "anytime"):
            assert any(n.startswith(f"{kind}_split-digits_{strategy}_") for n in pngs), (kind, strategy, pngs)
    assert "compare_split-digits.png" in pngs and "curves_split-digits.png" in pngs
    assert len(pngs) == 8
    for p in rep.glob("*.png"):
        _is_real_png(p)


def test_report_on_a_single_run_folder(runs, tmp_path, capsys):
    one = sorted(p.parent for p in find_results(runs))[0]
    assert cli.main(["report", str(one), "--out", str(tmp_path / "rep"), "--metrics", "acc,forgetting"]) == 0
    out = capsys.readouterr().out
    assert "1 run(s) in 1 configuration(s)" in out and "forgetting (-)" in out and "bwt" not in out
    names = sorted(p.name.split("_")[0] for p in (tmp_path / "rep").glob("*.png"))
    assert names == ["anytime", "heatmap", "tasks"]          # no comparison chart for one configuration


def test_report_errors_are_clear(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no result.json found" in capsys.readouterr().err


def test_repeats_of_one_seed_count_once():
    """Three runs of seed 7 are one sample (n = 1, no std), and the table says repeats exist."""
    rows = aggregate([_fake("replay", 7, 0.8, 0.1), _fake("replay", 7, 0.8, 0.1), _fake("replay", 7, 0.8, 0.1)])
    (r,) = rows
    assert r["n"] == 1 and r["seeds"] == [7] and r["runs"] == 3
    assert r["metrics"]["acc"] == {"mean": pytest.approx(0.8), "std": None, "n": 1}
    assert "repeat" in render_table(rows) and "repeat" in render_table(rows, fmt="markdown")
    assert list(csv.DictReader(io.StringIO(render_table(rows, fmt="csv"))))[0]["runs"] == "3"
    # repeats that disagree (non-deterministic hardware) are averaged per seed before the spread over seeds
    rows = aggregate([_fake("replay", 0, 0.8, 0.1), _fake("replay", 0, 0.6, 0.1), _fake("replay", 1, 0.5, 0.1)])
    (r,) = rows
    assert r["n"] == 2 and r["seeds"] == [0, 1] and r["runs"] == 3
    assert r["metrics"]["acc"]["mean"] == pytest.approx(0.6)
    assert r["metrics"]["acc"]["std"] == pytest.approx(0.1 * 2 ** 0.5)
    assert "repeat" not in render_table(aggregate([_fake("naive", 0, 0.2, 0.9), _fake("naive", 1, 0.3, 0.9)]))


def test_class_il_fwt_is_shown_with_why_it_carries_no_information():
    """Class-IL FWT is minus the initial row for every method; the table keeps the column but says so for
    class-IL rows, and says nothing for task-IL rows or when FWT is not shown."""
    def with_fwt(setting, seed):
        r = _fake("naive", seed, 0.2, 0.9)
        r["metrics"]["fwt"], r["stream"] = -0.1, {"setting": setting}
        return r
    class_il = aggregate([with_fwt("class-il", 0), with_fwt("class-il", 1)])
    assert class_il[0]["setting"] == "class-il"
    for fmt in ("text", "markdown"):
        assert "fwt on class-il rows carries no information" in render_table(class_il, fmt=fmt)
        assert "no information" not in render_table(aggregate([with_fwt("task-il", 0)]), fmt=fmt)
        assert "no information" not in render_table(class_il, fmt=fmt, metrics=["acc"])


def test_unknown_metric_is_refused_with_a_suggestion(runs, tmp_path):
    from clbench.errors import UnknownNameError
    from clbench.report import report
    with pytest.raises(UnknownNameError, match="(?i)did you mean 'forgetting'"):
        report(runs, out_dir=tmp_path / "rep", figures=False, metrics=["forgeting"])
    assert not (tmp_path / "rep").exists()     # refused before anything is written


def test_reading_commands_start_without_torch():
    """`clbench report`, `show` and the leaderboard commands only read files: their modules must not import torch
    (about 2 s at every start). Earlier a module-level import in clbench/schedules.py pulled it in via config."""
    import subprocess
    import sys
    code = ("import sys, clbench.config, clbench.report, clbench.show, clbench.leaderboard.validate, clbench.sweep; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
