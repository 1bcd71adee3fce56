"""i-Blurry as in the official code (Koh et al. 2022, naver-ai/i-Blurry): the split rule of its
`collections/`, and its anytime evaluation (`main.py`, `methods/er_baseline.py`): points every N stream
samples, accuracy pooled over the test samples of the classes exposed in the stream so far."""
import hashlib

import pytest
import torch

from clbench import metrics as M
from clbench.anytime import AnytimeEvaluator
from clbench.config import ConfigError, compose
from clbench.data.digits import load_digits
from clbench.engine import prepare, run, stream_info
from clbench.evaluator import Evaluator
from clbench.models import MLP, Normalize
from clbench.scenarios.blurry import Blurry
from clbench.strategy import Strategy

torch.set_num_threads(1)
BLURRY = ["benchmark=split-digits", "scenario={name: blurry, n_experiences: 5, blur: 0.3, disjoint_ratio: 0.5, "
          "online: true}", "strategy=naive", "train.epochs=1", "progress=false", "wandb.mode=disabled", "device=cpu"]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def counts(stream, n_classes=10):
    """experience x class: training samples of each class in each experience."""
    return torch.stack([torch.bincount(e.train.y[e.train.indices], minlength=n_classes) for e in stream.experiences])


# ----- the split --------------------------------------------------------------------------------------

