"""The backend side of test_backends.py, run in a child process with KERAS_BACKEND set
(Keras fixes its backend when it is imported):

    KERAS_BACKEND=torch python tests/alexnet_keras/backend_child.py run WORK_DIR
    KERAS_BACKEND=jax python tests/alexnet_keras/backend_child.py run WORK_DIR torch
    KERAS_BACKEND=torch python tests/alexnet_keras/backend_child.py load WORK_DIR jax

`run` loads WORK_DIR/seeded.keras and inputs.npz and writes WORK_DIR/<backend>.npz:
the logits, an LRN output and preprocessed images, the loss before and after a
few `fit` steps, the trained model's logits, whether all that imported
TensorFlow, and the logits of the other backends' `<name>.keras` files it is
given; it saves the trained model as WORK_DIR/<backend>.keras. `load` writes
WORK_DIR/<backend>-loads-<name>.npz, the logits of <name>.keras alone.
test_backends.py calls `run` itself for the TensorFlow backend.
"""

import os
import sys

import keras
import numpy as np

from alexnet_keras import LocalResponseNormalization

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def logits(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


def run(work_dir, *others):
    inputs = np.load(os.path.join(work_dir, "inputs.npz"))
    model = keras.saving.load_model(os.path.join(work_dir, "seeded.keras"))
    results = {
        "logits": logits(model, inputs["images"]),
        "lrn": keras.ops.convert_to_numpy(LocalResponseNormalization()(inputs["lrn_input"])),
    }
    for name in inputs.files:
        if name.startswith("raw"):
            results[name] = keras.ops.convert_to_numpy(model.image_spec.preprocess(inputs[name]))

    images, labels = inputs["train_images"], inputs["train_labels"]
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=LOSS)
    results["loss_before"] = keras.ops.convert_to_numpy(LOSS(labels, model(images)))
    model.fit(images, labels, batch_size=16, epochs=2, shuffle=False, verbose=0)
    results["loss_after"] = keras.ops.convert_to_numpy(LOSS(labels, model(images)))
    results["trained_logits"] = logits(model, inputs["images"])
    # Before saving: Keras' serializer itself imports TensorFlow where it is
    # installed (`tf.available` in keras.src.saving.serialization_lib).
    results["tensorflow_imported"] = "tensorflow" in sys.modules
    model.save(os.path.join(work_dir, f"{keras.backend.backend()}.keras"))
    for name in others:
        other = keras.saving.load_model(os.path.join(work_dir, f"{name}.keras"))
        results[f"loads_{name}"] = logits(other, inputs["images"])
    np.savez(os.path.join(work_dir, f"{keras.backend.backend()}.npz"), **results)


def load(work_dir, name):
    inputs = np.load(os.path.join(work_dir, "inputs.npz"))
    model = keras.saving.load_model(os.path.join(work_dir, f"{name}.keras"))
    np.savez(
        os.path.join(work_dir, f"{keras.backend.backend()}-loads-{name}.npz"),
        logits=logits(model, inputs["images"]),
    )


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"run": run, "load": load}[command](*arguments)
