"""Few-shot continual learning: a sequence of N-way K-shot sessions, each learned from its support set only.

The setting of Wang, Li, Zhong, Zhu (2021), "Few-shot Continual Learning: a Brain-inspired Approach",
arXiv:2104.09034 (abstract): a sequence of tasks, each learned from a few examples; the goals are not to
forget earlier tasks and to generalise better to new tasks from few shots as tasks accumulate. The paper's
exact protocol could not be read; this is the harness's definition:

- session t draws `n_way` distinct classes from all classes (with replacement across sessions: MNIST has 10
  classes, so sessions share classes), `k_shot` training images per class (its support set, the only training
  data of the experience) and `n_query` test images per class (its query set, the evaluation task t);
- support and query images are fresh: no image appears in two sessions;
- task-incremental: the task id is given at test time, so a session's answer is among its own classes (the
  logits are masked to them, one head per session over the shared classifier; labels stay the digit labels).

Every draw comes from the stream seed, with separate streams for classes, support and query images, so the
sessions do not depend on the size of the test (or validation) pool. Metrics: ACC over sessions = retention;
the learning accuracy (each session's query accuracy right after its K shots) and its trend over sessions =
few-shot generalisation; FWT = accuracy on a session before training on it.
"""
from __future__ import annotations

import torch

from clbench.errors import bad_value
from clbench.hparams import HP
from clbench.scenarios.common import check_positive_int, check_stream, generator
from clbench.stream import EvalTask, Experience, Stream, TensorSplit


def fresh_indices(y: torch.Tensor, seed: int, tag: str) -> dict[int, list[int]]:
    """Each class's sample positions in a random order of the stream seed; sessions take from the front."""
    out = {}
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().squeeze(1)
        out[int(c)] = idx[torch.randperm(len(idx), generator=generator(seed, "few_shot", tag, int(c)))].tolist()
    return out


class FewShot:
    """Few-shot sessions: n_way classes x k_shot training images each, n_query test images per class."""

    hparams = {
        "n_experiences": HP(20, "sessions", low=1),
        "n_way": HP(5, "classes drawn per session (at most the dataset's)", low=2),
        "k_shot": HP(5, "fresh training images per class of a session (its support set)", low=1),
        "n_query": HP(15, "fresh test images per class of a session (its query set)", low=1),
    }

    setting = "task-il"

    def __init__(self, n_experiences: int = 20, n_way: int = 5, k_shot: int = 5, n_query: int = 15):
        self.n_experiences = check_positive_int(n_experiences, "n_experiences")
        self.n_way = check_positive_int(n_way, "n_way", minimum=2)
        self.k_shot = check_positive_int(k_shot, "k_shot")
        self.n_query = check_positive_int(n_query, "n_query")

    def build(self, dataset, seed: int) -> Stream:
        if self.n_way > dataset.n_classes:
            raise bad_value("scenario.n_way", f"{self.n_way} classes per session but the dataset has "
                                              f"{dataset.n_classes}")
        g = generator(seed, "few_shot", "classes")
        support = fresh_indices(dataset.y_train.cpu(), seed, "support")
        query = fresh_indices(dataset.y_test.cpu(), seed, "query")
        experiences, eval_tasks, sessions = [], [], []
        for t in range(self.n_experiences):
            classes = sorted(torch.randperm(dataset.n_classes, generator=g)[:self.n_way].tolist())
            tr, te = [], []
            for c in classes:
                if len(support[c]) < self.k_shot or len(query[c]) < self.n_query:
                    raise bad_value("scenario.n_experiences", f"class {c} runs out of fresh images at session {t} "
                                                              f"({self.k_shot} training and {self.n_query} test images "
                                                              f"per session; fewer sessions, shots or queries)")
                tr += support[c][:self.k_shot]
                te += query[c][:self.n_query]
                del support[c][:self.k_shot], query[c][:self.n_query]
            tr_idx = torch.tensor(tr, dtype=torch.long, device=dataset.y_train.device)
            te_idx = torch.tensor(te, dtype=torch.long, device=dataset.y_test.device)
            experiences.append(Experience(index=t, train=TensorSplit(dataset.x_train, dataset.y_train, tr_idx, task=t),
                                          task_ids=[t], classes=classes, task_visible_at_test=True))
            eval_tasks.append(EvalTask(task_id=t, test=TensorSplit(dataset.x_test, dataset.y_test, te_idx, task=t),
                                       classes=classes))
            sessions.append(classes)
        return check_stream(Stream(
            name=type(self).__name__, experiences=experiences, eval_tasks=eval_tasks, n_classes=dataset.n_classes,
            input_shape=tuple(dataset.input_shape), setting=self.setting,
            description={"stream_seed": int(seed), "dataset": dataset.describe(), "n_way": self.n_way,
                         "k_shot": self.k_shot, "n_query": self.n_query, "session_classes": sessions}))
