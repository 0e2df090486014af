"""Transform: the tf.data input pipeline from ingested shards to model-ready batches.

    batches = make_dataset(ingested, "train", data_config, 64, training=True)

It reads shards in parallel, shards them per input pipeline, optionally caches
decoded images, shuffles, augments (training) or preprocesses for evaluation
with the ops of `pipeline.data.preprocess_ops`, batches and prefetches.
"""

import glob

import numpy as np
import tensorflow as tf

from pipeline.data import service as data_service
from pipeline.data import ingested_dataset
from pipeline.data import preprocess_ops
from pipeline.config import DataConfig
from pipeline.errors import ConfigError
from pipeline.errors import PipelineError

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 10_000
# Shard files read at once.
_READ_CYCLE = 8


def epoch_seed(seed, epoch):
    """The seed of epoch `epoch`'s order and augmentation in a run seeded with
    `seed` (None stays None): a function of the two alone, so that a run
    resumed at epoch k draws what the uninterrupted run drew there."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _parse(record):
    image_bytes, label = ingested_dataset.parse_record(record)
    return image_bytes, tf.cast(label, tf.int32)


def _records(files, training, seed, input_context):
    """Serialized examples of `files`, read in parallel, sharded per input pipeline."""
    pipelines = input_context.num_input_pipelines if input_context else 1
    if pipelines > len(files):
        # Too few files to give each pipeline its own: every pipeline reads them
        # all, in the same order, and keeps every n-th record.
        dataset = tf.data.TFRecordDataset(files)
        return dataset.shard(pipelines, input_context.input_pipeline_id)
    if pipelines > 1:
        files = files[input_context.input_pipeline_id::pipelines]
    if training:
        # Permuted here, not by a tf.data shuffle: a shuffle ahead of the files
        # would pull every file into the first tf.data service worker to ask
        # (measured: one worker of two read all), where dynamic sharding
        # should deal them out.
        files = [files[index] for index in np.random.default_rng(seed).permutation(len(files))]
    # A fixed cycle, not AUTOTUNE's (which follows the machine's cores): the
    # record order, and so where a resumed epoch's skip lands, is the same on
    # any machine.
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), _READ_CYCLE),
        num_parallel_calls=AUTOTUNE,
    )


def _cache_path(data_config, split, channels, ingested, training, input_context):
    """One cache file per everything that changes what is cached: the split, the
    channel count, the ingest's content, the mode and the input pipeline,
    counted among how many (pipeline 0 of 2 holds half of what a single
    pipeline holds). A cache made for other data must never be read back."""
    pipeline = input_context.input_pipeline_id if input_context else 0
    pipelines = input_context.num_input_pipelines if input_context else 1
    mode = "train" if training else "eval"
    return (
        f"{data_config.cache}-{split}-{mode}-{channels}ch-"
        f"{ingested.fingerprint[:12]}-{pipeline}of{pipelines}"
    )


def _check_cache_unlocked(path, flag_value):
    """A cache file that a run was killed while writing stays locked, and
    TensorFlow would fail mid-training; say so before anything starts."""
    lockfiles = sorted(tf.io.gfile.glob(glob.escape(path) + "_*.lockfile"))
    if lockfiles:
        lockfile = lockfiles[0]
        raise PipelineError(
            f"cache={flag_value}: {lockfile} exists, so another run is writing this "
            "cache or a run was killed while writing it; if no other run uses it, "
            "delete that file and run again (the cache is rebuilt)"
        )


def _read(ingested, split, channels, training, data_config, seed, input_context):
    """(encoded image, label) pairs of one pipeline's shard of `split`, or
    (decoded image, label) pairs when `data_config.cache` keeps them."""
    # A cache keeps the order it was written in: its files are read in their
    # own order, so that what a cache holds never depends on which epoch (and
    # so which seed) wrote it. The shuffle after it still mixes every epoch.
    shuffle_files = training and not data_config.cache
    dataset = _records(ingested.files(split), shuffle_files, seed, input_context).map(
        _parse, num_parallel_calls=AUTOTUNE
    )
    if not data_config.cache:
        return dataset
    dataset = dataset.map(
        lambda image_bytes, label: (preprocess_ops.decode_image(image_bytes, channels), label),
        num_parallel_calls=AUTOTUNE,
    )
    path = ""
    if data_config.cache != "memory":
        path = _cache_path(data_config, split, channels, ingested, training, input_context)
        _check_cache_unlocked(path, data_config.cache)
    return dataset.cache(path)


def _augmented(dataset, ingested, split, image_spec, data_config, seed, input_context,
               repeat=False, skip=0):
    """The training map: shuffled, a random crop resized to the model's input,
    a flip where the classes allow it, PCA noise if asked, normalised.

    With `repeat` the shuffled examples cycle for good; `skip` drops the first
    examples of the stream before anything is decoded (a resumed run's
    place in its epoch): what follows is what an unskipped stream gives after
    them, augmentation seeds included.
    """
    channels, image_size = image_spec.channels, image_spec.image_size

    def crop(image, crop_seed):
        if data_config.cache:
            return preprocess_ops.random_crop(image, crop_seed)
        # Not decoded yet: a JPEG decodes only its crop.
        return preprocess_ops.decode_random_crop(image, channels, crop_seed)

    def augment(example, seed_pair):
        image, label = example
        crop_seed, flip_seed, noise_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed_pair, 3)
        )
        image = tf.image.resize(crop(image, crop_seed), image_size)
        image = tf.ensure_shape(image, [*image_size, channels])
        if ingested.flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if data_config.pca_noise:
            image = preprocess_ops.pca_noise(image, noise_seed)
        return image_spec.normalize(image), label

    dataset = dataset.shuffle(min(ingested.num_examples(split), SHUFFLE_BUFFER), seed=seed)
    if repeat:
        dataset = dataset.repeat()
    # Stateless augmentation with per-example seeds from a seeded stream: the
    # same crops and flips on every run with `seed`, new ones every epoch,
    # and other ones in every input pipeline.
    augment_seed = seed
    if seed is not None and input_context:
        augment_seed += input_context.input_pipeline_id
    seeds = tf.data.Dataset.random(augment_seed, rerandomize_each_iteration=True).batch(2)
    # Skipped before the map: the skipped examples are read, not decoded.
    return tf.data.Dataset.zip(dataset, seeds).skip(skip).map(
        augment, num_parallel_calls=AUTOTUNE)


def _preprocessed_for_eval(dataset, image_spec, data_config, ten_crop=False):
    """The evaluation map: `preprocess_for_eval`, as serving preprocesses, or
    with `ten_crop` the paper's ten patches per image (`ten_crops`)."""
    crop = preprocess_ops.ten_crops if ten_crop else preprocess_ops.preprocess_for_eval

    def preprocess(image, label):
        if not data_config.cache:
            image = preprocess_ops.decode_image(image, image_spec.channels)
        return crop(image, image_spec), label

    return dataset.map(preprocess, num_parallel_calls=AUTOTUNE)


