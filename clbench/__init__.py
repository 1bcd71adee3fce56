"""clbench: a continual-learning benchmark harness."""
__version__ = "0.1.0"
