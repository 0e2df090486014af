"""A TFX-style pipeline for AlexNet: ingest, transform, train, evaluate, export.

    python -m pipeline.run --strategy mirrored
"""
