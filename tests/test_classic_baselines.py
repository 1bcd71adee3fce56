"""GEM, MAS, RWalk, PNN, PackNet, FDR, HAL: each method's defining property, then exact resume for each."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from clbench.config import compose
from clbench.engine import prepare, run
from clbench.registry import STRATEGIES

torch.set_num_threads(1)
TIL = ["scenario.name=task_incremental"]        # split-digits as task-IL (PNN, PackNet)


def make(strategy: str, *extra: str):
    """A prepared run (stream + strategy) on split-digits, one epoch per experience."""
    return prepare(compose([f"strategy={strategy}", "train.epochs=1", "wandb.mode=disabled", "device=cpu", *extra]))


def params_of(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def batches(exp, n, bs=16, seed=0):
    return list(exp.train.batches(bs, generator=torch.Generator().manual_seed(seed)))[:n]


# ----- GEM ------------------------------------------------------------------------------------------------
def test_gem_projection_solves_the_dual_and_agrees_with_every_task_gradient():
    from clbench.strategies.gem import project_to_cone
    g0 = torch.Generator().manual_seed(0)
    G = torch.randn(5, 40, generator=g0, dtype=torch.float64)
    g = -G[:3].sum(0) + 0.1 * torch.randn(40, generator=g0, dtype=torch.float64)   # violates several constraints
    assert (G @ g < 0).sum() >= 2
    for margin in (0.0, 0.5):
        for eps in (1e-3, 1e-9):
            proj, v = project_to_cone(g, G, margin, eps)
            v = torch.from_numpy(v)
            # the dual solution: v >= margin and g~ = G^T v + g
            assert (v >= margin - 1e-9).all()
            assert torch.allclose(proj, G.T @ v + g, atol=1e-9)
            # non-negative agreement with every task gradient, up to the ridge: <g~, g_k> >= -eps v_k
            assert ((G @ proj) >= -eps * v - 1e-7).all(), (G @ proj, eps * v)
    # margin 0: the closest agreeing gradient (a feasible g is unchanged; the projection is no longer than g)
    proj, _ = project_to_cone(g, G, 0.0, 1e-9)
    assert (proj - g).norm() <= g.norm()
    ok = G[0] + G[1]
    if ((G @ ok) >= 0).all():
        assert torch.allclose(project_to_cone(ok, G, 0.0, 1e-12)[0], ok, atol=1e-6)


@pytest.mark.parametrize("extra", [[], TIL])
def test_gem_step_gradient_agrees_with_each_past_task_memory_gradient(extra):
    """In a real training step, the gradient the optimizer applies has <g~, g_k> >= 0 (to eps) for every past
    task k, with g_k recomputed here by plain autograd on that task's memory."""
    r = make("gem", "strategy.buffer_size=100", "strategy.eps=1e-9", "strategy.margin=0.0", *extra)
    s, exps = r.strategy, r.stream.experiences
    for e in exps[:3]:
        s.train(e)
    mem = s.memory.contents()
    assert sorted(torch.unique(mem["experience"]).tolist()) == [0, 1, 2] and len(mem["y"]) == 3 * 20
    s.begin_experience(exps[3])
    applied, projected = [], 0
    orig_step = s.optimizer.step

    def spy(*a, **k):
        applied.append(torch.cat([p.grad.reshape(-1).clone() for p in s.params]))
        return orig_step(*a, **k)
    s.optimizer.step = spy
    for b in batches(exps[3], 12):
        before = s.n_projected
        s.step(b)
        projected += s.n_projected - before
        # independent memory gradients at the parameters the step started from: re-derive from the update
        theta_after = torch.cat([p.detach().reshape(-1) for p in s.params])
        g_applied = applied[-1]
        theta_before = theta_after + float(s.train_cfg["lr"]) * g_applied
        model = copy.deepcopy(s.model)
        torch.nn.utils.vector_to_parameters(theta_before, model.parameters())
        for k in range(3):
            sel = mem["experience"] == k
            model.zero_grad()
            logits = model(mem["x"][sel])
            if s.task_aware:
                logits = s.mask_logits(logits, mem["t"][sel])
            F.cross_entropy(logits, mem["y"][sel]).backward()
            gk = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            assert float(gk @ g_applied) >= -1e-5 * float(gk.norm() * g_applied.norm()), (k, float(gk @ g_applied))
    assert projected > 0                      # the QP was exercised, not skipped


