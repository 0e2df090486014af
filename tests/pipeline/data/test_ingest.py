"""Tests of pipeline.ingest and pipeline.sources: every source, the manifest, the
splits, reuse, atomic output, bad input and the command line."""

import collections
import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
import struct
import threading
import zlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn import datasets

import testlib
from pipeline.cli import main as cli
from pipeline.data import ingested_dataset
from pipeline.data import image_formats
from pipeline.data import ingest
from pipeline.data import preprocess_ops
from pipeline.config import DataConfig
from pipeline.errors import PipelineError

CLI = [sys.executable, "-m", "pipeline.ingest"]


def _error_lines(result):
    """The CLI's own error lines; TensorFlow's start-up lines (no CUDA here) may
    come first on stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("python -m")]


def _pixels(seed, height=20, width=24, channels=3):
    return np.random.default_rng(seed).integers(
        0, 256, (height, width, channels), np.uint8
    )


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)
    return path


def _image_folder(root, per_class=6):
    """Two classes of JPEG, PNG, BMP, GIF and WebP files; returns {path: (label, bytes)}."""
    images = {}
    formats = ("jpeg", "png", "bmp", "gif", "webp", "png")
    for label, class_name in enumerate(("cat", "dog")):
        for index in range(per_class):
            image_format = formats[index % len(formats)]
            data = testlib.encode(_pixels(10 * label + index, 18 + index, 22), image_format)
            path = _write(
                os.path.join(root, class_name, f"{index}.{image_format}"), data
            )
            images[path] = (label, data)
    return images


def _records(ingested, split):
    """Every feature of the records of one output split."""
    return list(
        tf.data.TFRecordDataset(ingested.files(split))
        .map(lambda record: tf.io.parse_single_example(record, ingested_dataset.RECORD_FEATURES))
        .as_numpy_iterator()
    )


def _all_records(ingested):
    return [record for split in ingested_dataset.SPLITS for record in _records(ingested, split)]


def _mtimes(directory):
    return {
        name: os.stat(os.path.join(directory, name)).st_mtime_ns
        for name in os.listdir(directory)
    }


def test_digits_manifest_and_exact_pixels(digits):
    ingested = digits
    assert ingested.source == "digits"
    assert list(ingested.class_names) == [str(digit) for digit in range(10)]
    assert ingested.channels == 1
    assert ingested.flip is False
    assert ingested.skipped == ()
    assert ingested == ingested_dataset.IngestedDataset.load(ingested.directory)
    assert ingested == ingested_dataset.IngestedDataset.load(os.path.dirname(ingested.directory))
    sizes = {split: info.num_examples for split, info in ingested.splits.items()}
    # Hash bands of 10% each: sizes near, not at, 180 (see test_digits_split_is_stratified).
    assert sizes == {"train": 1426, "validation": 177, "test": 194}

    sklearn_digits = datasets.load_digits()
    expected = collections.Counter(
        (int(label), np.round(image * 255 / 16).astype(np.uint8).tobytes())
        for image, label in zip(sklearn_digits.images, sklearn_digits.target)
    )
    records = _all_records(ingested)
    assert {record["image/format"] for record in records} == {b"png"}
    found = collections.Counter(
        (
            int(record["image/class/label"]),
            tf.io.decode_png(record["image/encoded"]).numpy().tobytes(),
        )
        for record in records
    )
    assert found == expected
    first = tf.io.decode_png(records[0]["image/encoded"]).numpy()
    assert first.shape == (8, 8, 1) and first.max() <= 255


def test_digits_split_is_stratified(digits):
    # Each example's split follows from its own hash, so a split's size per
    # class is binomial: the bound is 3 standard deviations of sqrt(n * 0.1 * 0.9),
    # 12 examples for digits' ~180 per class. Measured: 4.7 (validation), 9.8 (test).
    ingested = digits
    labels = {
        split: np.array(
            [
                record["image/class/label"]
                for record in _records(ingested, split)
            ]
        )
        for split in ingested_dataset.SPLITS
    }
    total = np.bincount(np.concatenate(list(labels.values())), minlength=10)
    for split in ("validation", "test"):
        per_class = np.bincount(labels[split], minlength=10)
        bound = 3 * np.sqrt(total * 0.1 * 0.9)
        assert np.all(np.abs(per_class - total * 0.1) <= bound), (split, per_class)
        assert abs(len(labels[split]) - 0.1 * total.sum()) <= 3 * np.sqrt(total.sum() * 0.09)


def test_split_is_deterministic(digits, tmp_path):
    ingested = digits
    again = ingest.ingest(DataConfig(dataset="digits"), str(tmp_path / "again"))
    assert again.splits == ingested.splits
    for info in ingested.splits.values():
        for name in info.files:
            with open(os.path.join(ingested.directory, name), "rb") as first:
                with open(os.path.join(again.directory, name), "rb") as second:
                    assert first.read() == second.read()


def test_folder_keeps_original_bytes_and_skips_bad_files(tmp_path, caplog):
    images = _image_folder(tmp_path / "images")
    good_jpeg = images[str(tmp_path / "images" / "cat" / "0.jpeg")][1]
    truncated = _write(
        str(tmp_path / "images" / "cat" / "truncated.jpg"),
        good_jpeg[: len(good_jpeg) // 2],
    )
    text = _write(str(tmp_path / "images" / "dog" / "notes.txt"), b"not an image\n")
    _write(str(tmp_path / "images" / "dog" / ".DS_Store"), b"\0\0")

    with caplog.at_level(logging.WARNING, logger="pipeline.data.ingest"):
        ingested = ingest.ingest(
            DataConfig(dataset=f"folder:{tmp_path / 'images'}"), str(tmp_path / "out")
        )

    assert list(ingested.class_names) == ["cat", "dog"]
    assert ingested.channels == 3 and ingested.flip is True
    skipped = {entry.path: entry.reason for entry in ingested.skipped}
    assert set(skipped) == {truncated, text}
    assert skipped[truncated].startswith("corrupt jpeg")
    assert skipped[text] == "not a JPEG, PNG, GIF, BMP or WebP image"
    assert truncated in caplog.text and text in caplog.text
    assert sum(info.num_examples for info in ingested.splits.values()) == len(
        images
    )

    records = _all_records(ingested)
    assert sorted(
        (int(r["image/class/label"]), r["image/encoded"]) for r in records
    ) == sorted(images.values())
    formats = {r["image/encoded"]: r["image/format"].decode() for r in records}
    assert set(formats.values()) == {"jpeg", "png", "bmp", "gif", "webp"}
    for record in records:
        height, width, _ = tf.io.decode_image(
            record["image/encoded"], expand_animations=False
        ).shape
        assert (record["image/height"], record["image/width"]) == (height, width)


def test_strict_raises_naming_the_file_and_leaves_nothing(tmp_path):
    images = _image_folder(tmp_path / "images")
    jpeg = next(data for _, data in images.values() if data.startswith(b"\xff\xd8"))
    truncated = _write(str(tmp_path / "images" / "dog" / "cut.jpg"), jpeg[:-200])
    threads_before = set(threading.enumerate())
    with pytest.raises(PipelineError, match="cut.jpg: corrupt jpeg") as error:
        ingest.ingest(
            DataConfig(dataset=f"folder:{tmp_path / 'images'}", strict=True),
            str(tmp_path / "out"),
        )
    assert truncated in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["images"]
    # The checking threads are joined before the error leaves ingest. Left to
    # the garbage collector, which can run on one of those threads, the pool's
    # shutdown would try to join the thread it runs on ("cannot join current
    # thread") and leave the others running.
    assert [thread.name for thread in set(threading.enumerate()) - threads_before
            if thread.name.startswith("ThreadPoolExecutor")] == []


@pytest.mark.slow
def test_cli_strict_exits_2_naming_the_file(tmp_path):
    _image_folder(tmp_path / "images")
    _write(str(tmp_path / "images" / "cat" / "readme.txt"), b"hello")
    result = subprocess.run(
        [
            *CLI,
            "--dataset",
            f"folder:{tmp_path / 'images'}",
            "--output-dir",
            str(tmp_path / "out"),
            "--strict",
        ],
        capture_output=True,
        text=True,
        cwd=testlib.REPO,
    )
    assert result.returncode == 2
    errors = _error_lines(result)
    assert errors == [
        "python -m pipeline.ingest: error: "
        f"{tmp_path / 'images' / 'cat' / 'readme.txt'}: "
        "not a JPEG, PNG, GIF, BMP or WebP image (--strict stops at the first bad image; "
        "without it, bad images are skipped and listed)"
    ]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_reuse_then_reingest_after_a_change(tmp_path, caplog):
    _image_folder(tmp_path / "images")
    config = DataConfig(dataset=f"folder:{tmp_path / 'images'}")
    output_dir = str(tmp_path / "out")
    first = ingest.ingest(config, output_dir)
    before = _mtimes(output_dir)

    with caplog.at_level(logging.INFO, logger="pipeline.data.ingest"):
        assert ingest.ingest(config, output_dir) == first
    assert f"reusing {output_dir}" in caplog.text
    assert _mtimes(output_dir) == before

    _write(str(tmp_path / "images" / "dog" / "new.png"), testlib.encode(_pixels(99), "png"))
    added = ingest.ingest(config, output_dir)
    assert added.fingerprint != first.fingerprint
    assert sum(info.num_examples for info in added.splits.values()) == 13

    _write(
        str(tmp_path / "images" / "dog" / "new.png"),
        testlib.encode(_pixels(100, 30, 30), "png"),
    )
    changed = ingest.ingest(config, output_dir)
    assert changed.fingerprint != added.fingerprint
    assert sorted(os.listdir(tmp_path)) == ["images", "out"]


def test_strict_rerun_rejects_an_ingest_that_skipped_files(tmp_path):
    _image_folder(tmp_path / "images")
    _write(str(tmp_path / "images" / "cat" / "notes.txt"), b"text")
    ingest.ingest(
        DataConfig(dataset=f"folder:{tmp_path / 'images'}"), str(tmp_path / "out")
    )
    with pytest.raises(PipelineError, match="notes.txt"):
        ingest.ingest(
            DataConfig(dataset=f"folder:{tmp_path / 'images'}", strict=True),
            str(tmp_path / "out"),
        )


def _example(image_bytes, label):
    feature = {
        "image/encoded": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[image_bytes])
        ),
        "image/class/label": tf.train.Feature(
            int64_list=tf.train.Int64List(value=[label])
        ),
    }
    return tf.train.Example(
        features=tf.train.Features(feature=feature)
    ).SerializeToString()


def _tfrecords(directory, names, per_file=10):
    """ImageNet-style files, labels 1..3 (1-based); returns (label, bytes) pairs."""
    written = []
    os.makedirs(directory, exist_ok=True)
    for file_index, name in enumerate(names):
        with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
            for index in range(per_file):
                data = testlib.encode(_pixels(100 * file_index + index), "jpeg")
                label = 1 + index % 3
                writer.write(_example(data, label))
                written.append((label, data))
    return written


def test_tfrecord_round_trip_with_label_offset_and_class_names(tmp_path):
    names = [
        "train-00000-of-00002",
        "train-00001-of-00002",
        "validation-00000-of-00001",
    ]
    written = _tfrecords(tmp_path / "records", names)
    names_file = _write(str(tmp_path / "names.txt"), b"tench\ngoldfish\nshark\n")
    config = DataConfig(
        dataset=f"tfrecord:{tmp_path / 'records' / '*'}",
        label_offset=1,
        class_names=names_file,
    )
    ingested = ingest.ingest(config, str(tmp_path / "out"))

    assert list(ingested.class_names) == ["tench", "goldfish", "shark"]
    sizes = {split: info.num_examples for split, info in ingested.splits.items()}
    # Validation is the files' own; test is carved out of train (10% of 20).
    assert sizes == {"train": 18, "validation": 10, "test": 2}
    records = _all_records(ingested)
    assert sorted(
        (int(r["image/class/label"]), r["image/encoded"]) for r in records
    ) == sorted((label - 1, data) for label, data in written)
    validation = _records(ingested, "validation")
    assert sorted(r["image/encoded"] for r in validation) == sorted(
        data for _, data in written[20:]
    )


def test_tfrecord_without_names_infers_them_and_pools_unnamed_files(tmp_path):
    _tfrecords(tmp_path / "records", ["part-0.tfrecord", "part-1.tfrecord"])
    pattern = f"tfrecord:{tmp_path / 'records' / '*.tfrecord'}"
    ingested = ingest.ingest(
        DataConfig(dataset=pattern, label_offset=1), str(tmp_path / "a")
    )
    assert list(ingested.class_names) == ["0", "1", "2"]
    assert [info.num_examples for info in ingested.splits.values()] == [16, 2, 2]
    unshifted = ingest.ingest(DataConfig(dataset=pattern), str(tmp_path / "b"))
    assert unshifted.class_names == ("0", "1", "2", "3")


@pytest.mark.parametrize(
    "options,message",
    [
        ({"label_offset": 2}, "below label_offset=2"),
        ({"label_offset": 1, "class_names": "a,b"},
         "part-0, record 2, has label 3: `class_names` gives 2 names"),
        ({"class_names": "single"}, "neither a file nor a comma-separated list"),
    ],
)
def test_tfrecord_label_errors(tmp_path, options, message):
    _tfrecords(tmp_path / "records", ["part-0"])
    config = DataConfig(dataset=f"tfrecord:{tmp_path / 'records' / '*'}", **options)
    with pytest.raises(PipelineError, match=message):
        ingest.ingest(config, str(tmp_path / "out"))


def test_a_tfrecord_label_far_off_the_others_is_named_not_allocated(tmp_path):
    (tmp_path / "records").mkdir()
    image = testlib.encode(_pixels(1), "jpeg")
    with tf.io.TFRecordWriter(str(tmp_path / "records" / "part-0")) as writer:
        for label in (0, 1, 2**40, 2):
            writer.write(_example(image, label))
    config = DataConfig(dataset=f"tfrecord:{tmp_path / 'records' / '*'}")
    with pytest.raises(PipelineError) as error:
        ingest.ingest(config, str(tmp_path / "out"))
    assert str(error.value) == (
        f"{tmp_path / 'records' / 'part-0'}, record 2, has label {2**40}: over the 250,000 "
        "classes a dataset may have; labels must count classes from label_offset")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,flip", [("fashion_mnist", True), ("mnist", False)])
def test_tfds_source_with_mock_data(tmp_path, name, flip):
    info = testlib.tfds_metadata(tmp_path / "tfds", name, {"train": 40, "test": 20})
    with tfds.testing.mock_data(
        num_examples=40,
        data_dir=str(tmp_path / "tfds"),
        policy=tfds.testing.MockPolicy.USE_FILES,
    ):
        ingested = ingest.ingest(
            DataConfig(dataset=f"tfds:{name}"), str(tmp_path / "out")
        )
        # The mock gives every split the same 40 examples.
        expected = list(
            tfds.builder(name)
            .as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
            .as_numpy_iterator()
        )
    assert ingested.source == f"tfds:{name}"
    assert list(ingested.class_names) == info.features["label"].names
    assert ingested.channels == 1 and ingested.flip is flip
    sizes = {split: info.num_examples for split, info in ingested.splits.items()}
    assert sizes == {"train": 32, "validation": 8, "test": 40}
    records = _records(ingested, "test")
    assert sorted(
        (int(r["image/class/label"]), r["image/encoded"]) for r in records
    ) == sorted((int(example["label"]), example["image"]) for example in expected)


def test_tfds_errors_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(PipelineError, match="unknown TFDS dataset 'no_such_set'"):
        ingest.ingest(DataConfig(dataset="tfds:no_such_set"), str(tmp_path / "out"))

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'\nmore detail")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(PipelineError) as error:
        ingest.ingest(
            DataConfig(dataset="tfds:cifar10", data_dir=str(tmp_path / "tfds")),
            str(tmp_path / "out"),
        )
    message = str(error.value)
    assert "could not download or prepare TFDS dataset 'cifar10'" in message
    assert (
        "Failed to resolve" in message
        and "`data_dir`" in message
        and "\n" not in message
    )


def _bad_sources(root):
    os.makedirs(root / "one" / "only")
    _write(str(root / "one" / "only" / "a.png"), testlib.encode(_pixels(0), "png"))
    os.makedirs(root / "empty" / "a")
    os.makedirs(root / "empty" / "b")
    _write(str(root / "empty" / "a" / "a.png"), testlib.encode(_pixels(0), "png"))
    return {
        "imagenet": "unknown dataset 'imagenet'",
        "csv:/tmp/x": "unknown dataset 'csv:/tmp/x'",
        "folder:": "malformed dataset 'folder:'",
        f"folder:{root / 'missing'}": "is not a directory",
        f"folder:{root / 'one'}": "has 1 class folder",
        f"folder:{root / 'empty'}": f"class folder {root / 'empty' / 'b'} has no files",
        f"tfrecord:{root / 'nothing' / '*.tfrecord'}": "no files match",
    }


def test_bad_sources_raise_one_line_errors(tmp_path):
    for spec, message in _bad_sources(tmp_path).items():
        with pytest.raises(PipelineError) as error:
            ingest.ingest(DataConfig(dataset=spec), str(tmp_path / "out"))
        assert message in str(error.value) and "\n" not in str(error.value), spec
    with pytest.raises(PipelineError, match="apply to tfrecord: datasets only"):
        ingest.ingest(
            DataConfig(dataset="digits", label_offset=1), str(tmp_path / "out")
        )


def test_leftovers_of_a_killed_ingest_are_not_trusted(tmp_path):
    _image_folder(tmp_path / "images")
    config = DataConfig(dataset=f"folder:{tmp_path / 'images'}")
    # A process that cannot exist left its temporary directory behind.
    leftover = tmp_path / f".out.ingest-{socket.gethostname()}-{testlib.UNUSED_PID}-x1y2"
    _write(str(leftover / "train-00000.tfrecord"), b"partial")
    ingest.ingest(config, str(tmp_path / "out"))
    assert not leftover.exists()

    # A directory without manifest.json is never taken for a dataset.
    _write(str(tmp_path / "half" / "train-00000.tfrecord"), b"partial")
    with pytest.raises(PipelineError, match="holds no manifest.json"):
        ingest.ingest(config, str(tmp_path / "half"))
    with pytest.raises(PipelineError, match="holds no finished ingest"):
        ingested_dataset.IngestedDataset.load(str(tmp_path / "half"))


def test_a_copy_finished_meanwhile_by_another_worker_is_kept(tmp_path, monkeypatch):
    _image_folder(tmp_path / "images")
    output_dir = str(tmp_path / "out")
    write = ingest._write

    def write_while_another_worker_finishes(source, fingerprint, directory, data_config):
        ingested = write(source, fingerprint, directory, data_config)
        other = os.path.join(output_dir, os.path.basename(directory))
        shutil.copytree(directory, other)
        _write(os.path.join(other, "in-use"), b"")
        dataclasses.replace(ingested, directory=other).publish(output_dir)
        return ingested

    monkeypatch.setattr(ingest, "_write", write_while_another_worker_finishes)
    ingested = ingest.ingest(
        DataConfig(dataset=f"folder:{tmp_path / 'images'}"), output_dir
    )
    assert os.path.exists(os.path.join(ingested.directory, "in-use"))
    assert ingested_dataset.IngestedDataset.load(output_dir) == ingested
    assert sorted(os.listdir(tmp_path)) == ["images", "out"]


@pytest.mark.slow
def test_killed_cli_leaves_no_output_dir(tmp_path, tmp_path_factory):
    # Killed once every record is written to the temporary directory but before
    # it is renamed into place: the last moment a kill can leave a half output.
    output_dir = tmp_path / "digits"
    logs = tmp_path_factory.mktemp("logs")
    marker = str(logs / "paused")
    with testlib.Children(logs) as children:
        children.start("ingest", testlib.paused_command(
            "ingest", "pipeline.data.ingest:_write", 1, marker,
            "--output-dir", str(output_dir),
        ), cwd=testlib.REPO, env=testlib.child_env())
        children.wait_for_file(marker, timeout=120)
        leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".digits.ingest-")]
        assert len(leftovers) == 1
        assert not output_dir.exists()
    ingested = ingest.ingest(DataConfig(dataset="digits"), str(output_dir))
    assert ingested.num_examples("train") == 1426
    assert os.listdir(tmp_path) == ["digits"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--dataset", "imagenet"],
            "python -m pipeline.ingest: error: unknown dataset 'imagenet'",
        ),
        (
            ["--label-offset", "one"],
            "python -m pipeline.ingest: error: argument --label-offset",
        ),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path, argv, message):
    result = subprocess.run(
        [*CLI, "--output-dir", str(tmp_path / "out"), *argv],
        capture_output=True,
        text=True,
        cwd=testlib.REPO,
    )
    assert result.returncode == 2
    errors = _error_lines(result)
    assert len(errors) == 1 and errors[0].startswith(message)
    assert "Traceback" not in result.stderr


def test_cli_prints_a_summary(tmp_path, capsys):
    _image_folder(tmp_path / "images")
    _write(str(tmp_path / "images" / "cat" / "notes.txt"), b"text")
    output_dir = str(tmp_path / "out")
    assert (
        cli.main(
            "ingest", ["--dataset", f"folder:{tmp_path / 'images'}", "--output-dir", output_dir]
        )
        == 0
    )
    assert capsys.readouterr().out == (
        f"skipped {tmp_path / 'images' / 'cat' / 'notes.txt'}: "
        "not a JPEG, PNG, GIF, BMP or WebP image\n"
        f"train 10, validation 1, test 1 examples; 1 skipped; in {output_dir}\n"
    )


def test_default_ingest_dir(tmp_path, monkeypatch):
    _image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    ingest.ingest(DataConfig(dataset="folder:images"))
    expected = ingest.default_ingest_dir(f"folder:{tmp_path / 'images'}")
    assert os.listdir(tmp_path / "data") == [os.path.basename(expected)]
    assert expected.startswith(os.path.join("data", "folder-images-"))

    assert ingest.default_ingest_dir("digits") == os.path.join("data", "digits")
    assert ingest.default_ingest_dir("tfds:cifar10") == os.path.join(
        "data", "tfds-cifar10"
    )
    assert ingest.default_ingest_dir("tfds:imagenette/320px-v2") == os.path.join(
        "data", "tfds-imagenette-320px-v2"
    )
    first = ingest.default_ingest_dir("folder:/data/a/train")
    second = ingest.default_ingest_dir("folder:/data/b/train")
    assert first.startswith(os.path.join("data", "folder-train-")) and first != second
    assert ingest.default_ingest_dir("tfrecord:/data/imagenet/train-*").startswith(
        os.path.join("data", "tfrecord-imagenet-")
    )


def _tree(directory):
    """{relative path: bytes} of every file under `directory`."""
    files = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(parent, name), "rb") as file:
                files[os.path.relpath(os.path.join(parent, name), directory)] = file.read()
    return files


def test_an_ingest_of_another_source_is_refused_and_kept(digits, tmp_path):
    _image_folder(tmp_path / "images")
    output_dir = os.path.dirname(digits.directory)
    before = _tree(output_dir)
    with pytest.raises(PipelineError) as error:
        ingest.ingest(DataConfig(dataset=f"folder:{tmp_path / 'images'}"), output_dir)
    assert str(error.value) == (
        f"{output_dir} holds an ingest of digits, not folder:{tmp_path / 'images'}; "
        f"choose another ingest directory, or delete {output_dir} yourself"
    )
    assert _tree(output_dir) == before


def test_a_foreign_manifest_is_refused_and_kept(tmp_path):
    _write(str(tmp_path / "app" / "manifest.json"), b'{"name": "my-app", "version": 3}')
    _write(str(tmp_path / "app" / "bundle.js"), b"console.log(1)")
    before = _tree(tmp_path / "app")
    with pytest.raises(PipelineError) as error:
        ingest.ingest(DataConfig(dataset="digits"), str(tmp_path / "app"))
    assert str(error.value) == (
        f"{tmp_path / 'app'} holds a manifest.json that this pipeline.ingest did not "
        f"write; choose another ingest directory, or delete {tmp_path / 'app'} yourself"
    )
    assert _tree(tmp_path / "app") == before


def test_a_changed_source_leaves_the_version_a_run_is_reading(tmp_path):
    _image_folder(tmp_path / "images")
    config = DataConfig(dataset=f"folder:{tmp_path / 'images'}")
    output_dir = str(tmp_path / "out")
    first = ingest.ingest(config, output_dir)
    reading = first.records("train").as_numpy_iterator()
    next(reading)  # a run mid-epoch on the first version

    _write(str(tmp_path / "images" / "dog" / "new.png"), testlib.encode(_pixels(99), "png"))
    second = ingest.ingest(config, output_dir)
    assert second.directory != first.directory
    assert os.path.dirname(second.directory) == output_dir
    assert ingested_dataset.IngestedDataset.load(output_dir) == second
    assert len(list(reading)) == first.num_examples("train") - 1
    assert ingested_dataset.IngestedDataset.load(first.directory) == first
    with pytest.raises(PipelineError, match=f"use {output_dir} as the ingest directory"):
        ingest.ingest(config, first.directory)

    # The next change removes the first version, never the one it replaces.
    os.remove(tmp_path / "images" / "dog" / "new.png")
    _write(str(tmp_path / "images" / "cat" / "new.png"), testlib.encode(_pixels(98), "png"))
    third = ingest.ingest(config, output_dir)
    versions = {name for name in os.listdir(output_dir) if name.startswith("v-")}
    assert versions == {os.path.basename(second.directory), os.path.basename(third.directory)}
    assert sorted(os.listdir(output_dir)) == sorted([*versions, "manifest.json"])


def test_shards_and_manifests_reach_the_disk_before_their_rename(tmp_path, monkeypatch):
    _image_folder(tmp_path / "images")
    config = DataConfig(dataset=f"folder:{tmp_path / 'images'}")
    events = []
    fsync, rename, replace = os.fsync, os.rename, os.replace

    def record_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}"), None))
        fsync(descriptor)

    def record(function):
        def move(source, destination):
            events.append(("move", str(source), str(destination)))
            function(source, destination)
        return move

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "rename", record(rename))
    monkeypatch.setattr(os, "replace", record(replace))
    # A new directory (renamed into place), then a new version inside it.
    for change, parent in enumerate([tmp_path, tmp_path / "out"]):
        _write(str(tmp_path / "images" / "cat" / f"{change}.png"),
               testlib.encode(_pixels(50 + change), "png"))
        events.clear()
        ingest.ingest(config, str(tmp_path / "out"))
        moves = [(index, source, destination)
                 for index, (kind, source, destination) in enumerate(events) if kind == "move"]
        assert len(moves) == 2  # the data, then the manifest that names it
        for index, source, destination in moves:
            synced = {path for kind, path, _ in events[:index] if kind == "fsync"}
            if source.endswith(ingested_dataset.MANIFEST):
                assert source in synced
                continue
            written = [os.path.join(source, os.path.relpath(os.path.join(directory, name),
                                                            destination))
                       for directory, _, names in os.walk(destination) for name in names]
            assert len(written) >= 4 and set(written) <= synced, (written, synced)
            assert source in synced
        assert str(parent) in {path for kind, path, _ in events[moves[-1][0]:] if kind == "fsync"}


def _folder_of_tiny_pngs(root, classes, names, seed=0):
    """PNGs whose pixels identify them; returns {bytes: relative path}."""
    images = {}
    for class_index, class_name in enumerate(classes):
        for index, name in enumerate(names):
            data = testlib.encode(_pixels((seed, class_index, index), 6, 6), "png")
            _write(os.path.join(root, class_name, name), data)
            images[data] = os.path.join(class_name, name)
    return images


def _split_of(ingested, images):
    """{relative path: split} of every ingested image."""
    return {
        images[record["image/encoded"]]: split
        for split in ingested_dataset.SPLITS
        for record in _records(ingested, split)
    }


def test_adding_images_moves_no_other_image_between_splits(tmp_path):
    root = tmp_path / "images"
    images = _folder_of_tiny_pngs(root, ["cat", "dog"], [f"{i}.png" for i in range(100)])
    config = DataConfig(dataset=f"folder:{root}")
    before = _split_of(ingest.ingest(config, str(tmp_path / "out")), images)
    images.update(_folder_of_tiny_pngs(root, ["cat", "dog"], [f"new{i}.png" for i in range(30)],
                                       seed=1))
    after = _split_of(ingest.ingest(config, str(tmp_path / "out")), images)
    assert {path: after[path] for path in before} == before
    # The identity is the path inside the folder: a moved folder splits alike.
    shutil.move(root, tmp_path / "moved")
    moved = ingest.ingest(DataConfig(dataset=f"folder:{tmp_path / 'moved'}"),
                          str(tmp_path / "moved-out"))
    assert _split_of(moved, images) == after
    counts = collections.Counter(after.values())
    # 260 images: 26 expected per carved split, bound 3 * sqrt(260 * 0.1 * 0.9).
    for split in ("validation", "test"):
        assert abs(counts[split] - 26) <= 3 * np.sqrt(260 * 0.09), counts


@pytest.mark.parametrize("split_folder", ["val", "validation", "test"])
def test_split_folders_are_the_datasets_own_splits(tmp_path, split_folder):
    root = tmp_path / "images"
    train = _folder_of_tiny_pngs(root / "train", ["cat", "dog"], [f"{i}.png" for i in range(10)])
    held_out = _folder_of_tiny_pngs(root / split_folder, ["cat", "dog"], ["a.png", "b.png"],
                                    seed=1)
    ingested = ingest.ingest(DataConfig(dataset=f"folder:{root}"), str(tmp_path / "out"))
    assert ingested.class_names == ("cat", "dog")
    own = "validation" if split_folder == "val" else split_folder
    splits = _split_of(ingested, {**train, **held_out})
    assert sorted(path for path, split in splits.items() if split == own) == sorted(
        held_out.values()
    )
    assert {splits[path] for path in train.values()} <= {"train", *({"validation", "test"} - {own})}
    labels = {
        record["image/encoded"]: int(record["image/class/label"])
        for record in _records(ingested, own)
    }
    assert {held_out[data]: label for data, label in labels.items()} == {
        "cat/a.png": 0, "cat/b.png": 0, "dog/a.png": 1, "dog/b.png": 1
    }


def test_split_folders_with_other_classes_are_named(tmp_path):
    root = tmp_path / "images"
    _folder_of_tiny_pngs(root / "train", ["cat", "dog"], ["0.png"])
    _folder_of_tiny_pngs(root / "val", ["cat", "fox"], ["0.png"])
    with pytest.raises(PipelineError) as error:
        ingest.ingest(DataConfig(dataset=f"folder:{root}"), str(tmp_path / "out"))
    assert str(error.value) == (
        f"folder:{root}: the class folders of {root / 'val'} differ from train's "
        "(missing: dog; not in train: fox); every split needs the same"
    )


def test_a_class_folder_name_that_is_not_utf8_is_refused(tmp_path):
    root = tmp_path / "images"
    _folder_of_tiny_pngs(root, ["cat"], ["0.png"])
    os.makedirs(os.fsencode(root) + b"/caf\xe9")
    _write(os.fsencode(root) + b"/caf\xe9/0.png", testlib.encode(_pixels(1), "png"))
    with pytest.raises(PipelineError) as error:
        ingest.ingest(DataConfig(dataset=f"folder:{root}"), str(tmp_path / "out"))
    assert str(error.value) == (
        f"folder:{root}: the class folder name {root}/caf\\xe9 is not valid UTF-8; rename it"
    )
    assert not (tmp_path / "out").exists()


def test_links_are_followed_without_looping_and_dangling_ones_skipped(tmp_path):
    root = tmp_path / "images"
    images = _folder_of_tiny_pngs(root, ["cat", "dog"], ["0.png", "1.png"])
    outside = _write(str(tmp_path / "elsewhere" / "far.png"),
                     testlib.encode(_pixels(7, 6, 6), "png"))
    os.symlink(outside, root / "cat" / "far.png")
    os.symlink(".", root / "cat" / "loop")
    os.symlink(root / "dog", root / "cat" / "dogs")
    os.symlink(tmp_path / "missing.png", root / "dog" / "gone.png")
    ingested = ingest.ingest(DataConfig(dataset=f"folder:{root}"), str(tmp_path / "out"))
    # The dangling link is found twice: in dog, and in cat through `dogs`.
    assert set(ingested.skipped) == {
        ingested_dataset.Skipped(str(path), "unreadable: dangling symbolic link")
        for path in (root / "dog" / "gone.png", root / "cat" / "dogs" / "gone.png")
    }
    labels = collections.Counter(
        int(record["image/class/label"]) for record in _all_records(ingested)
    )
    # cat: its 2, far.png and dog's 2 through the `dogs` link; dog: its own 2.
    assert labels == {0: 5, 1: 2} and len(images) == 4


def _huge_png(width, height):
    """A real, valid 1-bit grey PNG of any size: its zero rows compress to little."""
    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def test_huge_and_extreme_images_are_skipped_from_their_headers(tmp_path, capsys):
    _image_folder(tmp_path / "images")
    huge = _write(str(tmp_path / "images" / "cat" / "huge.png"), _huge_png(20000, 20000))
    assert os.path.getsize(huge) < 400_000
    strip = _write(str(tmp_path / "images" / "dog" / "strip.png"),
                   testlib.encode(_pixels(3, 2, 60), "png"))
    argv = ["--dataset", f"folder:{tmp_path / 'images'}", "--output-dir", str(tmp_path / "out")]
    assert cli.main("ingest", argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines[:2]) == [
        f"skipped {huge}: too large: 20000x20000 pixels, over --max-pixels 50000000",
        f"skipped {strip}: extreme aspect ratio: 60x2 pixels, over 20:1",
    ]
    # A changed limit is a changed ingest; images 18-23 x 22 pixels are 396-506.
    assert cli.main("ingest", [*argv, "--max-pixels", "450"]) == 0
    reasons = [line for line in capsys.readouterr().out.splitlines() if "too large" in line]
    assert len(reasons) == 1 + 2 * 3
    with pytest.raises(PipelineError, match="huge.png: too large|strip.png: extreme aspect"):
        ingest.ingest(DataConfig(dataset=f"folder:{tmp_path / 'images'}", strict=True),
                      str(tmp_path / "strict"))


@pytest.mark.parametrize("image_format", image_formats.FORMATS)
def test_every_accepted_format_is_sized_and_decoded_like_training_and_serving(image_format):
    pixels = _pixels(5, 9, 31)
    data = testlib.encode(pixels, image_format)
    assert image_formats.detect(data) == image_format
    assert image_formats.header_size(data, image_format) == (9, 31)
    # The decoder of training, evaluation and the serving signature.
    assert preprocess_ops.decode_image(data, 3).shape == (9, 31, 3)


def test_a_fifo_a_device_link_or_a_huge_file_is_skipped_not_read(tmp_path, monkeypatch):
    root = tmp_path / "images"
    images = _folder_of_tiny_pngs(root, ["cat", "dog"], ["0.png", "1.png"])
    os.mkfifo(root / "cat" / "pipe.png")  # read, it would block forever
    os.symlink("/dev/zero", root / "dog" / "zero.png")  # read whole: all the memory
    limit = max(len(data) for data in images)
    with open(root / "dog" / "video.png", "wb") as file:
        file.truncate(limit + 1)
    monkeypatch.setattr(image_formats, "MAX_FILE_BYTES", limit)
    ingested = ingest.ingest(DataConfig(dataset=f"folder:{root}"), str(tmp_path / "out"))
    assert set(ingested.skipped) == {
        ingested_dataset.Skipped(str(root / "cat" / "pipe.png"), "unreadable: not a regular file"),
        ingested_dataset.Skipped(str(root / "dog" / "zero.png"), "unreadable: not a regular file"),
        ingested_dataset.Skipped(str(root / "dog" / "video.png"),
                                 f"unreadable: over {limit:,} bytes"),
    }
    assert sum(info.num_examples for info in ingested.splits.values()) == 4


def test_an_ingest_that_cannot_be_written_is_one_line_and_publishes_nothing(tmp_path):
    """Writes past 8 KB fail (RLIMIT_FSIZE, as on a full disk): one line, no
    ingest and no temporary directory left; without the limit it ingests."""
    command = [sys.executable, "-m", "pipeline.ingest", "--dataset", "digits",
               "--output-dir", "out"]
    status, line = testlib.run_on_a_full_disk(command, tmp_path, 8 << 10)
    assert status == 2, line
    assert line.startswith("python -m pipeline.ingest: error: cannot write the ingest of "
                           "digits into out (")
    assert "File too large" in line and line.endswith("(nothing was published)")
    assert os.listdir(tmp_path) == []
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env=testlib.child_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "manifest.json").exists()
