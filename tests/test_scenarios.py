"""Scenario generators: determinism, class separation, permutations, rotations, power-law counts,
blurry/online streams, and the task id being hidden at test time outside task-IL."""
import numpy as np
import pytest
import torch

from clbench.config import ConfigError, compose
from clbench.data import TensorDataset
from clbench.data.digits import load_digits
from clbench.engine import prepare, run, stream_info
from clbench.evaluator import Evaluator
from clbench.models import MLP, Normalize
from clbench.registry import SCENARIOS
from clbench.scenarios.blurry import Blurry
from clbench.scenarios.class_incremental import ClassIncremental
from clbench.scenarios.common import ArrivalOrderSplit, check_stream
from clbench.scenarios.new_instances import NewInstances
from clbench.scenarios.permuted import Permuted, permutation
from clbench.scenarios.power_law import PowerLaw, integer_counts, schedule_weights
from clbench.scenarios.rotated import Rotated
from clbench.scenarios.task_incremental import TaskIncremental
from clbench.strategy import Strategy
from clbench.stream import Experience, Stream

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def small_dataset(n_per_class=6, n_classes=4, shape=(1, 4, 4)):
    """A tiny labelled tensor dataset; pixel values encode (sample, pixel) so transforms are traceable."""
    n = n_per_class * n_classes
    x = torch.arange(n * int(np.prod(shape)), dtype=torch.int64).reshape(n, *shape) % 251
    y = torch.arange(n) % n_classes
    return TensorDataset("small", x.to(torch.uint8), y, x[: n // 2].to(torch.uint8), y[: n // 2],
                         n_classes=n_classes, input_shape=shape, scale=255.0, mean=(0.5,), std=(0.25,))


def fingerprint(stream: Stream):
    """Everything that defines a stream's data: per experience the sample indices, labels and inputs."""
    out = []
    for e in stream.experiences:
        b = e.train.get(torch.arange(len(e.train)))
        out.append((e.kind, tuple(e.task_ids), tuple(e.classes), b.y.tolist(), b.t.tolist(),
                    b.x.flatten(1).sum(1).tolist(), b.x.flatten()[:500].tolist()))
    for t in stream.eval_tasks:
        b = t.test.get(torch.arange(len(t.test)))
        out.append((t.task_id, b.y.tolist(), b.x.flatten()[:500].tolist()))
    return out


SCENARIO_CASES = [
    ("class_incremental", {"n_experiences": 5}),
    ("task_incremental", {"n_experiences": 5}),
    ("permuted", {"n_experiences": 3}),
    ("rotated", {"n_experiences": 3}),
    ("new_instances", {"n_experiences": 3}),
    ("blurry", {"n_experiences": 5, "blur": 0.2, "disjoint_ratio": 0.5, "online": True}),
    ("power_law", {"base": {"name": "permuted", "n_experiences": 4}, "budget": 50}),
]


@pytest.mark.parametrize("name,options", SCENARIO_CASES, ids=[c[0] for c in SCENARIO_CASES])
def test_same_seed_same_stream_other_seed_other_stream(digits, name, options):
    cls = SCENARIOS.get(name)
    a, b = cls(**options).build(digits, 7), cls(**options).build(digits, 7)
    assert fingerprint(a) == fingerprint(b)
    assert a.describe() == b.describe()
    assert fingerprint(cls(**options).build(digits, 8)) != fingerprint(a)


def test_class_incremental_has_no_class_leaks(digits):
    stream = ClassIncremental(n_experiences=5).build(digits, 3)   # class order from the seed
    seen, used = set(), []
    for e, t in zip(stream.experiences, stream.eval_tasks):
        train_classes = set(torch.unique(e.train.y[e.train.indices]).tolist())
        test_classes = set(torch.unique(t.test.y[t.test.indices]).tolist())
        assert train_classes == set(e.classes) == test_classes == set(t.classes) and len(train_classes) == 2
        assert not (train_classes & seen)                         # disjoint from earlier experiences
        seen |= train_classes
        used.append(e.train.indices)
    assert seen == set(range(10))
    idx = torch.cat(used)                                         # every training sample exactly once
    assert len(idx) == len(digits.y_train) and len(torch.unique(idx)) == len(idx)
    assert stream.setting == "class-il" and not any(e.task_visible_at_test for e in stream.experiences)
    assert stream.describe()["class_order"] != list(range(10))


def test_class_order_explicit_and_first_increment(digits):
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    stream = ClassIncremental(n_experiences=3, class_order=order, first_increment=4).build(digits, 0)
    assert [e.classes for e in stream.experiences] == [[6, 7, 8, 9], [3, 4, 5], [0, 1, 2]]
    with pytest.raises(ConfigError, match="class_order"):
        ClassIncremental(n_experiences=5, class_order=[0, 1, 2]).build(digits, 0)


def test_permutations_fixed_per_task_and_distinct():
    ds = small_dataset()
    s5 = Permuted(n_experiences=5).build(ds, 11)
    s3 = Permuted(n_experiences=3).build(ds, 11)
    x = ds.x_train.flatten(1)
    perms = []
    for i, e in enumerate(s5.experiences):
        perm = permutation(16, 11, i)
        b = e.train.get(torch.arange(len(e.train)))
        assert torch.equal(b.x.flatten(1), x[:, perm])                      # the task's fixed permutation
        assert b.x.dtype == torch.uint8 and b.x.shape == ds.x_train.shape    # raw dtype and shape kept
        tb = s5.eval_tasks[i].test.get(torch.arange(len(ds.y_test)))
        assert torch.equal(tb.x.flatten(1), ds.x_test.flatten(1)[:, perm])  # test data: same permutation
        perms.append(perm)
        if i < 3:                                                            # independent of the task count
            assert torch.equal(s3.experiences[i].train.get(torch.arange(4)).x, b.x[:4])
    assert all(not torch.equal(perms[i], perms[j]) for i in range(5) for j in range(i))
    assert all(not torch.equal(p, torch.arange(16)) for p in perms)         # GPM: task 1 permuted too
    assert len({p["sha1"] for p in s5.describe()["permutations"]}) == 5
    # one copy of the images: every experience views the same base tensor
    assert all(e.train.x is ds.x_train for e in s5.experiences)
    first = Permuted(n_experiences=2, keep_first_unpermuted=True).build(ds, 11)
    assert torch.equal(first.experiences[0].train.get(torch.arange(24)).x, ds.x_train)
    assert first.setting == "domain-il" and first.eval_tasks[0].classes == [0, 1, 2, 3]


def test_rotation_is_pils_nearest_rotation(digits):
    from PIL import Image

    stream = Rotated(angles=[0.0, 33.3, 90.0, 171.0], n_experiences=None).build(digits, 0)
    x = digits.x_train[:50]
    for e, angle in zip(stream.experiences, [0.0, 33.3, 90.0, 171.0]):
        got = e.train.transform(x)
        ref = np.stack([np.asarray(Image.fromarray(xi[0].numpy()).rotate(angle))[None] for xi in x])
        assert np.array_equal(got.numpy(), ref)
    # GEM's draw: task t's angle in the t-th of n equal slices of the range
    angles = Rotated(n_experiences=4, angle_range=[0, 180]).build(digits, 5).describe()["angles"]
    assert all(45 * t <= a < 45 * (t + 1) for t, a in enumerate(angles))


def test_new_instances_disjoint_stratified_chunks(digits):
    stream = NewInstances(n_experiences=4).build(digits, 1)
    idx = torch.cat([e.train.indices for e in stream.experiences])
    assert len(idx) == len(digits.y_train) == len(torch.unique(idx))
    per_class = torch.bincount(digits.y_train, minlength=10)
    for e in stream.experiences:
        counts = torch.bincount(e.train.y[e.train.indices], minlength=10)
        assert ((counts - per_class / 4).abs() <= 1).all()          # every class, evenly split
    assert len(stream.eval_tasks) == 1 and stream.learned_rows() == [0] and stream.setting == "domain-il"


# ----- power-law rehearsal --------------------------------------------------------------------------

def test_power_law_weights_and_counts_hand_computed():
    g = torch.Generator().manual_seed(0)
    w = schedule_weights([3, 2, 1], "power", alpha=1.0, lam=0.0)
    assert torch.allclose(w, torch.tensor([1 / 3, 1 / 2, 1.0], dtype=torch.float64))
    # R = 10: expectations 10 * (2/11, 3/11, 6/11) = 1.82, 2.73, 5.45 -> largest remainders go to tasks 0, 1
    assert integer_counts(w, 10, "largest_remainder", g) == [2, 3, 5]
    # exponential(lambda=1): e^-3, e^-2, e^-1 -> 0.90, 2.45, 6.65 -> [1, 2, 7]
    assert integer_counts(schedule_weights([3, 2, 1], "exponential", 1.0, 1.0), 10, "largest_remainder", g) == [1, 2, 7]
    assert integer_counts(schedule_weights([3, 2, 1], "uniform", 1.0, 1.0), 10, "largest_remainder", g) == [4, 3, 3]
    assert integer_counts(schedule_weights([3, 2, 1], "none", 1.0, 1.0), 10, "largest_remainder", g) == [0, 0, 0]
    # stochastic rounding: each count is the floor or ceiling of its expectation, the sum is exactly R,
    # and the mean over draws is the expectation
    draws = torch.tensor([integer_counts(w, 10, "stochastic_rounding", g) for _ in range(4000)])
    assert (draws.sum(1) == 10).all()
    assert set(draws[:, 0].tolist()) == {1, 2} and set(draws[:, 2].tolist()) == {5, 6}
    assert torch.allclose(draws.double().mean(0), torch.tensor([20 / 11, 30 / 11, 60 / 11], dtype=torch.float64),
                          atol=0.05)
    sampled = torch.tensor([integer_counts(w, 10, "sampled", g) for _ in range(4000)])
    assert (sampled.sum(1) == 10).all() and sampled[:, 2].max() > 6      # multinomial: not just floor/ceil
    assert torch.allclose(sampled.double().mean(0), torch.tensor([20 / 11, 30 / 11, 60 / 11], dtype=torch.float64),
                          atol=0.1)


def test_power_law_stream_follows_the_schedule():
    ds = small_dataset(n_per_class=6)
    base = {"name": "permuted", "n_experiences": 4}
    stream = PowerLaw(base=base, budget=10, counts="largest_remainder", lag="introduced").build(ds, 2)
    kinds = [(e.kind, e.train.task_counts()) for e in stream.experiences]
    # phase 1: task 0 gets all 10; phase 2: lags (2, 1) -> 10 * (1/3, 2/3) -> [3, 7]; phase 3: [2, 3, 5]
    assert kinds == [("new", {0: 24}), ("new", {1: 24}), ("rehearsal", {0: 10}),
                     ("new", {2: 24}), ("rehearsal", {0: 3, 1: 7}),
                     ("new", {3: 24}), ("rehearsal", {0: 2, 1: 3, 2: 5})]
    assert stream.learned_rows() == [0, 1, 3, 5] and stream.setting == "domain-il"
    d = stream.describe()
    assert [p["counts"] for p in d["rehearsal"]["phases"]] == [[], [10], [3, 7], [2, 3, 5]]
    assert d["rehearsal"]["total_rehearsed"] == 30
    assert [e["samples_per_task"] for e in d["experiences"]][-1] == {"0": 2, "1": 3, "2": 5}
    # rehearsed samples carry their own task's label and permutation
    reh = stream.experiences[-1].train
    b = reh.get(torch.arange(len(reh)))
    for task in (0, 1, 2):
        perm = permutation(16, 2, task)
        xs = b.x[b.t == task].flatten(1)
        originals = ds.x_train.flatten(1)[:, perm]
        assert all(any(torch.equal(r, o) for o in originals) for r in xs)
    assert len(torch.unique(b.x[b.t == 2].flatten(1), dim=0)) == 5      # drawn without replacement


def test_power_law_mixed_mode_last_seen_lag_and_controls():
    ds = small_dataset()
    base = {"name": "permuted", "n_experiences": 4}
    mixed = PowerLaw(base=base, budget=10, counts="largest_remainder", mode="mixed", lag="introduced").build(ds, 0)
    assert [(e.kind, e.train.task_counts()) for e in mixed.experiences] == [
        ("new", {0: 24}), ("new", {0: 10, 1: 24}), ("new", {0: 3, 1: 7, 2: 24}), ("new", {0: 2, 1: 3, 2: 5, 3: 24})]
    assert mixed.learned_rows() == [0, 1, 2, 3]
    # lag since last seen: every earlier task was rehearsed in the previous phase, so all lags are 1
    last = PowerLaw(base=base, budget=10, counts="largest_remainder", lag="last_seen").build(ds, 0)
    phases = last.describe()["rehearsal"]["phases"]
    assert [p["lags"] for p in phases] == [[], [1], [1, 1], [1, 1, 1]]
    assert phases[3]["counts"] == [4, 3, 3]
    none = PowerLaw(base=base, schedule="none", budget=10).build(ds, 0)
    assert [e.kind for e in none.experiences] == ["new"] * 4 and none.learned_rows() == [0, 1, 2, 3]
    uniform = PowerLaw(base=base, schedule="uniform", budget=10).build(ds, 0)
    assert all(sum(e.train.task_counts().values()) == 10 for e in uniform.experiences if e.kind == "rehearsal")
    with pytest.raises(ConfigError, match="scenario.schedule"):
        PowerLaw(schedule="powr")


def test_power_law_on_class_incremental_base(digits):
    stream = PowerLaw(base={"name": "class_incremental", "n_experiences": 5}, budget=40,
                      lag="introduced").build(digits, 0)
    assert stream.setting == "class-il" and len(stream) == 9
    reh = [e for e in stream.experiences if e.kind == "rehearsal"]
    assert [sorted(e.train.task_counts()) for e in reh] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    for e in reh:                                          # class labels of rehearsed samples match their task
        b = e.train.get(torch.arange(len(e.train)))
        for t, y in zip(b.t.tolist(), b.y.tolist()):
            assert y in stream.task_classes[t]


# ----- blurry / online ------------------------------------------------------------------------------

def test_blurry_ratio_and_disjoint_classes(digits):
    stream = Blurry(n_experiences=5, class_order=list(range(10)), blur=0.2, disjoint_ratio=0.5,
                    blur_mode="moved").build(digits, 0)   # the v1 rule
    d = stream.describe()
    assert d["disjoint_classes"] == [0, 2, 4, 6, 8]
    idx = torch.cat([e.train.indices for e in stream.experiences])
    assert len(idx) == len(digits.y_train) == len(torch.unique(idx))
    per_class = torch.bincount(digits.y_train, minlength=10)
    for k, e in enumerate(stream.experiences):
        y = e.train.y[e.train.indices]
        home = [2 * k, 2 * k + 1]
        assert (y == 2 * k).sum() == per_class[2 * k]                       # disjoint class: all at home
        assert (y == 2 * k + 1).sum() == per_class[2 * k + 1] - round(0.2 * int(per_class[2 * k + 1]))
        foreign = y[~torch.isin(y, torch.tensor(home))]
        assert set(foreign.tolist()) <= {1, 3, 5, 7, 9}                      # only blurry classes travel
    moved = sum(round(0.2 * int(per_class[c])) for c in (1, 3, 5, 7, 9))
    assert sum(int((~torch.isin(e.train.y[e.train.indices], torch.tensor([2 * k, 2 * k + 1]))).sum())
               for k, e in enumerate(stream.experiences)) == moved
    assert [t.classes for t in stream.eval_tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_online_stream_single_pass_in_arrival_order(digits, tmp_path):
    stream = Blurry(n_experiences=5, blur=0.1, online=True).build(digits, 0)
    split = stream.experiences[0].train
    assert isinstance(split, ArrivalOrderSplit)
    orders = [torch.cat([b.index for b in split.batches(10, shuffle=True, generator=torch.Generator().manual_seed(s))])
              for s in (0, 1)]
    assert torch.equal(orders[0], orders[1]) and torch.equal(orders[0], torch.arange(len(split)))
    with pytest.raises(ConfigError, match="train.epochs=1"):
        prepare(compose(["scenario.name=blurry", "+scenario.online=true", "+scenario.blur=0.1",
                         "train.epochs=2", "wandb.mode=disabled", "device=cpu"]))


# ----- the task id at test time ---------------------------------------------------------------------

class Spy(Strategy):
    """Records what the evaluator hands to predict."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def predict(self, x, task_id=None):
        self.calls.append((type(x), task_id))
        return super().predict(x, task_id)


def spy_for(stream, ds):
    model = MLP(ds.input_shape, ds.n_classes, Normalize(ds.scale, ds.mean, ds.std))
    train = {"epochs": 1, "batch_size": 32, "lr": 0.05, "optimizer": "sgd"}
    return Spy(model, {}, train, stream_info(stream), torch.device("cpu"))


@pytest.mark.parametrize("scenario", [ClassIncremental(n_experiences=5), Permuted(n_experiences=2),
                                      NewInstances(n_experiences=2), Blurry(n_experiences=5)],
                         ids=["class_il", "permuted", "new_instances", "blurry"])
def test_task_id_hidden_at_test_outside_task_il(digits, scenario):
    stream = scenario.build(digits, 0)
    spy = spy_for(stream, digits)
    spy.train(stream.experiences[0])
    Evaluator(stream, batch_size=100).evaluate(spy)
    assert spy.calls and all(t is None for _, t in spy.calls)         # never a task id
    assert all(cls is torch.Tensor for cls, _ in spy.calls)            # a plain tensor: nothing attached
    assert not hasattr(spy.info, "eval_tasks")                         # StreamInfo carries no test data


def test_task_id_given_in_task_il_and_masks_logits(digits):
    stream = TaskIncremental(n_experiences=5).build(digits, 0)
    spy = spy_for(stream, digits)
    row = Evaluator(stream, batch_size=1000).evaluate(spy)
    assert [t for _, t in spy.calls] == [0, 1, 2, 3, 4]
    assert row.acc == row.acc_task_masked                              # predictions confined to the task
    assert all(e.task_visible_at_test for e in stream.experiences) and stream.setting == "task-il"


def test_stream_check_rejects_a_visible_task_id_outside_task_il(digits):
    stream = ClassIncremental(n_experiences=5).build(digits, 0)
    e = stream.experiences[0]
    stream.experiences[0] = Experience(e.index, e.train, e.task_ids, e.classes, task_visible_at_test=True)
    with pytest.raises(ValueError, match="contradicts the class-il setting"):
        check_stream(stream)


# ----- end to end on the real MNIST -----------------------------------------------------------------

@pytest.mark.mnist
def test_split_mnist_end_to_end_on_a_subset(mnist_root, tmp_path):
    result, folder = run(["benchmark=split-mnist", "strategy=naive", f"data.root={mnist_root}",
                          "dataset.train_per_class=60", "dataset.test_per_class=30", "train.epochs=5",
                          "train.batch_size=16",
                          "wandb.mode=disabled", "device=cpu", "progress=false", f"out={tmp_path}"],
                         console=False)
    R = np.array(result["accuracy_matrix"])
    assert R.shape == (5, 5) and (folder / "result.json").is_file()
    s = result["stream"]
    assert s["dataset"]["subset"] == {"train_per_class": 60, "test_per_class": 30}
    assert [e["n_train"] for e in s["experiences"]] == [120] * 5
    assert all(R[i, i] > 0.8 for i in range(5))              # each 2-digit task is learnt ...
    assert (R[-1, :-1] < 0.2).all()                           # ... and forgotten by fine-tuning (class-IL)


@pytest.mark.mnist
def test_power_law_pmnist_end_to_end_on_a_subset(mnist_root, tmp_path):
    result, _ = run(["benchmark=power-law-pmnist", "strategy=naive", f"data.root={mnist_root}",
                     "dataset.train_per_class=20", "dataset.test_per_class=20", "scenario.base.n_experiences=3",
                     "scenario.budget=30", "scenario.counts=largest_remainder", "scenario.lag=introduced", "wandb.mode=disabled",
                     "device=cpu", "progress=false", f"out={tmp_path}"], console=False)
    s = result["stream"]
    # phase 1: 30 of task 0; phase 2: lags (2, 1) -> 30 * (1/3, 2/3) = [10, 20]
    assert [e["samples_per_task"] for e in s["experiences"]] == [
        {"0": 200}, {"1": 200}, {"0": 30}, {"2": 200}, {"0": 10, "1": 20}]
    assert s["learned_at"] == [0, 1, 3] and len(result["accuracy_matrix"]) == 5