def make_dataset(
    ingested, split, image_spec, batch_size, training, *, data_config=DataConfig(),
    seed=None, input_context=None, ten_crop=False, repeat=False, skip=0,
):
    """Batches of (images float32 [batch, height, width, channels], labels int32).

    Args:
        ingested: the `IngestedDataset` to read.
        split: "train", "validation" or "test".
        image_spec: the model's `alexnet_keras.ImageSpec`: the size, channels
            and pixel scale the batches are made for.
        batch_size: the per-replica batch.
        training: shuffle, augment and drop the last partial batch (static
            shapes); otherwise `preprocess_for_eval` and every example kept.
        data_config: its `cache` and `pca_noise` apply.
        seed: makes the order and the augmentation reproducible.
        input_context: a `tf.distribute.InputContext`; this pipeline then reads
            its own shard of the data.
        ten_crop: for evaluation: each image as the paper's ten patches,
            images float32 [batch, 10, height, width, channels].
        repeat: for training: cycle through the split for good (batches then
            run across the end of a pass).
        skip: for training: leave out the first `skip` examples without
            decoding them, where a run resumed inside an epoch starts.

    One pass over the split, unless `repeat`. The order is deterministic only
    when `seed` is set and no data service mixes it.
    """
    if split not in ingested.splits:
        raise PipelineError(
            f"{ingested.directory} has no split {split!r}; "
            f"it has {', '.join(ingested.splits)}"
        )
    num_examples = ingested.num_examples(split)
    pipelines = input_context.num_input_pipelines if input_context else 1
    if num_examples == 0 or (training and num_examples // pipelines < batch_size):
        raise PipelineError(
            f"the {split} split of {ingested.directory} has {num_examples} examples, too few "
            f"for a batch of {batch_size} per replica; lower `batch_size` or add data"
        )
    if ten_crop and training:
        raise ValueError("`ten_crop` is an evaluation pipeline: use it with training=False")
    if data_config.pca_noise and image_spec.channels != 3:
        raise PipelineError("`pca_noise` needs colour input: use channels=3")
    dataset = _read(ingested, split, image_spec.channels, training, data_config, seed,
                    input_context)
    if training:
        dataset = _augmented(dataset, ingested, split, image_spec, data_config, seed,
                             input_context, repeat, skip)
        if data_config.data_service:
            dataset = data_service.distribute(dataset, data_config.data_service)
    else:
        dataset = _preprocessed_for_eval(dataset, image_spec, data_config, ten_crop)
    dataset = dataset.batch(
        batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE
    )
    options = tf.data.Options()
    # Out-of-order reads and maps are faster; a seeded run gives up that speed
    # for a reproducible order.
    options.deterministic = seed is not None
    return dataset.with_options(options).prefetch(AUTOTUNE)


def distribute_dataset(
    strategy, ingested, split, image_spec, global_batch_size, training, *,
    data_config=DataConfig(), seed=None, repeat=False, skip_steps=0,
):
    """`make_dataset` for every input pipeline of `strategy`, each replica getting
    `global_batch_size / num_replicas` examples per step, prefetched to its device.

    With `repeat`, every pipeline cycles through its shard forever, so that all
    workers can run the same number of steps whatever the size of their shards.
    `skip_steps` starts after that many global batches (a resumed run's place
    in its epoch), without decoding them.
    """
    check_batch_split(global_batch_size, strategy.num_replicas_in_sync)

    def dataset_fn(input_context):
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        if not training:
            batches = make_dataset(ingested, split, image_spec, batch_size, training,
                                   data_config=data_config, input_context=input_context)
            return batches.repeat() if repeat else batches
        # A pipeline feeds each of its replicas one batch per step.
        skip = skip_steps * (global_batch_size // input_context.num_input_pipelines)
        repeats = repeat
        if data_config.data_service:
            # The service's workers each read their own files: a skip inside
            # would drop from every worker's stream, so the resumed epoch reads
            # a fresh pass instead. One trainer needs no more than one pass
            # (the epoch's steps are full batches of it): without a repeat, a
            # job's pass is each example once, as a repeat could not keep it.
            skip = 0
            repeats = repeat and input_context.num_input_pipelines > 1
        return make_dataset(
            ingested, split, image_spec, batch_size, training, data_config=data_config,
            seed=seed, input_context=input_context, repeat=repeats, skip=skip,
        )

    return strategy.distribute_datasets_from_function(
        dataset_fn, tf.distribute.InputOptions(experimental_fetch_to_device=True)
    )


def check_batch_split(global_batch_size, replicas):
    """Raises `ConfigError` unless `global_batch_size` splits evenly over `replicas`."""
    if global_batch_size % replicas:
        raise ConfigError(
            f"batch_size={global_batch_size} does not split evenly over {replicas} "
            f"replicas; use a multiple of {replicas}"
        )


def steps_per_epoch(train_config, ingested, replicas):
    """Full global batches per epoch, capped by `steps_per_epoch`."""
    global_batch_size = train_config.batch_size
    check_batch_split(global_batch_size, replicas)
    num_train = ingested.num_examples("train")
    steps = num_train // global_batch_size
    if steps < 1:
        raise ConfigError(
            f"batch_size={global_batch_size} is larger than the {num_train} training "
            "examples; use a smaller batch"
        )
    return min(steps, train_config.steps_per_epoch or steps)