def test_pooled_blur_follows_the_official_split_rule(digits):
    """M of every blurry class goes to one pool, spread evenly over all T experiences, home included."""
    m, T = 0.5, 5
    stream = Blurry(n_experiences=T, class_order=list(range(10)), blur=m, disjoint_ratio=0.5).build(digits, 0)
    C = counts(stream)
    n = torch.bincount(digits.y_train, minlength=10)
    assert torch.equal(C.sum(0), n)                                   # every training sample used once
    idx = torch.cat([e.train.indices for e in stream.experiences])
    assert len(torch.unique(idx)) == len(idx)
    pooled = {c: round(m * int(n[c])) for c in (1, 3, 5, 7, 9)}       # blurry classes: the second of each pair
    received = []
    for e in range(T):
        disjoint, blurry = 2 * e, 2 * e + 1
        assert C[e, disjoint] == n[disjoint] and C[:, disjoint].sum() == n[disjoint]   # never blurred
        stays = int(n[blurry]) - pooled[blurry]
        assert C[e, blurry] > stays                                   # home gets its share of the pool too
        received.append(int(C[e, blurry]) - stays + sum(int(C[e, c]) for c in pooled if c != blurry))
        assert all(C[e, c] > 0 for c in pooled)                       # the pool reaches every experience
    total = sum(pooled.values())
    assert sum(received) == total
    assert set(received) <= {total // T, -(-total // T)}              # |pool| / T each (sizes differ by <= 1)
    assert stream.describe()["blurred_received"] == received


def test_blur_one_is_the_official_uniform_split(digits):
    stream = Blurry(n_experiences=5, blur=1.0, disjoint_ratio=0.0).build(digits, 0)
    C = counts(stream)
    sizes = C.sum(1)
    assert int(sizes.max() - sizes.min()) <= 1                        # every experience gets 1/T of the data
    assert (C > 0).all()                                              # and every class
    with pytest.raises(ConfigError, match="scenario.blur"):
        Blurry(blur=1.0, blur_mode="moved")
    with pytest.raises(ConfigError, match="scenario.blur_mode"):
        Blurry(blur_mode="pool")


def test_moved_mode_is_the_v1_stream_bit_for_bit(digits):
    stream = Blurry(n_experiences=5, blur=0.3, disjoint_ratio=0.5, online=True, blur_mode="moved").build(digits, 11)
    h = hashlib.sha256()
    for e in stream.experiences:
        h.update(e.train.indices.cpu().numpy().tobytes())
    assert h.hexdigest()[:16] == "4ba8cd2dd359d33f"                  # computed with clbench's v1 Blurry


def test_blurry_mnist_benchmark_is_version_2_with_anytime_on():
    cfg = compose(["benchmark=blurry-mnist"])
    assert cfg["benchmark"]["version"] == 2
    assert cfg["scenario"]["blur_mode"] == "pooled" and cfg["scenario"]["blur"] == 0.1
    assert cfg["eval"]["every_samples"] == 100 and cfg["eval"]["anytime_accuracy"] == "exposed"


# ----- the anytime evaluation ---------------------------------------------------------------------------

def step_sizes(stream, batch_size):
    """The stream samples of every training step of a single pass in arrival order."""
    out = []
    for e in stream.experiences:
        n = len(e.train)
        out += [min(batch_size, n - s) for s in range(0, n, batch_size)]
    return out


def test_points_every_n_stream_samples_and_exposure_from_the_stream(tmp_path, digits):
    every, batch = 20, 7
    r, _ = run([*BLURRY, f"out={tmp_path}", f"eval.every_samples={every}", f"train.batch_size={batch}"],
               console=False)
    a = r["anytime"]
    # a point after each step that makes the samples consumed reach a multiple of N (partial batches included)
    total, expected = 0, []
    stream = Blurry(n_experiences=5, blur=0.3, disjoint_ratio=0.5, online=True).build(digits, 0)
    for k in step_sizes(stream, batch):
        if (total + k) // every > total // every:
            expected.append(total + k)
        total += k
    assert a["samples"] == expected and a["every_samples"] == every and a["every_steps"] is None
    assert all(s % every < batch for s in a["samples"])               # never more than one batch late
    # exposed classes: the first arrival of each class in the stream, blurry samples included
    labels = torch.cat([e.train.y[e.train.indices] for e in stream.experiences])
    first = {int(c): int((labels == c).nonzero()[0]) + 1 for c in torch.unique(labels)}
    assert a["unit"] == "class" and {int(c): s for c, s in a["exposed_at"].items()} == first
    # some class is met through a blurred sample before its own experience starts
    start = {c: sum(len(e.train) for e in stream.experiences[:k])
             for k, t in enumerate(stream.eval_tasks) for c in t.classes}
    assert any(first[c] <= start[c] for c in first if start[c] > 0)
    assert r["metrics"]["anytime_acc_auc"] == pytest.approx(sum(a["acc_seen"]) / len(a["acc_seen"]))


def test_anytime_accuracy_hand_computed():
    acc, n = {0: 1.0, 1: 0.5, 2: 0.0}, {0: 10, 1: 30, 2: 60}
    assert M.anytime_accuracy(acc, n, [0, 1]) == pytest.approx((10 + 15) / 40)   # pooled, not (1 + 0.5) / 2
    assert M.anytime_accuracy(acc, n, []) is None
    assert M.anytime_auc([None, 0.5, 0.25]) == pytest.approx(0.375)               # points before any exposure skipped


class ConstantZero(Strategy):
    """Predicts class 0 for every input: its per-class accuracy is 1 on class 0 and 0 elsewhere."""

    def predict(self, x, task_id=None):
        out = torch.zeros(len(x), self.info.n_classes)
        out[:, 0] = 1.0
        return out


def test_anytime_accuracy_is_pooled_over_the_test_samples_of_exposed_classes(digits):
    stream = Blurry(n_experiences=5, class_order=list(range(10)), blur=0.3, disjoint_ratio=0.5,
                    online=True).build(digits, 0)
    model = MLP(digits.input_shape, 10, Normalize(digits.scale, digits.mean, digits.std))
    strategy = ConstantZero(model, {}, {"epochs": 1, "batch_size": 10, "lr": 0.1, "optimizer": "sgd"},
                            stream_info(stream), torch.device("cpu"))
    test_y = torch.cat([t.test.y[t.test.indices] for t in stream.eval_tasks])
    n_test = torch.bincount(test_y, minlength=10)
    exposed_rule = AnytimeEvaluator(Evaluator(stream), every_samples=50)
    task_rule = AnytimeEvaluator(Evaluator(stream), every_samples=50, accuracy="seen_tasks")
    for ev in (exposed_rule, task_rule):
        ev.start_experience(0)
        ev.after_step(strategy, 50)
    arrived = stream.experiences[0].train.y[stream.experiences[0].train.indices[:50]]
    exposed = sorted(set(arrived.tolist()))
    assert exposed_rule.exposed() == exposed and len(exposed) > 2     # classes 0, 1 and blurry ones
    # pooled: the class-0 test samples over all test samples of the exposed classes
    assert exposed_rule.points[0]["acc_seen"] == pytest.approx(float(n_test[0] / n_test[exposed].sum()))
    # clbench's v1 rule: the mean over the tasks started so far (task 0 = classes 0, 1 only)
    assert task_rule.points[0]["acc_seen"] == pytest.approx(float(n_test[0] / n_test[[0, 1]].sum()))
    with pytest.raises(RuntimeError, match="did not report the stream samples"):
        exposed_rule.after_step(strategy, None)


@pytest.mark.parametrize("overrides,match", [
    (["eval.every_samples=10", "eval.every_steps=5"], "eval.every_steps"),
    (["eval.every_samples=-1"], "eval.every_samples"),
    (["eval.every_samples=10", "eval.anytime_accuracy=tasks"], "eval.anytime_accuracy"),
])
def test_anytime_config_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        prepare(compose([*BLURRY, *overrides]))


@pytest.mark.mnist
def test_blurry_mnist_reports_a_auc_by_default(mnist_root, tmp_path):
    r, _ = run(["benchmark=blurry-mnist", "strategy=naive", f"data.root={mnist_root}", "dataset.train_per_class=40",
                "dataset.test_per_class=20", "progress=false", "wandb.mode=disabled", "device=cpu",
                f"out={tmp_path}"], console=False)
    a = r["anytime"]
    assert a["every_samples"] == 100 and len(a["samples"]) == 400 // 100
    assert r["metrics"]["anytime_acc_auc"] == pytest.approx(sum(a["acc_seen"]) / len(a["acc_seen"]))
    assert r["stream"]["blur_mode"] == "pooled"
