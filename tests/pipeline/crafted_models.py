"""SavedModels made to run code when loaded: each writes a marker file as
`tf.saved_model.load` loads it, the way a hostile one would do anything else.

`writes_on_load_tf2` hides the write in a resource's initializer, which a TF2
load runs while it restores the objects; `writes_on_load_tf1` makes it the
main op, which a TF1 load runs after restoring the variables. Both have a
`serving_default` taking `image_bytes`, as an export of this package does.
"""

import os

import tensorflow as tf


class _WritesOnLoad(tf.saved_model.experimental.TrackableResource):
    """A resource (a float variable's handle) whose initializer writes `marker`."""

    def __init__(self, marker):
        self._marker = marker
        super().__init__()

    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="crafted")

    def _initialize(self):
        tf.io.write_file(self._marker, "ran")
        return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=0.1)


def writes_on_load_tf2(path, marker, variables=()):
    """A TF2 SavedModel at `path` writing `marker` when loaded, holding the
    `tf.Variable`s named and valued by `variables` ((name, value) pairs)."""
    module = tf.Module()
    module.resource = _WritesOnLoad(marker)
    module.weights = [tf.Variable(value, name=name) for name, value in variables]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        value = tf.raw_ops.ReadVariableOp(resource=module.resource.resource_handle,
                                          dtype=tf.float32)
        return {"probabilities": tf.fill([tf.size(image_bytes), 10], value)}

    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


def writes_on_load_tf1(path, marker):
    """A TF1 SavedModel at `path`, with a variable, whose main op writes `marker`."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        images = tf.compat.v1.placeholder(tf.string, [None], name="image_bytes")
        weight = tf.compat.v1.Variable(0.1, name="conv1/kernel")
        probabilities = tf.fill([tf.size(images), 10], weight)
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(path)
        signature = tf.compat.v1.saved_model.predict_signature_def(
            {"image_bytes": images}, {"probabilities": probabilities})
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map={"serving_default": signature},
            main_op=tf.io.write_file(marker, "ran"))
        builder.save()
    return path


MAKERS = {"tf2": writes_on_load_tf2, "tf1": writes_on_load_tf1}


def dangerous(kind, path):
    """A crafted SavedModel of `kind` ("tf2" or "tf1") at `path` and its marker
    path, once shown to write the marker when `tf.saved_model.load` loads it
    (the marker is removed again): what a test then refuses is really harmful."""
    marker = f"{path}.marker"
    MAKERS[kind](path, marker)
    assert not os.path.exists(marker)
    tf.saved_model.load(path)
    assert os.path.exists(marker), "the crafted model did not run its code when loaded"
    os.remove(marker)
    return path, marker
