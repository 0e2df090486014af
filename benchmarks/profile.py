"""Where a training step's time goes: a TensorFlow profile, summed by layer and pass.

    python -m benchmarks.profile                      # paper variant, batch 64
    python -m benchmarks.profile --variant d2l --logdir runs/profile
    python -m benchmarks.profile --mixed-precision    # bfloat16, as pipeline.run's flag
    python -m benchmarks.profile --steps 1 --batch-size 4 --images 40  # smoke

Trains `--warmup-steps` untraced steps, then traces `--steps` steps of the
pipeline's own train step (`train_steps.make_train_step` under the one-replica
MirroredStrategy of `--strategy mirrored`, XLA off, SGD momentum, Winograd
3x3 convolutions where the pipeline uses them: d2l's at 224 pixels in float32;
with `--mixed-precision`, bfloat16 layers as `pipeline.run`'s flag sets them) fed by the
real input pipeline from JPEGs ingested from a folder. The trace is
written to `--logdir`, where TensorBoard's Profile tab shows it
(`pip install tensorboard-plugin-profile`, then `tensorboard --logdir DIR`).

It then prints, per layer, the milliseconds per step its TensorFlow ops ran in
the forward pass and in the backward pass (split into the gradients with
respect to the layer's input, activation gradients included, and to its
weights), the optimizer's update, and each row's share. Op times are summed
over TensorFlow's executor threads: two ops running at once on this machine's
two cores both count, so the sum exceeds the step's wall time, which is printed
beside it. XLA-compiled steps show as one
opaque cluster, so this profile is of the XLA-off step.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

from benchmarks import common

# A traced TensorFlow op is named "<node name>:<op type>".
_OP_EVENT = re.compile(r"^(?P<node>[^:]+):(?P<type>[A-Za-z0-9_]+)$")
# The Keras layer in a node name: ".../conv2_1/convolution/..." is conv2.
_LAYER = re.compile(r"/(?P<layer>(?:conv|lrn|pool|fc|dropout|pad|bn|relu)\d+|flatten)(?:_\d+)?/")
_OPTIMIZER_SCOPES = ("momentum_sgd/", "sgd/", "adam/", "SGD/", "Adam/")


def classify(node, op_type):
    """(row, column) of one op: the layer (or "optimizer", "input", "other")
    and the pass ("forward", "grad input", "grad weights", "update", "other")."""
    if node.startswith(_OPTIMIZER_SCOPES):
        return "optimizer", "update"
    if "Iterator" in op_type:
        return "input", "other"
    match = _LAYER.search("/" + node + "/")
    if match is None:
        return "loss and other", "other"
    layer = match.group("layer")
    if not node.startswith("gradient_tape/"):
        return layer, "forward"
    if "BackpropFilter" in op_type or "BiasAddGrad" in op_type or "MatMul_1" in node:
        return layer, "grad weights"
    return layer, "grad input"


def op_milliseconds(xspace_path):
    """{(row, column): summed op milliseconds} over the host's executor threads,
    and the summed milliseconds of the `train_step` calls on the Python thread."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xspace_path, "rb") as file:
        space.ParseFromString(file.read())
    totals = collections.Counter()
    function_ms = 0.0
    for plane in space.planes:
        if not plane.name.startswith("/host"):
            continue
        for line in plane.lines:
            if line.name == "python":
                function_ms += sum(
                    event.duration_ps / 1e9 for event in line.events
                    if plane.event_metadata[event.metadata_id].name == "train_step"
                )
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                match = _OP_EVENT.match(plane.event_metadata[event.metadata_id].name)
                if match is None:
                    continue
                key = classify(match.group("node"), match.group("type"))
                totals[key] += event.duration_ps / 1e9
    return totals, function_ms


