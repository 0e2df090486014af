"""Shared by the evaluate, export and predict tests.

A digits ingest at 67x67x1, a d2l AlexNet whose fc8 is fitted to it (so it has
a clear accuracy in seconds), its export, and `ServingSession`, which loads an
export the way TF Serving does. Each is made once per test process.
"""

import io

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from sklearn.linear_model import LogisticRegression

from alexnet_keras import AlexNet
from pipeline import export
from pipeline import ingest
from pipeline import preprocess_ops
from pipeline import transform
from pipeline.config import DataConfig

IMAGE_SIZE = (67, 67)
CHANNELS = 1
DATA_CONFIG = DataConfig(dataset="digits")

_cache = {}


def digits(tmp_path_factory):
    """(ingested, data_config) of sklearn's digits, ingested once."""
    if "digits" not in _cache:
        ingest_dir = str(tmp_path_factory.mktemp("digits") / "ingested")
        _cache["digits"] = ingest.ingest(DATA_CONFIG, ingest_dir), DATA_CONFIG
    return _cache["digits"]


def split_arrays(ingested, split, image_spec):
    """Images preprocessed for `image_spec` and labels of a split, in file order."""
    images, labels = [], []
    for batch_images, batch_labels in transform.make_dataset(
        ingested, split, image_spec, 256, training=False
    ):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


def encoded_split(ingested, split):
    """The ingested encoded images and labels of a split, in file order."""
    batches = list(ingested.encoded_batches(split, batch_size=1024))
    return (
        [image for images, _ in batches for image in images],
        np.concatenate([labels for _, labels in batches]),
    )


def _fitted_weights(tmp_path_factory):
    # Training the whole network to a clear accuracy takes minutes on two cores;
    # fitting fc8 to the fc7 features of a random initialisation by logistic
    # regression takes seconds and gives ~98% on digits. The d2l variant, because
    # the paper's initialisation (biases 1, weights N(0, 0.01)) makes fc7 a
    # constant plus a 1e-5 signal: a head fitted to that amplifies float32
    # rounding into 1e-3 differences between batched and single predictions.
    if "weights" not in _cache:
        ingested, _ = digits(tmp_path_factory)
        keras.utils.set_random_seed(0)
        model = AlexNet(
            variant="d2l",
            num_classes=ingested.num_classes,
            input_shape=(*IMAGE_SIZE, CHANNELS),
        )
        features = keras.Model(model.inputs, model.get_layer("fc7").output)
        images, labels = split_arrays(ingested, "train", model.image_spec)
        train_features = features.predict(images, batch_size=128, verbose=0)
        mean, std = train_features.mean(axis=0), train_features.std(axis=0) + 1e-6
        classifier = LogisticRegression(max_iter=300).fit(
            (train_features - mean) / std, labels
        )
        kernel = classifier.coef_.T / std[:, np.newaxis]
        bias = classifier.intercept_ - mean @ kernel
        model.get_layer("fc8").set_weights(
            [kernel.astype("float32"), bias.astype("float32")]
        )
        _cache["weights"] = model.get_weights()
    return _cache["weights"]


def trained_model(tmp_path_factory):
    """A fresh digits AlexNet with the fitted weights."""
    weights = _fitted_weights(tmp_path_factory)
    model = AlexNet(variant="d2l", num_classes=10, input_shape=(*IMAGE_SIZE, CHANNELS))
    model.set_weights(weights)
    return model


def worse_model(tmp_path_factory):
    """The trained model with fc8's classes rotated by one: nearly always wrong."""
    model = trained_model(tmp_path_factory)
    kernel, bias = model.get_layer("fc8").get_weights()
    model.get_layer("fc8").set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    return model


def trained_export(tmp_path_factory):
    """The version directory of the trained model's export (version 1)."""
    if "export" not in _cache:
        ingested, _ = digits(tmp_path_factory)
        base = str(tmp_path_factory.mktemp("exports") / "alexnet")
        _cache["export"] = export.export_saved_model(
            trained_model(tmp_path_factory),
            ingested.class_names,
            base,
            warmup_images=encoded_split(ingested, "test")[0][:3],
        )
    return _cache["export"]


def encode(image, image_format):
    """`image` (HxWxC uint8) as the bytes of a `image_format` file: JPEG and PNG
    through TensorFlow, the others ("bmp", "gif", ...) through Pillow."""
    image = np.asarray(image, dtype=np.uint8)
    if image_format == "png":
        return tf.io.encode_png(image).numpy()
    if image_format == "jpeg":
        return tf.io.encode_jpeg(image, quality=95).numpy()
    buffer = io.BytesIO()
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(buffer, format=image_format.upper())
    return buffer.getvalue()


def digit_image(ingested, index, size, channels):
    """Test image `index` of digits, resized to `size` with `channels`: real content
    at a size and colour layout the model was not given."""
    encoded, labels = encoded_split(ingested, "test")
    image = tf.cast(preprocess_ops.decode_image(encoded[index], channels), tf.float32)
    image = tf.image.resize(image, size, method="nearest")
    return tf.cast(image, tf.uint8).numpy(), int(labels[index])


def keras_probabilities(model, encoded_images):
    """What the export must answer: decode, preprocess_for_eval, model, softmax."""
    spec = model.image_spec
    images = tf.stack(
        [
            preprocess_ops.preprocess_for_eval(
                preprocess_ops.decode_image(image, spec.channels), spec
            )
            for image in encoded_images
        ]
    )
    return tf.nn.softmax(model(images, training=False)).numpy()


class ServingSession:
    """An export loaded the way TF Serving loads it.

    TF Serving runs TensorFlow's SavedModel loader with the tag "serve" into a
    graph and a session, then feeds and fetches the tensor names a SignatureDef
    lists: no Python `tf.function` is involved, so the export must stand alone.
    """

    def __init__(self, path):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(
                self.session, ["serve"], path
            )
        self.signatures = meta_graph.signature_def

    def run(self, inputs, signature_name="serving_default"):
        signature = self.signatures[signature_name]
        feed = {signature.inputs[name].name: value for name, value in inputs.items()}
        fetches = {name: info.name for name, info in signature.outputs.items()}
        return self.session.run(fetches, feed)

    def close(self):
        self.session.close()
