"""New-instances (NI) domain-incremental stream: the training set is split into disjoint chunks that each
hold every class; each experience brings new instances of the same classes (Lomonaco & Maltoni 2017,
CORe50 "NI"). One shared label space; the task id is hidden at test.

There is one evaluation task, the whole test set (as in the NI protocol), so the accuracy matrix has a
single column: row i is the test accuracy after experience i.
"""
from __future__ import annotations

import torch

from clbench.hparams import HP
from clbench.scenarios.common import check_positive_int, check_stream, generator
from clbench.stream import EvalTask, Experience, Stream, TensorSplit


def instance_chunks(y: torch.Tensor, n: int, seed: int, stratified: bool) -> list[torch.Tensor]:
    """n disjoint index sets covering y; stratified: every class split as evenly as possible over them."""
    g = generator(seed, "new_instances")
    if not stratified:
        return [c.sort().values for c in torch.randperm(len(y), generator=g).tensor_split(n)]
    chunks = [[] for _ in range(n)]
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().squeeze(1)
        for k, part in enumerate(idx[torch.randperm(len(idx), generator=g)].tensor_split(n)):
            chunks[k].append(part)
    return [torch.cat(parts).sort().values for parts in chunks]


class NewInstances:
    """Domain-incremental new instances: disjoint chunks of the training set, every class in each."""

    hparams = {
        "n_experiences": HP(5, "disjoint chunks of the training set", low=1),
        "stratified": HP(True, "split every class evenly over the chunks (false: a random split)"),
    }

    setting = "domain-il"

    def __init__(self, n_experiences: int = 5, stratified: bool = True):
        self.n_experiences = check_positive_int(n_experiences, "n_experiences")
        self.stratified = bool(stratified)

    def build(self, dataset, seed: int) -> Stream:
        y_cpu = dataset.y_train.cpu()
        classes = sorted(torch.unique(y_cpu).tolist())
        experiences = []
        for i, idx in enumerate(instance_chunks(y_cpu, self.n_experiences, seed, self.stratified)):
            split = TensorSplit(dataset.x_train, dataset.y_train, idx.to(dataset.y_train.device), task=i)
            experiences.append(Experience(index=i, train=split, task_ids=[i], classes=split.classes(),
                                          task_visible_at_test=False))
        test = EvalTask(task_id=0, test=TensorSplit(dataset.x_test, dataset.y_test, task=0), classes=classes)
        return check_stream(Stream(
            name="new_instances", experiences=experiences, eval_tasks=[test], n_classes=dataset.n_classes,
            input_shape=tuple(dataset.input_shape), setting=self.setting, learned_at=[0],
            description={"stream_seed": int(seed), "dataset": dataset.describe(), "stratified": self.stratified}))
