"""Tests of pipeline.preprocess_ops: decoding and evaluation preprocessing."""

import numpy as np
import pytest
import tensorflow as tf

import testlib
from alexnet_keras import ImageSpec
from pipeline.data import preprocess_ops


@pytest.mark.parametrize("image_format", ["jpeg", "png", "bmp", "gif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_decode_image_formats_and_channels(image_format, channels):
    pixels = testlib.coloured(np.random.default_rng(1), 0, 10, 14)
    image = preprocess_ops.decode_image(testlib.encode(pixels, image_format), channels)
    assert image.shape == (10, 14, channels) and image.dtype == tf.uint8
    if image_format in ("png", "bmp") and channels == 3:
        np.testing.assert_array_equal(image, pixels)


@pytest.mark.parametrize("image_format", ["png", "bmp"])
def test_decode_image_grey(image_format):
    pixels = np.random.default_rng(2).integers(0, 256, (6, 5, 1), np.uint8)
    np.testing.assert_array_equal(
        preprocess_ops.decode_image(testlib.encode(pixels, image_format), 1), pixels
    )
    np.testing.assert_array_equal(
        preprocess_ops.decode_image(testlib.encode(pixels, image_format), 3),
        np.repeat(pixels, 3, axis=-1),
    )


@pytest.mark.parametrize("source_channels", [1, 2, 3, 4])
def test_to_channels_converts_every_layout_and_keeps_grey_exact(source_channels):
    rng = np.random.default_rng(source_channels)
    pixels = rng.integers(0, 256, (16, 16, source_channels), np.uint8)
    # Every grey level once, so that grey is shown to come back unchanged.
    pixels[..., 0] = np.arange(256, dtype=np.uint8).reshape(16, 16)
    colour = source_channels >= 3
    rgb = pixels[..., :3] if colour else np.repeat(pixels[..., :1], 3, axis=-1)
    grey = (np.floor(rgb / 255 @ np.array([0.2989, 0.587, 0.114]) * 255.5)[..., None]
            if colour else pixels[..., :1])

    np.testing.assert_array_equal(preprocess_ops.to_channels(pixels, 3), rgb)
    np.testing.assert_array_equal(preprocess_ops.to_channels(pixels, 1), grey)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
    def unknown_channels(image):
        return preprocess_ops.to_channels(image, 1), preprocess_ops.to_channels(image, 3)

    in_graph = unknown_channels(pixels)
    np.testing.assert_array_equal(in_graph[0], grey)
    np.testing.assert_array_equal(in_graph[1], rgb)


def test_decode_image_rejects_corrupt_bytes_and_works_in_a_graph():
    jpeg = testlib.encode(testlib.coloured(np.random.default_rng(3), 1, 32, 32), "jpeg")
    for corrupt in (jpeg[: len(jpeg) // 2], b"plain text"):
        with pytest.raises(tf.errors.InvalidArgumentError):
            preprocess_ops.decode_image(corrupt, 3)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(image_bytes):
        images = tf.map_fn(
            lambda one: preprocess_ops.preprocess_for_eval(
                preprocess_ops.decode_image(one, 3), ImageSpec(8, 8, 3)
            ),
            image_bytes,
            fn_output_signature=tf.TensorSpec([8, 8, 3], tf.float32),
        )
        return images

    assert serve(tf.constant([jpeg, jpeg])).shape == (2, 8, 8, 3)


def test_preprocess_for_eval_range_shape_and_central_crop():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (30, 40, 3), np.uint8)
    spec = ImageSpec(16, 12, 3)
    single = preprocess_ops.preprocess_for_eval(image, spec)
    assert single.shape == (16, 12, 3) and single.dtype == tf.float32
    assert -127.5 <= single.numpy().min() and single.numpy().max() <= 127.5

    batch = preprocess_ops.preprocess_for_eval(np.stack([image, image[::-1]]), spec)
    assert batch.shape == (2, 16, 12, 3)
    np.testing.assert_allclose(batch[0], single, atol=1e-6)
    np.testing.assert_allclose(
        preprocess_ops.preprocess_for_eval(image.astype(np.float32), spec),
        single,
        atol=1e-6,
    )
    grey = ImageSpec(4, 4, 1)
    black, white = np.zeros((9, 9, 1), np.uint8), np.full((9, 9, 1), 255, np.uint8)
    assert np.all(preprocess_ops.preprocess_for_eval(black, grey) == -127.5)
    assert np.all(preprocess_ops.preprocess_for_eval(white, grey) == 127.5)
    # The model's own scale: d2l takes [-1, 1].
    scaled = ImageSpec(4, 4, 1, pixel_scale=1 / 127.5)
    np.testing.assert_allclose(preprocess_ops.preprocess_for_eval(white, scaled), 1.0)

    # The central crop leaves out a 2-pixel frame around a 64x64 image (it keeps
    # the central 87.5% of each side, 56 pixels).
    framed = np.zeros((64, 64, 1), np.uint8)
    framed[2:-2, 2:-2] = 255
    np.testing.assert_allclose(
        preprocess_ops.preprocess_for_eval(framed, ImageSpec(32, 32, 1)), 127.5, atol=1e-4
    )


def test_preprocess_for_eval_in_a_graph_with_unknown_sizes():
    function = tf.function(
        lambda images: preprocess_ops.preprocess_for_eval(images, ImageSpec(16, 16, 3)),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)],
    )
    output = function.get_concrete_function().structured_outputs
    assert output.shape.as_list() == [None, 16, 16, 3]
    assert function(tf.zeros([2, 20, 30, 3], tf.uint8)).shape == (2, 16, 16, 3)


def _smooth_image(rng, size, channels):
    """Pixels that vary like a photograph's: a 7x7 grid of random colours, enlarged."""
    coarse = rng.uniform(0, 255, (7, 7, channels)).astype(np.float32)
    return tf.cast(tf.round(tf.image.resize(coarse, size)), tf.uint8).numpy()


@pytest.mark.parametrize(
    "spec", [ImageSpec(67, 67, 3), ImageSpec(65, 80, 1, pixel_scale=1 / 127.5),
             ImageSpec(24, 24, 3, crop_fraction=0.5)]
)
def test_image_spec_preprocess_is_preprocess_for_eval(spec):
    # ImageSpec.preprocess (keras.ops, any backend) against the serving op, on
    # images smaller and larger than the input, square, wide, tall and a strip.
    rng = np.random.default_rng(5)
    for size in ((8, 8), (30, 41), (67, 67), (120, 90), (500, 301), (1, 50), (1000, 20)):
        image = _smooth_image(rng, size, spec.channels)
        np.testing.assert_allclose(
            np.asarray(spec.preprocess(image)) / spec.pixel_scale,
            preprocess_ops.preprocess_for_eval(image, spec).numpy() / spec.pixel_scale,
            atol=1e-3, err_msg=str(size),
        )
    # Noise, where neighbours differ by up to 255: the two place a sample in
    # float32 (about 3e-5 pixel apart at 500 pixels), which that slope turns
    # into up to 1.2e-2 here.
    noise = rng.integers(0, 256, (2, 500, 301, spec.channels), np.uint8)
    np.testing.assert_allclose(
        np.asarray(spec.preprocess(noise)) / spec.pixel_scale,
        preprocess_ops.preprocess_for_eval(noise, spec).numpy() / spec.pixel_scale,
        atol=2e-2,
    )


def test_ten_crops_are_the_papers_patches_pixel_for_pixel():
    # A 256x256 image and a 224 input at crop fraction 224/256: one input
    # pixel per output pixel, so every patch is an exact slice of the image,
    # as in the paper (224 patches of the 256 square).
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    spec = ImageSpec(224, 224, 3, pixel_offset=0.0, crop_fraction=224 / 256)
    crops = preprocess_ops.ten_crops(image, spec).numpy()
    assert crops.shape == (10, 224, 224, 3)
    patches = [image[:224, :224], image[:224, 32:], image[32:, :224], image[32:, 32:],
               image[16:240, 16:240]]
    expected = np.stack(patches + [patch[:, ::-1] for patch in patches]).astype(np.float32)
    np.testing.assert_allclose(crops, expected, atol=1e-3)
    # The centre patch is the evaluation crop.
    np.testing.assert_allclose(crops[4], preprocess_ops.preprocess_for_eval(image, spec),
                               atol=1e-4)


def test_ten_crops_of_a_wide_batch_come_from_its_central_square():
    # 100 rows, 300 columns, a 50x50 input at crop fraction 0.5: one input
    # pixel per output pixel again, and the corners are those of the central
    # 100x100 square (columns 100-199), as the paper's were of the 256x256 centre.
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 100, 300, 1), dtype=np.uint8)
    spec = ImageSpec(50, 50, 1, pixel_offset=0.0, crop_fraction=0.5)
    crops = preprocess_ops.ten_crops(images, spec).numpy()
    assert crops.shape == (2, 10, 50, 50, 1)
    for image, image_crops in zip(images, crops):
        square = image[:, 100:200]
        patches = [square[:50, :50], square[:50, 50:], square[50:, :50], square[50:, 50:],
                   square[25:75, 25:75]]
        expected = np.stack(patches + [patch[:, ::-1] for patch in patches])
        # Box corners are float32 fractions of 299: sampling lands within
        # 1e-5 of a pixel centre, a few thousandths of a grey level.
        np.testing.assert_allclose(image_crops, expected.astype(np.float32), atol=0.01)
