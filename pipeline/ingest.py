"""Ingest a dataset into sharded TFRecords with train/validation/test splits.

    python -m pipeline.ingest --dataset digits --output-dir data/digits

The stage itself is `pipeline.data.ingest`.
"""

if __name__ == "__main__":
    from pipeline import cli

    cli.launch("ingest")
