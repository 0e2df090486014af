"""Transform: the tf.data input pipeline from ingested shards to model-ready batches.

    batches = make_dataset(ingested, "train", data_config, 64, training=True)

Training follows the paper: a random crop with scale jitter, a horizontal flip
where the dataset allows one and, with `--pca-noise`, the paper's PCA colour
noise. Evaluation, and the serving signature, use `preprocess_for_eval`: a
resize and central crop, then centring on zero and the model's scale. Both end
in `_normalize`, so
training and serving see pixels the same way.
"""

import glob

import tensorflow as tf

from pipeline import artifact
from pipeline.config import PipelineError

AUTOTUNE = tf.data.AUTOTUNE
# The evaluation crop keeps the central 87.5% of each side (224 of 256, the
# usual ImageNet ratio; the paper's 227 of 256 is close).
EVAL_CROP_FRACTION = 0.875
# Training crops cover 70-100% of the image's area, about 78% on average (crops
# that do not fit are redrawn, which favours smaller ones): the paper's 227 crops
# of 256 images take 79%, and the evaluation crop takes 77%.
CROP_AREA_RANGE = (0.7, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
SHUFFLE_BUFFER = 10_000
# The paper's PCA colour noise uses the eigen-decomposition of ImageNet's RGB
# pixel covariance (for pixels in [0, 1]; the values of fb.resnet.torch):
# columns are eigenvectors, and each image gets
# eigenvectors @ (alpha * eigenvalues) added to every pixel, alpha ~ N(0, 0.1).
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
PCA_NOISE_STDDEV = 0.1


def _to_channels(image, channels):
    """uint8 [height, width, any channels] to `channels` (1 or 3): grey becomes
    RGB and colour grey (dropping any alpha), the same way on every path."""
    is_colour = tf.shape(image)[-1] >= 3
    if channels == 1:
        image = tf.cond(
            is_colour,
            lambda: tf.image.rgb_to_grayscale(image[..., :3]),
            lambda: image[..., :1],
        )
    else:
        image = tf.cond(
            is_colour,
            lambda: image[..., :3],
            lambda: tf.tile(image[..., :1], [1, 1, 3]),
        )
    return tf.ensure_shape(image, [None, None, channels])


def decode_image(image_bytes, channels):
    """Decodes an image of `pipeline.image_formats` (a GIF's first frame) to uint8
    [height, width, channels].

    Grey images become RGB and colour ones grey (dropping any alpha) as
    `channels` (1 or 3) asks. Corrupt bytes raise `tf.errors.InvalidArgumentError`.
    """
    # Decoded in the file's own channels and converted after: decode_image cannot
    # make BMP or GIF grey, and one conversion keeps every path alike.
    return _to_channels(tf.io.decode_image(image_bytes, expand_animations=False), channels)


PIXEL_CENTRE = 127.5


def _normalize(images, pixel_scale):
    """0-255 pixels centred on zero and scaled: the step training and serving share.

    The scale is the model's (`DataConfig.pixel_scale`): 1 keeps the paper's
    0-255 range, 1 / 127.5 gives [-1, 1].
    """
    return (images - PIXEL_CENTRE) * pixel_scale


def preprocess_for_eval(images, image_size, pixel_scale=1.0):
    """Resizes, central-crops and normalises images for the model, deterministically.

    Args:
        images: uint8 or float pixels in 0-255, `[H, W, C]` or `[N, H, W, C]`.
        image_size: `(height, width)` of the model's input.
        pixel_scale: the factor applied after centring (see `_normalize`).

    Returns:
        float32 `[..., height, width, C]` in 127.5 * pixel_scale * [-1, 1]: the
        images scaled (aspect ratio kept, bilinear) until the crop of
        `EVAL_CROP_FRACTION` of each side covers `image_size`, then that central
        crop.
    """
    images = tf.cast(images, tf.float32)
    height, width = image_size
    shape = tf.cast(tf.shape(images), tf.float32)
    scale = tf.maximum(height / shape[-3], width / shape[-2]) / EVAL_CROP_FRACTION
    resized = tf.cast(tf.math.ceil(shape[-3:-1] * scale), tf.int32)
    images = tf.image.resize(images, resized)
    return _normalize(tf.image.resize_with_crop_or_pad(images, height, width), pixel_scale)


def _crop_window(image_shape, seed):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
        area_range=CROP_AREA_RANGE,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size


def _random_crop(image, seed):
    begin, size = _crop_window(tf.shape(image), seed)
    return tf.slice(image, begin, size)


def _decode_random_crop(image_bytes, channels, seed):
    """A random crop of an encoded image; JPEGs decode only the crop (fused op)."""

    def crop_jpeg():
        begin, size = _crop_window(tf.image.extract_jpeg_shape(image_bytes), seed)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        # The file's own channels, then the conversion evaluation and serving use:
        # libjpeg's own grey conversion differs from rgb_to_grayscale.
        return _to_channels(tf.image.decode_and_crop_jpeg(image_bytes, window), channels)

    def crop_other():
        return _random_crop(decode_image(image_bytes, channels), seed)

    image = tf.cond(tf.io.is_jpeg(image_bytes), crop_jpeg, crop_other)
    return tf.ensure_shape(image, [None, None, channels])


def _pca_noise(image, seed):
    """The paper's colour augmentation on a float 0-255 RGB image."""
    alpha = tf.random.stateless_normal([3], seed, stddev=PCA_NOISE_STDDEV)
    shift = tf.linalg.matvec(
        tf.constant(IMAGENET_EIGENVECTORS), alpha * tf.constant(IMAGENET_EIGENVALUES)
    )
    return image + 255.0 * shift


def _parse(record):
    image_bytes, label = artifact.parse_record(record)
    return image_bytes, tf.cast(label, tf.int32)


def _records(files, training, seed, input_context):
    """Serialized examples of `files`, read in parallel, sharded per input pipeline."""
    pipelines = input_context.num_input_pipelines if input_context else 1
    if pipelines > len(files):
        # Too few files to give each pipeline its own: every pipeline reads them
        # all, in the same order, and keeps every n-th record.
        dataset = tf.data.TFRecordDataset(files)
        return dataset.shard(pipelines, input_context.input_pipeline_id)
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if pipelines > 1:
        dataset = dataset.shard(pipelines, input_context.input_pipeline_id)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed)
    return dataset.interleave(
        tf.data.TFRecordDataset, cycle_length=AUTOTUNE, num_parallel_calls=AUTOTUNE
    )


