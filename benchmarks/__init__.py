"""Benchmarks of the pipeline and the model, run on the machine they report about.

Each is a command, `python -m benchmarks.<name>`, whose `main` sets the process
up (`common.prepare_process()`) before it imports TensorFlow; importing a
benchmark sets nothing.
"""
