"""TF Serving's base path: a SavedModel per numbered version directory.

    saved_models/alexnet/1/saved_model.pb, variables/, assets.extra/

Only directories named by an integer are versions; `resolve_saved_model`
takes a version directory or a base path (its newest version).
"""

import os

import tensorflow as tf

from pipeline.errors import PipelineError


def versions(export_dir):
    """The integer version numbers present in `export_dir`, ascending."""
    if not tf.io.gfile.isdir(export_dir):
        return []
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(export_dir)]
    return sorted(
        int(name)
        for name in names
        if name.isdigit() and tf.io.gfile.isdir(os.path.join(export_dir, name))
    )


def resolve_saved_model(path):
    """A version directory as given, or the newest version of a base directory."""
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise PipelineError(
            f"{path} is neither a SavedModel nor a directory of numbered versions; "
            "pass a version directory such as saved_models/alexnet/1 or its parent"
        )
    return os.path.join(path, str(found[-1]))
