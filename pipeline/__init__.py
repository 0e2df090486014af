"""A TFX-style pipeline for AlexNet: ingest, transform, train, evaluate, export.

    python -m pipeline.run --strategy mirrored
"""

import os

# Both must be set before TensorFlow is imported. oneDNN is off by default on
# this project's AMD CPUs and turning it on made training ~20% faster there;
# level 2 hides TensorFlow's start-up chatter about missing CUDA drivers.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
