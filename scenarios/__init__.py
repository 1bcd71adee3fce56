"""Built-in scenarios, one file each, registered through the `clbench.scenarios` entry points.

A scenario is constructed from the benchmark's `scenario` options and turns a TensorDataset into a
Stream: `Scenario(**options).build(dataset, seed) -> Stream`.
"""