def print_breakdown(totals, steps, wall_ms, gflop_per_image, batch_size, function_ms):
    columns = ("forward", "grad input", "grad weights", "update", "other")
    rows = collections.defaultdict(dict)
    for (row, column), ms in totals.items():
        rows[row][column] = ms / steps
    op_total = sum(sum(row.values()) for row in rows.values())

    def order(name):
        match = re.match(r"([a-z]+)(\d*)", name)
        index = int(match.group(2)) if match.group(2) else 99
        return (name in ("optimizer", "input", "loss and other"), index, name)

    print(f"\n{'ms per step':<16}" + "".join(f"{c:>14}" for c in columns)
          + f"{'total':>10}{'share':>8}")
    for name in sorted(rows, key=order):
        values = rows[name]
        total = sum(values.values())
        print(f"{name:<16}" + "".join(
            f"{values[c]:14.1f}" if c in values else f"{'':>14}" for c in columns
        ) + f"{total:10.1f}{total / op_total:8.1%}")
    print(f"{'all ops':<16}" + "".join(
        f"{sum(r.get(c, 0.0) for r in rows.values()):14.1f}" for c in columns
    ) + f"{op_total:10.1f}{1:8.1%}")
    print(f"\nStep wall time {wall_ms:.0f} ms ({batch_size / wall_ms * 1000:.1f} images/s, "
          f"{gflop_per_image * batch_size / wall_ms * 1000:.0f} GFLOP/s); op time summed "
          f"over executor threads {op_total:.0f} ms ({op_total / wall_ms:.2f}x the wall "
          "time: ops overlap on the cores).")
    print(f"The train_step call takes {function_ms / steps:.0f} ms of it; Python and the "
          f"loop add {max(wall_ms - function_ms / steps, 0.0):.1f} ms per step, the most "
          "that running several steps per call (steps_per_execution) could save.")


def main(argv=None):
    # TensorFlow reads the process set-up when it is imported, so it and the
    # pipeline are imported here, never at the top.
    common.prepare_process()
    import tensorflow as tf

    from pipeline.training import distribute
    from pipeline.training import train_steps
    from pipeline.data import input_pipeline
    from pipeline.config import TrainConfig

    input_shapes = common.input_shapes()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--variant", choices=tuple(input_shapes), default="paper")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="traced training steps")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untraced first steps")
    parser.add_argument("--images", type=int, default=None,
                        help="JPEGs to write (default: enough for one pass of the steps)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="layers in bfloat16, as pipeline.run --mixed-precision on a CPU")
    parser.add_argument("--logdir", default=None,
                        help="where to keep the trace for TensorBoard (default: a "
                             "temporary directory, deleted afterwards)")
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = common.images_for(args.warmup_steps, args.steps, args.batch_size)
    if min(args.batch_size, args.steps, args.warmup_steps, args.images) < 1:
        parser.error("every count must be at least 1")

    train_config = TrainConfig(batch_size=args.batch_size, optimizer="sgd",
                               learning_rate=0.01, lr_schedule="constant", warmup_epochs=0.0,
                               mixed_precision=args.mixed_precision)
    strategy = distribute.make_strategy("mirrored")
    with (tempfile.TemporaryDirectory() as directory,
          common.built(args.variant, input_shapes[args.variant], strategy,
                       train_config) as (model, optimizer)):
        ingested = common.ingest_jpegs(directory, args.images)
        iterator = iter(input_pipeline.distribute_dataset(
            strategy, ingested, "train", model.image_spec, args.batch_size, training=True,
            seed=0,
            repeat=True,
        ))
        step = train_steps.make_train_step(model, optimizer, strategy, args.batch_size)
        for _ in range(args.warmup_steps):
            [float(value) for value in step(iterator)]
        logdir = args.logdir or os.path.join(directory, "profile")
        times = []
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(args.steps):
                start = time.perf_counter()
                [float(value) for value in step(iterator)]
                times.append(time.perf_counter() - start)
        finally:
            tf.profiler.experimental.stop()
        traces = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True),
                        key=os.path.getmtime)
        totals, function_ms = op_milliseconds(traces[-1])
    precision = "bfloat16" if args.mixed_precision else "float32"
    print(f"\n{args.variant} AlexNet {input_shapes[args.variant]}, {precision}, batch "
          f"{args.batch_size}, XLA off, {args.steps} traced steps; {common.cpu_model()}"
          + (f"; trace in {logdir}" if args.logdir else ""))
    # The wall time of the traced steps, to compare with the summed trace times.
    print_breakdown(totals, args.steps, 1000 * sum(times) / args.steps,
                    common.training_gflop_per_image(model), args.batch_size, function_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
