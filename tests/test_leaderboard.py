"""Leaderboard: build, validate (tampering is rejected with its own reason), verify by re-running,
render; and every committed submission validates (the CI check). Attacks: test_leaderboard_attacks.py."""
import copy
import json
from pathlib import Path

import pytest

from clbench.cli import main
from clbench.config import compose, config_hash
from clbench.engine import run
from clbench.leaderboard import (build_submission, save_submission, seed_free_hash, submission_digest,
                                 validate_file, validate_submission)
from clbench.leaderboard.render import build, render
from clbench.leaderboard.submission import result_digest, seed_metrics, summarize
from clbench.leaderboard.verify import load_records, verification_status, verify_submission
from clbench.results import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
FAST = ["benchmark=split-digits", "train.epochs=1", "wandb.mode=disabled", "progress=false"]


def make_runs(out, strategy="naive", seeds=(0, 1, 2), extra=()):
    dirs = []
    for s in seeds:
        _, path = run(compose([*FAST, f"strategy={strategy}", f"seed={s}", f"out={out}", *extra]), console=False)
        dirs.append(path)
    return dirs


@pytest.fixture(scope="module")
def naive(tmp_path_factory, naive_digits_runs):
    """A genuine submission: naive on split-digits (1 epoch), seeds 0, 1, 2."""
    root = tmp_path_factory.mktemp("lb")
    dirs = naive_digits_runs
    sub = build_submission([dirs[0].parent])
    path = save_submission(sub, root / "submissions")
    return {"root": root, "dirs": dirs, "sub": sub, "path": path}


def codes(sub):
    return {i.code for i in validate_submission(sub)}


def test_valid_submission_passes(naive):
    sub = naive["sub"]
    assert validate_file(naive["path"]) == []
    assert sub["seeds"] == [0, 1, 2] and len(sub["runs"]) == 3
    # the seed-free config hash: the runs' own hashes differ (they include the seeds), this one is shared
    run_hashes = {json.loads((d / "result.json").read_text())["config_hash"] for d in naive["dirs"]}
    assert len(run_hashes) == 3
    assert sub["config_hash"] == config_hash(sub["config"]) == seed_free_hash(
        json.loads((naive["dirs"][0] / "result.json").read_text())["config"])
    assert "seed" not in sub["config"] and "stream_seed" not in sub["config"]
    # the method record names the plugin package and the code the runs recorded (not the installed code):
    # every module they loaded, the strategy's and clbench's core (engine, evaluator, data) alike
    m = sub["method"]
    assert m["package"] == "clbench" and m["strategy"] == "naive"
    assert {"clbench.strategies.naive", "clbench.strategy", "clbench.engine", "clbench.evaluator"} <= set(m["sources"])
    recorded = json.loads((naive["dirs"][0] / "result.json").read_text())["provenance"]
    assert m["sources"] == recorded["modules"] and m["source_hash"] == recorded["code_hash"]
    assert all(r["provenance"]["code_hash"] == m["source_hash"] for r in sub["runs"])
    # each seed carries its full R, initial row and learned_at; the summary is mean/std/n over the seeds
    r0 = sub["runs"][0]
    assert len(r0["accuracy_matrix"]) == 5 and all(len(row) == 5 for row in r0["accuracy_matrix"])
    assert r0["learned_at"] == [0, 1, 2, 3, 4] and len(r0["initial_accuracy"]) == 5
    accs = [r["metrics"]["acc"] for r in sub["runs"]]
    assert sub["summary"]["acc"]["n"] == 3
    assert sub["summary"]["acc"]["mean"] == pytest.approx(sum(accs) / 3, abs=1e-12)
    assert main(["leaderboard", "validate", str(naive["path"])]) == 0


