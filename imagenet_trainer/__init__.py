"""Helpers shared by preprocess.py, train.py, validate.py and benchmarks/: config parsing, run records, the ILSVRC
tree reader, the demo tree, the input pipeline and top-k metrics. The scripts themselves hold the recipes."""
