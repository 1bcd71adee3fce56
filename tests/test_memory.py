"""Memory accounting in the unit of "A Model or 603 Exemplars" (Zhou et al., ICLR 2023): kept inputs in their
stored dtype, kept models as their parameters and buffers, everything else a method keeps as stored."""

from clbench.config import compose
from clbench.engine import prepare
from clbench.state import nbytes

BASE = ["wandb.mode=disabled", "device=cpu", "train.epochs=1"]


def trained(strategy: str, *extra: str, experiences: int = 1):
    r = prepare(compose([f"strategy={strategy}", *BASE, *extra]))
    for exp in r.stream.experiences[:experiences]:
        r.strategy.train(exp.sealed())
    return r.strategy


def test_a_buffer_counts_the_samples_it_holds_not_its_capacity():
    """Digits: 8x8 uint8 images, 64 bytes each. After one experience (288 samples) a 1000-slot buffer holds 288."""
    s = trained("replay", "strategy.buffer_size=1000")
    n = len(s.buffer)
    assert n == 288
    mem = s.memory_footprint()
    assert mem["exemplar_bytes"] == n * 64                  # the images, uint8
    assert mem["other_state_bytes"] == n * (8 + 8)          # their int64 label and task id
    assert mem["total_bytes"] == mem["model_bytes"] + n * 80


def test_stored_logits_are_kept_state_beside_the_exemplars():
    s = trained("der", "strategy.buffer_size=100")
    mem = s.memory_footprint()
    assert mem["exemplar_bytes"] == 100 * 64
    assert mem["other_state_bytes"] == 100 * (8 + 8 + 10 * 4)   # label, task id, 10 float32 logits


def test_samples_kept_outside_a_buffer_are_exemplars():
    s = trained("cumulative", experiences=2)
    n = sum(len(d["y"]) for d in s.seen)
    mem = s.memory_footprint()
    assert mem["exemplar_bytes"] == n * 64 and mem["other_state_bytes"] == n * 16


def test_model_copies_count_as_extra_models():
    lwf = trained("lwf")
    assert lwf.memory_footprint()["extra_model_bytes"] == nbytes(lwf.model) > 0     # the teacher
    clser = trained("clser", "strategy.buffer_size=50")
    mem = clser.memory_footprint()
    assert mem["extra_model_bytes"] == 2 * nbytes(clser.model)                     # plastic and stable EMAs
    assert mem["exemplar_bytes"] == 50 * 64


def test_parameter_sized_state_is_counted_once():
    s = trained("si")
    params = sum(p.numel() * 4 for p in s.model.parameters())
    # SI keeps the previous parameters, the running path integral and the importance: three parameter copies
    assert s.memory_footprint()["other_state_bytes"] == 3 * params
    assert s.memory_footprint()["extra_model_bytes"] == 0


def test_report_compares_configurations_by_total_memory(tmp_path, capsys):
    from clbench import cli
    from clbench.engine import run
    totals = {}
    for strategy, extra in (("replay", ["strategy.buffer_size=50"]), ("naive", [])):
        for seed in (0, 1):
            r, _ = run([f"strategy={strategy}", *extra, f"seed={seed}", *BASE, f"out={tmp_path / 'runs'}",
                        "progress=false"], console=False)
            totals.setdefault(strategy, []).append(r["memory"]["total_bytes"])
    assert totals["replay"][0] == totals["naive"][0] + 50 * 80          # 50 images of 64 bytes + labels
    assert cli.main(["report", str(tmp_path / "runs"), "--memory-plot", "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "memory.md").read_text()
    naive_line, replay_line = [line for line in table.splitlines() if line.startswith("| split-digits")]
    assert "naive" in naive_line and "replay" in replay_line            # sorted by total memory
    eq = float(replay_line.split("|")[5])
    assert eq == round(totals["replay"][0] / 64)                        # exemplar-equivalents: total / one input
    assert (tmp_path / "rep" / "memory_split-digits.png").stat().st_size > 0
    assert "exemplar-equivalents" in capsys.readouterr().out


def test_summary_of_run_records_in_mib_and_exemplar_equivalents():
    from clbench.memory import MIB, summarize
    stream = {"dataset": {"input_shape": [3, 32, 32], "dtype": "uint8"}}
    resnet32 = 463_504 * 4                     # the paper's example: one ResNet-32 = 603 CIFAR images
    runs = [{"memory": {"total_bytes": resnet32 + d, "model_bytes": resnet32}, "stream": stream} for d in (0, 2)]
    m = summarize(runs)
    assert m["input_bytes"] == 3072
    assert int(m["total_exemplar_equivalents"]) == 603 and m["total_mib"] == (resnet32 + 1) / MIB
    assert m["total_bytes"]["std"] is not None and m["model_bytes"]["n"] == 2


def test_summary_ignores_malformed_fields_of_records_from_elsewhere():
    from clbench.memory import summarize
    bad = [{"memory": {"total_bytes": "9" * 5, "model_bytes": True}, "stream": {"dataset": {"input_shape": ["a", -1],
                                                                                         "dtype": "uint8"}}},
           {"memory": {"total_bytes": 2048}, "stream": {}}]
    m = summarize(bad)
    assert m["total_bytes"]["n"] == 1 and m["total_bytes"]["mean"] == 2048 and m["model_bytes"]["n"] == 0
    assert m["input_bytes"] is None and m["total_exemplar_equivalents"] is None and m["total_mib"] == 2048 / 2 ** 20