def _cache_path(data_config, split, ingested, training, input_context):
    """One cache file per everything that changes what is cached: the split, the
    channel count, the ingest's content, the order (training shuffles the
    files) and the input pipeline, counted among how many (pipeline 0 of 2
    holds half of what a single pipeline holds). A cache made for other data
    must never be read back."""
    pipeline = input_context.input_pipeline_id if input_context else 0
    pipelines = input_context.num_input_pipelines if input_context else 1
    mode = "train" if training else "eval"
    return (
        f"{data_config.cache}-{split}-{mode}-{data_config.channels}ch-"
        f"{ingested.fingerprint[:12]}-{pipeline}of{pipelines}"
    )


def _check_cache_unlocked(path, flag_value):
    """A cache file that a run was killed while writing stays locked, and
    TensorFlow would fail mid-training; say so before anything starts."""
    lockfiles = sorted(glob.glob(glob.escape(path) + "_*.lockfile"))
    if lockfiles:
        lockfile = lockfiles[0]
        raise PipelineError(
            f"--cache {flag_value}: {lockfile} exists, so another run is writing this "
            "cache or a run was killed while writing it; if no other run uses it, "
            "delete that file and run again (the cache is rebuilt)"
        )


def make_dataset(
    ingested, split, data_config, batch_size, training, input_context=None
):
    """Batches of (images float32 [batch, height, width, channels], labels int32).

    Args:
        ingested: the `IngestedDataset` to read.
        split: "train", "validation" or "test".
        data_config: a `DataConfig` whose `image_size` and `channels` are resolved.
        batch_size: the per-replica batch.
        training: shuffle, augment and drop the last partial batch (static
            shapes); otherwise `preprocess_for_eval` and every example kept.
        input_context: a `tf.distribute.InputContext`; this pipeline then reads
            its own shard of the data.

    One pass over the split; the caller repeats it per epoch. The order is
    deterministic only when `data_config.seed` is set.
    """
    if data_config.image_size is None or data_config.channels is None:
        raise ValueError(
            "make_dataset needs a resolved image_size and channels. "
            f"Received: image_size={data_config.image_size}, "
            f"channels={data_config.channels}"
        )
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
            f"for a batch of {batch_size} per replica; lower --batch-size or add data"
        )
    if data_config.pca_noise and data_config.channels != 3:
        raise PipelineError("--pca-noise needs colour input: use --channels 3")
    channels = data_config.channels
    image_size = data_config.image_size
    seed = data_config.seed
    files = ingested.files(split)

    dataset = _records(files, training, seed, input_context).map(
        _parse, num_parallel_calls=AUTOTUNE
    )
    if data_config.cache:
        dataset = dataset.map(
            lambda image_bytes, label: (decode_image(image_bytes, channels), label),
            num_parallel_calls=AUTOTUNE,
        )
        path = ""
        if data_config.cache != "memory":
            path = _cache_path(data_config, split, ingested, training, input_context)
            _check_cache_unlocked(path, data_config.cache)
        dataset = dataset.cache(path)
    if training:

        def crop(image, crop_seed):
            if data_config.cache:
                return _random_crop(image, crop_seed)
            # Not decoded yet: a JPEG decodes only its crop.
            return _decode_random_crop(image, channels, crop_seed)

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
                image = _pca_noise(image, noise_seed)
            return _normalize(image, data_config.pixel_scale), label

        dataset = dataset.shuffle(min(num_examples, SHUFFLE_BUFFER), seed=seed)
        # Stateless augmentation with per-example seeds from a seeded stream: the
        # same crops and flips on every run with --seed, new ones every epoch,
        # and other ones in every input pipeline.
        augment_seed = seed
        if seed is not None and input_context:
            augment_seed += input_context.input_pipeline_id
        seeds = tf.data.Dataset.random(augment_seed, rerandomize_each_iteration=True)
        seeds = seeds.batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            augment, num_parallel_calls=AUTOTUNE
        )
    else:

        def evaluate(image, label):
            if not data_config.cache:
                image = decode_image(image, channels)
            return preprocess_for_eval(image, image_size, data_config.pixel_scale), label

        dataset = dataset.map(evaluate, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(
        batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE
    )
    options = tf.data.Options()
    # Out-of-order reads and maps are faster; a seeded run gives up that speed
    # for a reproducible order.
    options.deterministic = seed is not None
    return dataset.with_options(options).prefetch(AUTOTUNE)


def distribute_dataset(
    strategy, ingested, split, data_config, global_batch_size, training, repeat=False
):
    """`make_dataset` for every input pipeline of `strategy`, each replica getting
    `global_batch_size / num_replicas` examples per step, prefetched to its device.

    With `repeat`, every pipeline cycles through its shard forever, so that all
    workers can run the same number of steps whatever the size of their shards.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise PipelineError(
            f"--batch-size {global_batch_size} does not split evenly over {replicas} "
            f"replicas; use a multiple of {replicas}"
        )

    def dataset_fn(input_context):
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        batches = make_dataset(
            ingested, split, data_config, batch_size, training, input_context
        )
        return batches.repeat() if repeat else batches

    return strategy.distribute_datasets_from_function(
        dataset_fn, tf.distribute.InputOptions(experimental_fetch_to_device=True)
    )