def _tamper(sub, kind):
    s = copy.deepcopy(sub)
    if kind == "metric":
        s["runs"][1]["metrics"]["acc"] += 0.01
    elif kind == "R":
        s["runs"][1]["accuracy_matrix"][-1][0] = 0.5
    elif kind == "missing_seed":
        del s["runs"][2]
    elif kind == "config_hash":
        s["config_hash"] = "0" * 64
    elif kind == "config":
        s["config"]["train"]["lr"] = 0.5            # claims another config than the one that ran
    elif kind == "range":
        s["runs"][0]["accuracy_matrix"][0][0] = 1.5
    elif kind == "shape":
        s["runs"][0]["accuracy_matrix"][2].pop()
    elif kind == "summary":
        s["summary"]["acc"]["mean"] += 0.01
    elif kind == "duplicate":
        s["runs"][2] = copy.deepcopy(s["runs"][1])
        s["seeds"] = [0, 1, 1]
    elif kind == "version":
        s["benchmark"]["version"] = 2
    elif kind == "protocol":
        s["config"]["scenario"]["class_order"] = [1, 0, 2, 3, 4, 5, 6, 7, 8, 9]   # another stream
    return s


@pytest.mark.parametrize("kind, code, text", [
    ("metric", "metric", "metric acc is"),
    ("R", "result_digest", "R was changed after the run"),
    ("missing_seed", "missing_seed", "seed 2 is declared in 'seeds' but has no run record"),
    ("config_hash", "config_hash", "does not match the embedded config"),
    ("config", "config_hash", "does not match the embedded config"),
    ("range", "schema", "runs[0].accuracy_matrix[0][0]: 1.5 is greater than the maximum of 1"),
    ("shape", "shape", "the track's protocol gives 5 x 5"),
    ("summary", "summary", "summary 'acc' claims"),
    ("duplicate", "duplicate_seeds", "seeds must be distinct"),
    ("version", "benchmark", "is not the shipped version 1"),
    ("protocol", "protocol", "config.scenario differs from the shipped benchmark"),
])
def test_tampering_is_rejected_with_its_own_reason(naive, kind, code, text):
    issues = validate_submission(_tamper(naive["sub"], kind))
    assert code in {i.code for i in issues}, issues
    assert any(text in i.message for i in issues if i.code == code), issues


def test_tampering_kinds_are_told_apart(naive):
    sub = naive["sub"]
    assert codes(_tamper(sub, "metric")) == {"metric"}             # R intact, a claim changed
    assert "result_digest" in codes(_tamper(sub, "R"))              # R changed (its metrics then disagree too)
    assert codes(_tamper(sub, "config_hash")) == {"config_hash", "id"}   # the id carries the hash too
    assert codes(_tamper(sub, "config")) == {"config_hash", "run_config_hash"}
    assert {"missing_seed", "too_few_seeds", "summary"} == codes(_tamper(sub, "missing_seed"))
    fewer = copy.deepcopy(sub)
    del fewer["runs"][2]
    fewer["seeds"] = [0, 1]
    fewer["summary"] = summarize(fewer["runs"])
    assert codes(fewer) == {"too_few_seeds"}


