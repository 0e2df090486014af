"""Tests of pipeline.transform: the tf.data pipeline (batches, labels,
augmentation, caching, sharding, two replicas)."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import testlib
from pipeline.data import ingested_dataset
from pipeline.data import ingest
from pipeline.data import input_pipeline
from alexnet_keras import ImageSpec
from pipeline.config import DataConfig
from pipeline.errors import PipelineError

# Class folders sort as blue, green, red: label 0 is mostly blue, and so on.
DOMINANT_CHANNEL = {"blue": 2, "green": 1, "red": 0}
FORMATS = ("jpeg", "png", "jpeg", "bmp", "gif", "jpeg")


def _write_folder(root, make_pixels, class_names, per_class):
    rng = np.random.default_rng(0)
    for class_name in class_names:
        os.makedirs(os.path.join(root, class_name))
        for index in range(per_class):
            image_format = FORMATS[index % len(FORMATS)]
            data = testlib.encode(make_pixels(rng, class_name), image_format)
            with open(
                os.path.join(root, class_name, f"{index}.{image_format}"), "wb"
            ) as file:
                file.write(data)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """36 images in three colour classes; shards of 8 so train has several files."""
    root = tmp_path_factory.mktemp("colours")

    def make_pixels(rng, class_name):
        height, width = rng.integers(24, 48, 2)
        return testlib.coloured(rng, DOMINANT_CHANNEL[class_name], height, width)

    _write_folder(
        str(root / "images"), make_pixels, sorted(DOMINANT_CHANNEL), per_class=12
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "SHARD_SIZE", 8)
        return ingest.ingest(
            DataConfig(dataset=f"folder:{root / 'images'}"), str(root / "out")
        )


def _make(ingested, split, batch_size, training, *, channels=3, seed=7, input_context=None,
          **data_settings):
    """`make_dataset` for a 16x16 model of `channels`, seeded unless told otherwise."""
    return input_pipeline.make_dataset(
        ingested, split, ImageSpec(16, 16, channels), batch_size, training,
        data_config=DataConfig(**data_settings), seed=seed, input_context=input_context,
    )


def _batches(dataset):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def _assert_colours_match_labels(images, labels):
    dominant = images.mean(axis=(1, 2)).argmax(axis=-1)
    expected = [
        DOMINANT_CHANNEL[name] for name in np.array(sorted(DOMINANT_CHANNEL))[labels]
    ]
    np.testing.assert_array_equal(dominant, expected)


def test_evaluation_batches_keep_every_example_with_its_label(colours):
    ingested = colours
    batches = _batches(
        _make(ingested, "train", 8, False)
    )
    assert [len(labels) for _, labels in batches] == [8, 8, 8, 5]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    assert (
        images.shape == (29, 16, 16, 3)
        and images.dtype == np.float32
        and labels.dtype == np.int32
    )
    assert ingested.num_examples("train") == 29
    _assert_colours_match_labels(images, labels)

    grey = _batches(
        _make(ingested, "test", 8, False, channels=1)
    )
    assert grey[0][0].shape == (4, 16, 16, 1)


def test_training_batches_static_shapes_labels_and_seeded_order(colours):
    ingested = colours
    dataset = _make(ingested, "train", 8, True)
    assert dataset.element_spec[0].shape.as_list() == [8, 16, 16, 3]
    assert dataset.element_spec[1].shape.as_list() == [8]
    first_epoch, second_epoch = _batches(dataset), _batches(dataset)
    assert len(first_epoch) == 3  # 28 // 8: the partial batch is dropped
    for images, labels in first_epoch:
        assert images.dtype == np.float32 and labels.dtype == np.int32
        assert -127.5 <= images.min() and images.max() <= 127.5
        _assert_colours_match_labels(images, labels)

    again = _batches(
        _make(ingested, "train", 8, True)
    )
    for (images, labels), (images_again, labels_again) in zip(first_epoch, again):
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(labels, labels_again)
    assert not np.array_equal(first_epoch[0][0], second_epoch[0][0])


def test_flip_only_where_the_manifest_allows_it(tmp_path):
    def bright_left(rng, class_name):
        pixels = np.zeros((24, 24, 3), np.uint8)
        pixels[:, :12] = 255
        return pixels

    _write_folder(str(tmp_path / "images"), bright_left, ["a", "b"], per_class=24)
    ingested = ingest.ingest(
        DataConfig(dataset=f"folder:{tmp_path / 'images'}"), str(tmp_path / "out")
    )

    def flipped(seed=7):
        images = np.concatenate(
            [images for images, _ in _batches(_make(ingested, "train", 8, True, seed=seed))]
        )
        # A crop of 70% of the area or more always holds the middle, so its
        # left half stays brighter unless the crop was flipped.
        return images[:, :, :8].mean(axis=(1, 2, 3)) < images[:, :, 8:].mean(
            axis=(1, 2, 3)
        )

    assert ingested.flip is True
    assert 0 < flipped().sum() < len(flipped())
    ingested = dataclasses.replace(ingested, flip=False)
    assert not flipped().any()
    assert not flipped(seed=None).any()


def test_pca_noise_shifts_each_image_by_one_colour(colours):
    ingested = colours
    plain = _batches(_make(ingested, "train", 8, True))[
        0
    ][0]
    noisy = _batches(
        _make(ingested, "train", 8, True, pca_noise=True)
    )[0][0]
    shift = noisy - plain
    np.testing.assert_allclose(
        shift, shift[:, :1, :1, :] + np.zeros_like(shift), atol=1e-5
    )
    # At most a few percent of the 0-255 range (alpha ~ N(0, 0.1)).
    assert 0 < np.abs(shift).mean() < 0.15 * 255
    with pytest.raises(PipelineError, match="`pca_noise` needs colour input"):
        _make(ingested, "train", 8, True, channels=1, pca_noise=True)


@pytest.mark.parametrize("cache", ["memory", "file"])
def test_cache_gives_the_same_examples(colours, tmp_path, cache):
    ingested = colours
    cache = str(tmp_path / "cache") if cache == "file" else cache
    uncached = _batches(_make(ingested, "test", 8, False))
    cached_dataset = _make(ingested, "test", 8, False, cache=cache)
    for _ in range(2):
        for (images, labels), (cached_images, cached_labels) in zip(
            uncached, _batches(cached_dataset)
        ):
            np.testing.assert_allclose(images, cached_images, atol=1e-6)
            np.testing.assert_array_equal(labels, cached_labels)
    training = _batches(
        _make(ingested, "train", 8, True, cache=cache)
    )
    assert len(training) == 3
    _assert_colours_match_labels(*training[0])


def test_cache_files_are_keyed_by_pipeline_count_and_mode(colours, tmp_path):
    # A single pipeline, pipeline 0 of 2, and evaluation-mode reads of the same
    # split each cache their own examples in their own file.
    ingested = colours
    cache = str(tmp_path / "cache")
    half = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0)
    runs = [(False, None), (False, half), (True, None)]
    for _ in range(2):  # written, then read back
        counts = [
            sum(len(labels) for _, labels in _batches(
                _make(ingested, "train", 1, training, cache=cache, input_context=context)
            ))
            for training, context in runs
        ]
        total = ingested.num_examples("train")
        # Pipeline 0 of 2 reads every other shard.
        first_half = sum(1 for _ in tf.data.TFRecordDataset(ingested.files("train")[::2]))
        assert counts == [total, first_half, total] and first_half < total
    names = {path.name.split(".")[0] for path in tmp_path.glob("cache*.index")}
    fingerprint = ingested.fingerprint[:12]
    assert names == {
        f"cache-train-eval-3ch-{fingerprint}-0of1",
        f"cache-train-eval-3ch-{fingerprint}-0of2",
        f"cache-train-train-3ch-{fingerprint}-0of1",
    }


def test_a_cache_left_locked_by_a_killed_run_is_named_with_the_fix(digits, tmp_path):
    # digits' 1,437 training images: far more than one batch and the prefetch
    # buffers hold, so the run killed below stops mid-cache. (Its iterator must
    # stay referenced: a destroyed iterator removes its lock file.)
    ingested = digits
    cache = str(tmp_path / "cache")
    script = (
        "import os, sys\n"
        "from alexnet_keras import ImageSpec\n"
        "from pipeline.data import ingested_dataset, input_pipeline\n"
        "from pipeline.config import DataConfig\n"
        "ingested = ingested_dataset.IngestedDataset.load(sys.argv[1])\n"
        "config = DataConfig(cache=sys.argv[2])\n"
        "iterator = iter(input_pipeline.make_dataset(\n"
        "    ingested, 'train', ImageSpec(16, 16, 1), 8, False, data_config=config))\n"
        "next(iterator)\n"
        "os._exit(0)  # killed while it writes the cache: TensorFlow's lock file stays\n"
    )
    subprocess.run([sys.executable, "-c", script, ingested.directory, cache],
                   check=True, capture_output=True, env=testlib.child_env())
    lockfiles = list(tmp_path.glob("cache*.lockfile"))
    assert len(lockfiles) == 1
    with pytest.raises(PipelineError, match="delete that file") as error:
        _make(ingested, "train", 8, False, channels=1, cache=cache)
    assert str(lockfiles[0]) in str(error.value)
    # With the lock file gone, the cache is rebuilt and holds every example.
    lockfiles[0].unlink()
    for _ in range(2):  # written, then read back
        cached = _make(ingested, "train", 256, False, channels=1, cache=cache)
        assert sum(len(labels) for _, labels in cached) == (
            ingested.num_examples("train")
        )


@pytest.mark.parametrize(
    "split", ["train", "test"]
)  # 4 files (by file), 1 file (by record)
def test_input_pipelines_read_disjoint_shards(colours, split):
    ingested = colours

    def examples(input_context=None):
        images = np.concatenate(
            [
                images
                for images, _ in _batches(
                    _make(ingested, split, 4, False, input_context=input_context)
                )
            ]
        )
        return {image.round(4).tobytes() for image in images}, len(images)

    everything, total = examples()
    shards = [
        examples(tf.distribute.InputContext(2, pipeline, 1)) for pipeline in (0, 1)
    ]
    assert (
        shards[0][1] + shards[1][1]
        == total
        == ingested.num_examples(split)
    )
    assert shards[0][0] | shards[1][0] == everything and not shards[0][0] & shards[1][0]


def test_two_replicas_each_get_half_the_global_batch(colours):
    ingested = colours
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dataset = input_pipeline.distribute_dataset(
        strategy, ingested, "train", ImageSpec(16, 16, 3), 8, training=True
    )
    images, labels = next(iter(dataset))
    local_images = strategy.experimental_local_results(images)
    local_labels = strategy.experimental_local_results(labels)
    assert [tuple(part.shape) for part in local_images] == [(4, 16, 16, 3)] * 2
    assert [tuple(part.shape) for part in local_labels] == [(4,)] * 2
    assert [part.device.endswith("CPU:0") for part in local_images] == [True, False]
    with pytest.raises(PipelineError, match="does not split evenly over 2 replicas"):
        input_pipeline.distribute_dataset(
            strategy, ingested, "train", ImageSpec(16, 16, 3), 7, training=True
        )


def test_make_dataset_errors(colours, tmp_path):
    ingested = colours
    with pytest.raises(PipelineError, match="has no split 'holdout'"):
        _make(ingested, "holdout", 8, False)
    with pytest.raises(PipelineError, match="too few for a batch of 64"):
        _make(ingested, "train", 64, True)
    with pytest.raises(PipelineError, match="holds no finished ingest"):
        ingested_dataset.IngestedDataset.load(str(tmp_path))
