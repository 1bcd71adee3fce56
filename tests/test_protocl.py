"""ProtoCL: the class posteriors are the conjugate Gaussian update of the embeddings, prediction is the
posterior's log-joint without any update, and the coreset keeps an equal share per experience."""
import math

import torch

from clbench.config import compose
from clbench.engine import prepare

torch.set_num_threads(1)
TINY = ["benchmark=split-digits", "dataset.train_per_class=30", "dataset.test_per_class=10", "device=cpu",
        "wandb.mode=disabled", "progress=false", "strategy=protocl"]


def test_posterior_is_the_conjugate_update_and_prediction_is_its_log_joint():
    r = prepare(compose([*TINY, "strategy.sigma_eps=0.1"]))
    s = r.strategy
    post = s.posterior
    q0, lam0, a0 = post.q.clone(), post.lam.clone(), post.alpha.clone()
    s.begin_experience(r.stream.experiences[0].sealed())
    data = s.experience.train
    phis, ys = [], []
    for pos in (torch.arange(0, 16), torch.arange(16, 40)):
        b = data.get(pos)
        with torch.no_grad():
            phis.append(s.model(b.x))
        ys.append(b.y)
        s.loss(b)                                  # scores with the prior so far, then absorbs the batch
    phi, y = torch.cat(phis), torch.cat(ys)
    for k in (0, 1):
        sel = y == k
        n = int(sel.sum())
        assert torch.allclose(post.q[k], q0[k] + phi[sel].sum(0) / 0.1, rtol=1e-5, atol=1e-4)
        assert math.isclose(float(post.lam[k]), float(lam0[k]) + n / 0.1, rel_tol=1e-6)
        assert math.isclose(float(post.alpha[k]), float(a0[k]) + n, rel_tol=1e-6)
        # with many samples the posterior mean is the running mean of the class's embeddings
        mean = post.q[k] / post.lam[k]
        assert torch.allclose(mean, (q0[k] + phi[sel].sum(0) / 0.1) / (lam0[k] + n / 0.1), atol=1e-5)
    untouched = [c for c in range(10) if c not in (0, 1)]
    assert torch.equal(post.q[untouched], q0[untouched]) and torch.equal(post.alpha[untouched], a0[untouched])

    # prediction: log N(phi; q/lam, (1/lam + sigma) I) + log alpha_k / sum alpha, with no update
    before = [t.clone() for t in (post.q, post.lam, post.alpha)]
    x = data.get(torch.arange(5)).x
    s.model.eval()
    got = s.predict(x)
    with torch.no_grad():
        f = s.model(x)
    var = 1 / post.lam + 0.1
    mu = post.q / post.lam[:, None]
    d = f.shape[1]
    want = torch.stack([-0.5 * (((f - mu[k]) ** 2).sum(1) / var[k] + d * var[k].log() + d * math.log(2 * math.pi))
                        + (post.alpha[k] / post.alpha.sum()).log() for k in range(10)], 1)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-3)
    s.predict(x)
    assert all(torch.equal(a, b) for a, b in zip(before, (post.q, post.lam, post.alpha)))   # no test-time update


def test_coreset_keeps_an_equal_share_per_experience_and_is_oversampled():
    r = prepare(compose([*TINY, "strategy.memory_size=30", "train.epochs=1"]))
    s, exps = r.strategy, r.stream.experiences
    s.train(exps[0].sealed())
    assert len(s.memory["0"]["y"]) == 30                     # 60 samples, share 30 // 1
    first = s.memory["0"]["x"].clone()
    s.train(exps[1].sealed())
    assert [len(m["y"]) for m in s.memory.values()] == [15, 15]
    assert torch.equal(s.memory["0"]["x"], first[:15])       # older shares are cut, not redrawn
    assert set(s.memory["1"]["y"].tolist()) <= {2, 3}
    data = s.training_data(exps[2].sealed())
    # 60 new samples + the 30 stored ones repeated 60 // 30 = 2 times (old:new about 1:1)
    assert len(data) == 60 + 2 * 30
    assert torch.bincount(data.y, minlength=10)[:4].sum() == 60
