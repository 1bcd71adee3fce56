"""Built-in strategies, one file each, registered through the `clbench.strategies` entry points."""
