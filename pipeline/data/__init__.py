"""The data stage: sources -> ingest (sharded TFRecords, an `IngestedDataset`)
-> the tf.data input pipeline.

    sources          what --dataset names: digits, tfds:, folder:, tfrecord:
    image_formats    the formats read, and image sizes from headers
    ingest           ExampleGen: checked images as versioned TFRecord shards
    ingested_dataset the artifact ingest hands on: splits, classes, fingerprint
    preprocess_ops   decode, crop, resize, flip, PCA noise: one image's ops
    input_pipeline   the tf.data pipelines of training and evaluation
    service          the training pipeline on tf.data service workers
"""