def test_gem_batched_task_gradients_equal_the_per_task_loop():
    for extra in ([], TIL):
        r = make("gem", "strategy.buffer_size=100", *extra)
        s = r.strategy
        for e in r.stream.experiences[:3]:
            s.after_experience(e)
        s.batched = True
        a = s.memory_gradients()
        s.batched = False
        b = s.memory_gradients()
        assert a.shape == (3, sum(p.numel() for p in s.params))
        assert torch.allclose(a, b, atol=1e-6)


# ----- MAS ------------------------------------------------------------------------------------------------
def test_mas_importance_is_mean_abs_gradient_of_squared_output_norm():
    r = make("mas")
    s, exp = r.strategy, r.stream.experiences[0]
    s.train(exp)
    s.after_experience(exp)      # a second consolidation of the same task adds the same importance again
    # reference: per-sample loop, model in eval mode, gradient of ||f(x)||^2 (all logits in class-IL)
    model = s.model.eval()
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(exp.train)):
        model.zero_grad()
        (model(exp.train.get(torch.tensor([i])).x) ** 2).sum().backward()
        for n, p in model.named_parameters():
            ref[n] += p.grad.abs()
    for n in ref:
        # trained once + consolidated twice: Omega = 2 * omega (summed over consolidations, the authors' code)
        assert torch.allclose(s.omega[n], 2 * ref[n] / len(exp.train), rtol=1e-4, atol=1e-7), n
    # the penalty is zero at theta* and positive away from it
    assert float(s.penalty().detach()) == 0.0
    with torch.no_grad():
        next(s.model.parameters()).add_(0.01)
    assert float(s.penalty().detach()) > 0


