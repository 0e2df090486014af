"""`AdaptiveAveragePooling` against `torch.nn.AdaptiveAvgPool2d`, on maps
larger than, equal to and smaller than its output."""

import keras
import numpy as np
import pytest

from alexnet_keras.adaptive_average_pooling import AdaptiveAveragePooling
from alexnet_keras.adaptive_average_pooling import pooling_matrix

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("height, width", [(1, 1), (2, 3), (4, 5), (6, 6), (7, 9), (13, 13),
                                           (20, 11)])
def test_the_bins_are_pytorchs(height, width):
    x = np.random.default_rng(height * width).standard_normal((2, height, width, 5))
    x = x.astype("float32")
    ours = keras.ops.convert_to_numpy(AdaptiveAveragePooling(6)(x))
    expected = torch.nn.AdaptiveAvgPool2d(6)(
        torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert ours.shape == (2, 6, 6, 5)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_a_smaller_map_is_repeated_and_a_larger_one_averaged():
    np.testing.assert_array_equal(pooling_matrix(1, 3), [[1], [1], [1]])
    np.testing.assert_array_equal(pooling_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    # 13 to 6, as at 224 pixels: windows of 3 positions, overlapping by one.
    assert [tuple(np.flatnonzero(row)) for row in pooling_matrix(13, 6)] == [
        (0, 1, 2), (2, 3, 4), (4, 5, 6), (6, 7, 8), (8, 9, 10), (10, 11, 12)]


def test_it_saves_and_checks_its_argument(tmp_path):
    inputs = keras.Input((3, 5, 2))
    model = keras.Model(inputs, AdaptiveAveragePooling((2, 4))(inputs))
    model.save(tmp_path / "pool.keras")
    loaded = keras.saving.load_model(tmp_path / "pool.keras")
    x = np.arange(30, dtype="float32").reshape(1, 3, 5, 2)
    np.testing.assert_array_equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="`output_size` must be a positive int"):
        AdaptiveAveragePooling(0)