def test_cli_rejects_a_tampered_file(naive, tmp_path, capsys):
    bad = tmp_path / naive["path"].name
    write_json_atomic(bad, _tamper(naive["sub"], "metric"))
    assert main(["leaderboard", "validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "[metric] seed 1: metric acc is" in out


def test_submit_cli_and_its_errors(naive, tmp_path, capsys):
    out = tmp_path / "subs"
    assert main(["leaderboard", "submit", *map(str, naive["dirs"]), "--name", "Fine-tuning", "--out", str(out)]) == 0
    files = list(out.glob("*.json"))
    assert [f.name for f in files] == [f"split-digits__fine-tuning__{naive['sub']['config_hash'][:8]}.json"]
    assert validate_file(files[0]) == []
    # an existing id is not replaced silently
    assert main(["leaderboard", "submit", *map(str, naive["dirs"]), "--name", "Fine-tuning", "--out", str(out)]) == 2
    assert "use --force" in capsys.readouterr().err
    # fewer than 3 seeds
    assert main(["leaderboard", "submit", *map(str, naive["dirs"][:2]), "--out", str(out)]) == 2
    assert "at least 3 seeds" in capsys.readouterr().err


def test_submit_refuses_mixed_configs_and_selects_one(naive, tmp_path, capsys):
    other = make_runs(tmp_path / "runs", extra=["train.lr=0.01"], seeds=(0,))
    mixed = [*naive["dirs"], *other]
    assert main(["leaderboard", "submit", *map(str, mixed), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "do not share one config apart from seed/stream_seed" in err and "train.lr" in err
    sub = build_submission(mixed, select=naive["sub"]["config_hash"][:10])
    assert sub["config_hash"] == naive["sub"]["config_hash"]


def test_verify_accepts_a_genuine_submission(naive, tmp_path):
    """Every seed re-run (the default) reproduces R exactly; the record is a file of its own."""
    path = tmp_path / naive["path"].name
    path.write_text(naive["path"].read_text())
    before = path.read_bytes()
    rec = verify_submission(path, record_dir=tmp_path / "verifications", verifier="ci")
    assert rec["passed"] and rec["all_seeds"] and rec["atol"] == 1e-9
    assert [e["seed"] for e in rec["seeds"]] == [0, 1, 2] and all(e["max_abs_diff"] == 0.0 for e in rec["seeds"])
    assert rec["source_match"] and rec["verifier"] == "ci"
    assert path.read_bytes() == before                                  # the submission is not touched
    records, bad = load_records(tmp_path / "verifications")
    assert len(records) == 1 and not bad and records[0]["submission_digest"] == submission_digest(naive["sub"])
    sub = json.loads(path.read_text())
    assert verification_status(sub, records)["status"] == "verified"
    sub["notes"] = "edited after verification"                          # content changed: no longer verified
    assert verification_status(sub, records)["status"] == "stale"


def test_verify_detects_r_not_produced_by_its_config(tmp_path, capsys):
    """A consistent-looking forgery: R from lr=0.2 runs, relabelled as the lr=0.05 config (hashes redone)."""
    dirs = make_runs(tmp_path / "runs", extra=["train.lr=0.2"])
    for d in dirs:
        r = json.loads((d / "result.json").read_text())
        r["config"]["train"]["lr"] = 0.05
        r["config_hash"] = config_hash(r["config"])
        write_json_atomic(d / "result.json", r)
    sub = build_submission(dirs)
    assert validate_submission(sub) == []        # every number is internally consistent ...
    path = save_submission(sub, tmp_path / "subs")
    records = tmp_path / "verifications"   # ... but the config does not produce this R
    assert main(["leaderboard", "verify", str(path), "--seeds", "0", "--record", str(records)]) == 1
    out = capsys.readouterr().out
    assert "NOT VERIFIED" in out
    (rec,), _ = load_records(records)
    assert not rec["passed"] and rec["seeds"][0]["max_abs_diff"] > 0.02


def test_verify_detects_consistently_rewritten_r(naive, tmp_path):
    """R edited with metrics, digest and summary recomputed passes validation; only a re-run catches it."""
    sub = copy.deepcopy(naive["sub"])
    run0 = sub["runs"][0]
    run0["accuracy_matrix"][-1] = [min(1.0, v + 0.1) for v in run0["accuracy_matrix"][-1]]
    run0["result_digest"] = result_digest(run0)
    run0["metrics"] = seed_metrics(run0, "class-il")
    sub["summary"] = summarize(sub["runs"])
    assert validate_submission(sub) == []
    path = save_submission(sub, tmp_path)
    rec = verify_submission(path, seeds=[0])
    assert not rec["passed"] and rec["seeds"][0]["max_abs_diff"] == pytest.approx(0.1, abs=1e-9)


def test_render_writes_the_board(naive, tmp_path):
    subs = tmp_path / "submissions"
    subs.mkdir()
    (subs / naive["path"].name).write_text(naive["path"].read_text())
    bad = _tamper(naive["sub"], "metric")
    bad["id"] = "split-digits__tampered__00000000"   # (its id no longer matches either)
    write_json_atomic(subs / f"{bad['id']}.json", bad)
    out = render(subs, tmp_path / "board")
    md = out["markdown"].read_text()
    assert "## split-digits v1" in md and "| 1 | naive |" in md
    acc = naive["sub"]["summary"]["acc"]
    assert f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}" in md
    assert "## Not ranked" in md and "tampered" in md                   # shown as rejected, not ranked
    page = out["html"].read_text()
    assert f'data-id="{naive["sub"]["id"]}"' in page and 'data-id="split-digits__tampered' not in page
    # entries compare at equal total memory: the mean over seeds of what each run kept, in MiB
    mib = sum(r["memory"]["total_bytes"] for r in naive["sub"]["runs"]) / len(naive["sub"]["runs"]) / 2 ** 20
    assert "Memory (MiB)" in md and f" {mib:.2f} |" in md
    assert 'data-key="memory"' in page and f'data-sort="{mib}"' in page
    assert out["heatmaps"] and all(p.is_file() and p.stat().st_size > 1000 for p in out["heatmaps"])
    assert main(["leaderboard", "render", "--submissions", str(subs), "--out", str(tmp_path / "b2")]) == 1


def test_config_column_shows_only_real_deviations(naive):
    """Earlier every key the benchmark YAML leaves out (train.amp, model.init, ...) was listed as a deviation
    even at its declared default, so an entry at the benchmark's own settings read as modified."""
    from clbench.leaderboard.render import deviations
    from clbench.leaderboard.validate import leaderboard_track
    sub = copy.deepcopy(naive["sub"])
    shipped, _ = leaderboard_track("split-digits", 1)
    assert "amp" not in shipped["train"] and sub["config"]["train"]["amp"] == "off"
    assert deviations(sub, shipped) == ["train.epochs=1"]                  # the fixture's one real change
    sub["config"]["train"]["amp"] = "bf16"
    sub["config"]["model"]["init"] = "xavier"
    assert deviations(sub, shipped) == ["model.init=xavier", "train.amp=bf16", "train.epochs=1"]


# ----- the committed board (CI check) ---------------------------------------------------------------
COMMITTED = sorted((REPO / "leaderboard" / "submissions").glob("*.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_submission_validates(path):
    issues = validate_file(path)
    assert issues == [], f"{path.name}: " + "; ".join(map(str, issues))


def test_a_committed_entry_still_reproduces_with_this_code(tmp_path):
    """A shipped split-digits entry (made by earlier code, its config without the keys clbench added since)
    re-runs from its file with this clbench and gives the same R bit for bit (seed 0; every seed in
    leaderboard/verifications/)."""
    shipped = [p for p in COMMITTED if p.name.startswith("split-digits__naive__")]
    if not shipped:
        pytest.skip("no committed split-digits naive entry")
    rec = verify_submission(shipped[0], seeds=[0])
    assert rec["passed"] and rec["seeds"][0]["max_abs_diff"] == 0.0, rec["seeds"][0]["reason"]


@pytest.mark.skipif(not COMMITTED, reason="no committed submissions in leaderboard/submissions/")
def test_committed_board_is_rendered_from_the_submissions():
    board = build(REPO / "leaderboard" / "submissions", REPO / "leaderboard")
    assert not board["rejected"]
    for name, key in (("LEADERBOARD.md", "markdown"), ("index.html", "html")):
        current = (REPO / "leaderboard" / name).read_text()
        assert current == board[key], f"leaderboard/{name} is stale: run `clbench leaderboard render`"
    for e in board["entries"]:
        assert e.heatmap.is_file(), f"missing {e.heatmap}: run `clbench leaderboard render`"
