"""Benchmarks of the pipeline and the model, run on the machine they report about."""

# The pipeline's TensorFlow settings (oneDNN on, quiet start-up) must be in
# place before anything here imports TensorFlow, so that the figures are those
# of a real run.
import pipeline  # noqa: F401
