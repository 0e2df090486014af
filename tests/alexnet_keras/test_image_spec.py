import numpy as np
import pytest

from alexnet_keras import ImageSpec


def test_preprocess_crops_the_centre_resizes_and_normalizes():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (30, 40, 3), np.uint8)
    spec = ImageSpec(16, 12, 3)
    single = np.asarray(spec.preprocess(image))
    assert single.shape == (16, 12, 3) and single.dtype == np.float32
    batch = np.asarray(spec.preprocess(np.stack([image, image[::-1]])))
    assert batch.shape == (2, 16, 12, 3)
    np.testing.assert_allclose(batch[0], single, atol=1e-5)
    np.testing.assert_allclose(spec.preprocess(image.astype(np.float32)), single, atol=1e-5)

    grey = ImageSpec(4, 4, 1)
    np.testing.assert_array_equal(grey.preprocess(np.zeros((9, 9, 1), np.uint8)), -127.5)
    white = np.full((3, 2, 1), 255, np.uint8)
    np.testing.assert_allclose(ImageSpec(4, 4, 1, pixel_scale=1 / 127.5).preprocess(white), 1.0)
    # The central 87.5% of each side of a 64x64 image is 56 pixels: a 2-pixel
    # frame is left out, and with crop_fraction=1 it is sampled.
    framed = np.zeros((64, 64, 1), np.uint8)
    framed[2:-2, 2:-2] = 255
    np.testing.assert_allclose(ImageSpec(32, 32, 1).preprocess(framed), 127.5, atol=1e-4)
    whole = np.asarray(ImageSpec(32, 32, 1, crop_fraction=1.0).preprocess(framed))
    assert whole[0, 0, 0] == -127.5 and whole[16, 16, 0] == 127.5


def test_preprocess_names_the_channels_it_needs():
    with pytest.raises(ValueError, match=r"\(height, width, 1\).*shape=\(10, 12, 3\)"):
        ImageSpec(8, 8, 1).preprocess(np.zeros((10, 12, 3), np.uint8))


@pytest.mark.parametrize("crop_fraction", [0.0, 1.5, -0.5])
def test_crop_fraction_is_checked(crop_fraction):
    with pytest.raises(ValueError, match=f"crop_fraction={crop_fraction}"):
        ImageSpec(8, 8, 3, crop_fraction=crop_fraction)
