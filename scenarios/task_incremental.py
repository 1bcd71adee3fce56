"""Task-incremental split: the same disjoint class groups as class-incremental, but the task id is
visible at training and at test time, so a model answers only among its task's classes.

Multi-head: the Strategy base class masks the logits to the task's classes (one head per task over a
shared trunk), and the evaluator passes the task id to `predict` because the setting is "task-il".
"""
from __future__ import annotations

from clbench.scenarios.class_incremental import ClassIncremental


class TaskIncremental(ClassIncremental):
    """Task-incremental: disjoint class groups per experience, task id visible at train and test time."""

    setting = "task-il"
    task_visible_at_test = True