def test_mas_grouped_importance_is_bounded_by_the_per_sample_one():
    """|sum of gradients| <= sum of |gradients|: the authors' batch form never exceeds the paper's per-sample one."""
    from clbench.strategies.mas import output_norm_importance
    r = make("mas")
    s, exp = r.strategy, r.stream.experiences[0]
    s.train(exp)
    state, m = s.generator.get_state(), 8 * (len(exp.train) // 8)
    one = output_norm_importance(s, exp, 1, max_samples=m)
    s.generator.set_state(state)                        # the same samples, grouped by 8
    grouped = output_norm_importance(s, exp, 8, max_samples=m)
    assert all((grouped[n] <= one[n] * (1 + 1e-5) + 1e-6).all() for n in one)   # float rounding
    assert any((grouped[n] < one[n] - 1e-6).any() for n in one)


def test_mas_task_il_importance_uses_the_task_head_only():
    r = make("mas", *TIL)
    s, exp = r.strategy, r.stream.experiences[0]
    s.train(exp)
    others = [c for c in range(10) if c not in s.task_classes[0]]
    # rows of the classifier for other tasks' classes do not affect task 0's head: zero importance
    assert float(s.omega["classifier.weight"][others].abs().max()) == 0.0
    assert float(s.omega["classifier.weight"][s.task_classes[0]].abs().max()) > 0.0


# ----- RWalk ----------------------------------------------------------------------------------------------
def test_rwalk_combines_the_running_fisher_and_the_path_score():
    """Replay the training steps independently and rebuild F, s and F^ + s^ from the paper's formulas."""
    r = make("rwalk", "strategy.update_every=3", "strategy.ema_alpha=0.6")
    s, exps = r.strategy, r.stream.experiences
    lr, xi, alpha, lam = float(s.train_cfg["lr"]), float(s.hp.xi), 0.6, float(s.hp.rwalk_lambda)
    names = list(s.params)
    F_ = {n: torch.zeros_like(p) for n, p in s.params.items()}
    score = None
    star, importance = None, None
    for t, exp in enumerate(exps[:2]):
        s.begin_experience(exp)
        win_sq = {n: torch.zeros_like(p) for n, p in s.params.items()}
        win_n, w = 0, {n: torch.zeros_like(p) for n, p in s.params.items()}
        theta_w = {n: p.detach().clone() for n, p in s.params.items()}
        task_s = {n: torch.zeros_like(p) for n, p in s.params.items()}
        for i, b in enumerate(batches(exp, 10)):
            if (i + 1) % 3 == 0:
                for n, p in s.params.items():
                    task_s[n] += torch.relu(w[n] / (xi + F_[n] * (p.detach() - theta_w[n]) ** 2))
                    F_[n] = (1 - alpha) * F_[n] + alpha * win_sq[n] / win_n
                    win_sq[n].zero_(), w[n].zero_()
                    theta_w[n] = p.detach().clone()
                win_n = 0
            # the unregularised gradient at the current parameters, by plain autograd
            model = copy.deepcopy(s.model)
            model.zero_grad()
            F.cross_entropy(model(b.x), b.y).backward()
            g = {n: p.grad.clone() for n, p in model.named_parameters()}
            before = {n: p.detach().clone() for n, p in s.params.items()}
            s.step(b)
            for n, p in s.params.items():
                win_sq[n] += g[n] ** 2
                expected = g[n] + (2 * lam * importance[n] * (before[n] - star[n]) if importance else 0)
                assert torch.allclose(p.detach(), before[n] - lr * expected, atol=1e-6), n     # the SGD step
                w[n] += -g[n] * (p.detach() - before[n])
            win_n += 1
        s.end_experience(exp)
        score = task_s if score is None else {n: (score[n] + task_s[n]) / 2 for n in names}
        lo_s, hi_s = min(float(v.min()) for v in score.values()), max(float(v.max()) for v in score.values())
        lo_f, hi_f = min(float(v.min()) for v in F_.values()), max(float(v.max()) for v in F_.values())
        importance = {n: (F_[n] - lo_f) / (hi_f - lo_f) + (score[n] - lo_s) / (hi_s - lo_s) for n in names}
        star = {n: p.detach().clone() for n, p in s.params.items()}
        for n in names:
            assert torch.allclose(s.fisher[n], F_[n], rtol=1e-4, atol=1e-9), (t, n)
            assert torch.allclose(s.score[n], score[n], rtol=1e-4, atol=1e-7), (t, n)
            assert torch.allclose(s.importance[n], importance[n], rtol=1e-4, atol=1e-6), (t, n)
    assert max(float(v.max()) for v in s.importance.values()) <= 2.0 + 1e-6
    assert any(float(v.max()) > 0 for v in score.values())


# ----- PNN ------------------------------------------------------------------------------------------------
def test_pnn_never_changes_an_old_column_and_old_answers_stay_identical():
    r = make("pnn", *TIL, "train.optimizer=sgd", "train.momentum=0.9", "train.weight_decay=0.01")
    s, exps = r.strategy, r.stream.experiences
    x0 = exps[0].train.get(torch.arange(50)).x
    s.train(exps[0])
    col0, out0 = params_of(s.model.columns[0]), s.predict(x0, 0)
    s.train(exps[1])
    s.train(exps[2])
    assert len(s.model.columns) == 3
    assert all(torch.equal(p, col0[n]) for n, p in s.model.columns[0].named_parameters())
    assert torch.equal(s.predict(x0, 0), out0)
    # the newest column has lateral adapters fed by the old columns: changing an old column changes its output
    assert len(s.model.columns[2].adapters) == 2
    out2 = s.predict(x0, 2)
    with torch.no_grad():
        s.model.columns[0].layers[0].weight.mul_(1.5)
    assert not torch.allclose(s.predict(x0, 2), out2)
    # the optimizer holds only the newest column
    newest = {id(p) for p in s.model.columns[-1].parameters()}
    assert {id(p) for g in s.optimizer.param_groups for p in g["params"]} == newest


def test_pnn_without_laterals_is_independent_columns_and_needs_task_ids():
    from clbench.errors import ConfigError
    r = make("pnn", *TIL, "strategy.lateral=false")
    s = r.strategy
    s.train(r.stream.experiences[0])
    s.train(r.stream.experiences[1])
    assert all(len(c.adapters) == 0 for c in s.model.columns)
    with pytest.raises(ConfigError, match="task-il"):
        make("pnn")                                   # class-IL split-digits is refused


# ----- PackNet --------------------------------------------------------------------------------------------
def test_packnet_masks_are_disjoint_and_old_tasks_never_change():
    r = make("packnet", *TIL, "train.momentum=0.9", "train.weight_decay=0.001", "train.reset_optimizer=false")
    s, exps = r.strategy, r.stream.experiences
    x0 = exps[0].train.get(torch.arange(50)).x
    s.train(exps[0])
    kept0 = {n: m.clone() for n, m in s.task_mask(1).items()}
    weights0 = params_of(s.model)
    out0 = s.predict(x0, 0)
    # task 1 keeps 1/5 of the shared weights (equal share of 5 tasks); the pruned ones are zero and free
    total = sum(m.numel() for m in kept0.values())
    assert abs(sum(int(m.sum()) for m in kept0.values()) / total - 0.2) < 0.01
    assert all(float(s.shared[n].detach()[s.owner[n] == 0].abs().max()) == 0.0 for n in s.shared)
    for e in exps[1:4]:
        s.train(e)
    masks = [s.task_mask(j) for j in range(1, 5)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not any(bool((masks[a][n] & masks[b][n]).any()) for n in s.shared)    # disjoint
        assert sum(int(m.sum()) for m in masks[a].values()) > 0
    # task 1's weights, the shared biases and task 1's head rows are bit-identical; so is its answer
    for n, p in s.model.named_parameters():
        if n in s.shared:
            assert torch.equal(p[kept0[n]], weights0[n][kept0[n]]), n
        elif "classifier" in n:
            assert torch.equal(p[s.task_classes[0]], weights0[n][s.task_classes[0]]), n
        else:
            assert torch.equal(p, weights0[n]), n
    assert torch.equal(s.predict(x0, 0), out0)
    assert s.predict(x0, 0).argmax(1).eq(exps[0].train.get(torch.arange(50)).y).float().mean() > 0.9


def test_packnet_prunes_once_per_task_and_resumes_the_pruned_phase():
    r = make("packnet", *TIL, "strategy.prune=0.5", "strategy.post_prune_epochs=2")
    s = r.strategy
    s.train(r.stream.experiences[0])
    assert s.pruned and s.loop is None
    kept = sum(int(m.sum()) for m in s.task_mask(1).values())
    total = sum(o.numel() for o in s.owner.values())
    assert abs(kept / total - 0.5) < 0.01
    with pytest.raises(Exception, match="prune"):
        make("packnet", *TIL, "strategy.prune=[0.5,0.5]")


# ----- FDR ------------------------------------------------------------------------------------------------
def test_fdr_memory_is_an_equal_share_per_task_with_the_logits_at_its_end():
    r = make("fdr", "strategy.buffer_size=90")
    s, exps = r.strategy, r.stream.experiences
    recorded = []
    for t, e in enumerate(exps[:3]):
        s.train(e)
        mem = s.memory.contents()
        share = 90 // (t + 1)
        counts = torch.bincount(mem["experience"], minlength=t + 1).tolist()
        assert counts == [share] * (t + 1), counts
        # this task's logits are the model's outputs at the end of the task ...
        mine = mem["experience"] == t
        with torch.no_grad():
            assert torch.allclose(mem["logits"][mine], s.model(mem["x"][mine]), atol=1e-6)
        recorded.append((mem["x"][mine].clone(), mem["logits"][mine].clone()))
        # ... and an earlier task keeps the first `share` of its own samples with their original logits
        for k in range(t):
            x_k, z_k = recorded[k]
            assert torch.equal(mem["x"][mem["experience"] == k], x_k[:share])
            assert torch.equal(mem["logits"][mem["experience"] == k], z_k[:share])


def test_fdr_second_step_descends_the_function_distance():
    from clbench.strategies.fdr import function_distance
    r = make("fdr", "strategy.buffer_size=60", "strategy.mem_batch_size=60")
    s, exps = r.strategy, r.stream.experiences
    s.train(exps[0])
    b = batches(exps[1], 1)[0]
    s.begin_experience(exps[1])
    mem = s.memory.contents()
    d0 = float(function_distance(s.model(mem["x"]), mem["logits"]))
    s.optimizer.zero_grad()
    F.cross_entropy(s.model(b.x), b.y).backward()
    s.optimizer.step()
    d1 = float(function_distance(s.model(mem["x"]), mem["logits"]))
    s.after_step(b)                                  # the FDR step, on the whole (60-sample) memory
    d2 = float(function_distance(s.model(mem["x"]), mem["logits"]))
    assert d0 < 1e-6 < d1 and d2 < d1


# ----- HAL ------------------------------------------------------------------------------------------------
def test_hal_step_is_one_sgd_step_on_ce_plus_the_anchor_loss_after_a_virtual_step():
    r = make("hal", "strategy.buffer_size=50", "strategy.anchor_steps=5")
    s, exps = r.strategy, r.stream.experiences
    s.train(exps[0])
    assert len(s.anchors) == 2 and s.phi is None            # one anchor per class of the task; phi restarts
    s.begin_experience(exps[1])
    b = batches(exps[1], 1)[0]
    lr, lam = float(s.train_cfg["lr"]), float(s.hp.hal_lambda)
    # reference: the same memory sample (same generator state), by hand
    gen = s.generator.get_state()
    mem = s.buffer.sample(s.mem_batch)
    s.generator.set_state(gen)
    x, y = torch.cat([b.x, mem["x"]]), torch.cat([b.y, mem["y"]])
    model = copy.deepcopy(s.model)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g_ce = {n: p.grad.clone() for n, p in model.named_parameters()}
    virtual = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in virtual.named_parameters():
            p -= lr * g_ce[n]
        target = virtual(s.anchors)
    model.zero_grad()
    (lam * ((target - model(s.anchors)) ** 2).mean()).backward()
    expected = {n: p.detach() - lr * (g_ce[n] + p.grad) for n, p in model.named_parameters()}
    s.step(b)
    for n, p in s.model.named_parameters():
        assert torch.allclose(p.detach(), expected[n], atol=1e-6), n
    assert s.phi is not None and s.phi.shape == (100,)


def test_hal_anchor_is_forgotten_by_the_finetuned_model_and_kept_by_the_current_one():
    r = make("hal", "strategy.buffer_size=50", "strategy.anchor_steps=50", "strategy.gamma=0.0")
    s, exps = r.strategy, r.stream.experiences
    s.train(exps[0])
    s.train(exps[1])
    spare = s.finetuned_copy()
    e, c = s.anchors[-1:], sorted(exps[1].classes)[-1]
    y = torch.tensor([c])
    with torch.no_grad():
        gap_anchor = float(F.cross_entropy(spare(e), y) - F.cross_entropy(s.model(e), y))
        rand = torch.rand(20, *s.info.input_shape, generator=torch.Generator().manual_seed(3)) * 16
        gap_rand = float((F.cross_entropy(spare(rand), y.expand(20), reduction="none")
                          - F.cross_entropy(s.model(rand), y.expand(20), reduction="none")).mean())
    assert gap_anchor > gap_rand        # the anchor objective maximised CE(theta_m) - CE(theta)


def test_hal_anchors_optimised_together_equal_anchors_optimised_one_at_a_time():
    r = make("hal", "strategy.buffer_size=50", "strategy.anchor_steps=20")
    s, exps = r.strategy, r.stream.experiences
    s.train(exps[0])
    spare, phi = s.finetuned_copy(), torch.randn(100)
    classes = sorted(exps[0].classes)
    state = s.generator.get_state()
    together = s.anchors_for(classes, spare, phi)
    s.generator.set_state(state)
    alone = torch.cat([s.anchors_for([c], spare, phi) for c in classes])
    assert together.shape[0] == len(classes) and torch.allclose(together, alone, atol=1e-5)


# ----- presets ------------------------------------------------------------------------------------------
PRESET_STRATEGIES = ["gem", "mas", "fdr", "hal", "pnn", "naive", "joint", "ewc", "si", "lwf"]


@pytest.mark.parametrize("name", PRESET_STRATEGIES)
def test_every_shipped_preset_composes_and_lands(name):
    """Each preset (and each buffer size of it) names a real benchmark and declared keys, and its values are the
    resolved config's: a typo in a key, a value out of range or an unknown benchmark fails here."""
    from clbench.config import benchmark_names, load_presets, select_preset
    presets, origin = load_presets(name)
    assert presets, f"{name} ships no presets"
    for bench, preset in presets.items():
        assert bench in benchmark_names(), f"{origin}: unknown benchmark {bench!r}"
        for size in [None, *(preset.get("by_buffer_size") or {})]:
            args = [f"strategy={name}", f"benchmark={bench}"] + ([f"strategy.buffer_size={size}"] if size else [])
            if name == "pnn":
                args.append("scenario.name=task_incremental")
            cfg = compose(args)
            want, label = select_preset(presets, bench, cfg["strategy"].get("buffer_size"))
            for section, values in want.items():
                for key, value in values.items():
                    assert cfg[section][key] == value, (label, section, key)
            assert cfg["config_source"]["presets"][0]["preset"] == label


def test_mas_preset_keeps_split_digits_stable_where_the_papers_lambda_diverges(tmp_path):
    from clbench.errors import TrainingDiverged
    args = ["strategy=mas", "benchmark=split-digits", "dataset.train_per_class=60", "wandb.mode=disabled",
            "progress=false", "device=cpu"]
    with pytest.raises(TrainingDiverged):
        run([*args, "strategy.mas_lambda=1.0", f"out={tmp_path / 'paper'}"], console=False)
    res, _ = run([*args, f"out={tmp_path / 'preset'}"], console=False)
    assert res["config"]["strategy"]["mas_lambda"] == 0.1 and res["metrics"]["acc"] > 0


# ----- resume: a run killed mid-experience resumes to the uninterrupted result ------------------------------
CASES = [("gem", ["strategy.buffer_size=100"]), ("mas", []), ("rwalk", ["strategy.update_every=4"]),
         ("fdr", ["strategy.buffer_size=60"]), ("hal", ["strategy.buffer_size=50", "strategy.anchor_steps=5"]),
         ("pnn", TIL), ("packnet", [*TIL, "strategy.post_prune_epochs=1"])]


@pytest.mark.parametrize("name,extra", CASES, ids=[c[0] for c in CASES])
def test_a_killed_run_resumes_bit_identically(tmp_path, name, extra):
    base = STRATEGIES.get(name)

    class Crash(base):
        at = 10**9

        def loss(self, batch):
            if self.global_step == Crash.at:
                raise RuntimeError("killed")
            return super().loss(batch)

        def extra_state(self):        # a fingerprint of the final weights, in result.json
            return {**super().extra_state(),
                    "weights": [float(p.detach().double().abs().sum()) for p in self.model.parameters()]}

    STRATEGIES.register(f"crash_{name}", Crash)
    try:
        common = ["train.epochs=1", "progress=false", "wandb.mode=disabled", "device=cpu", "checkpoint.every_steps=7",
                  *extra]
        ref, _ = run([f"strategy=crash_{name}", f"out={tmp_path / 'ref'}", *common], console=False)
        Crash.at = 30                      # inside experience 1 (18 steps per experience; checkpoint at step 28)
        with pytest.raises(RuntimeError, match="killed"):
            run([f"strategy=crash_{name}", f"out={tmp_path / 'cut'}", *common], console=False)
        Crash.at = 10**9
        res, folder = run([f"strategy=crash_{name}", f"out={tmp_path / 'cut'}", *common], console=False)
    finally:
        STRATEGIES.unregister(f"crash_{name}")
    assert res["timing"]["segments"] == 2
    assert res["accuracy_matrix"] == ref["accuracy_matrix"]
    assert res["task_masked_accuracy_matrix"] == ref["task_masked_accuracy_matrix"]
    assert json.dumps(res["strategy_state"], sort_keys=True) == json.dumps(ref["strategy_state"], sort_keys=True)
