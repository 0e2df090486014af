"""A TFX-style pipeline for AlexNet: data -> training -> evaluation -> serving.

    python -m pipeline.run --strategy mirrored

Each stage is a subpackage with one entry point (`data.ingest.ingest`,
`training.loop.train`, `tuning.tuner.tuned_config`, `evaluation.metrics.evaluate`,
`serving.blessing.bless`, `serving.pusher.push`); `runner` wires them. Imports
run one way, from the data stage to serving; every stage may use `config`,
`errors`, `storage` and `plots`, and only `cli` imports the entry points.
"""
