"""Each convolution's three training passes alone, against the matmul peak and PyTorch.

    python -m benchmarks.convolutions                     # both variants, every native precision
    python -m benchmarks.convolutions --variant paper --precision float32
    python -m benchmarks.convolutions --batch-size 2 --repeats 1  # smoke

For every Conv2D layer of the variant, at the layer's own shapes, it times
the three convolutions a training step runs: the forward pass (`Conv2D`),
the gradient with respect to the layer's input (`Conv2DBackpropInput`; conv1
has none, its input is the data) and the gradient with respect to its kernel
(`Conv2DBackpropFilter`). Each is TensorFlow's op alone in a `tf.function`
(oneDNN's direct convolution; XLA off), the fastest of `--repeats` calls. The
same convolution in PyTorch (`torch.nn.functional.conv2d` and
`aten.convolution_backward`, NCHW as PyTorch users run it) is the reference
beside it, measured in the same run. Both run on oneDNN, so the ratio shows
what each framework's way of calling the same kernels costs: the memory
layout it hands them and the reorders around them.

It prints each pass's milliseconds, its GFLOP/s as a share of the matmul peak
of its precision (`benchmarks.train.matmul_peak`), PyTorch's milliseconds,
and the sums: the convolutions alone are a floor under the step's time, and
so a ceiling on its images/s, whatever is done around them. The d2l model's
3x3 convolutions train by Winograd in float32 (`pipeline.training.winograd`); this
times the direct convolution they would otherwise be.
"""

import argparse
import sys
from typing import NamedTuple

from benchmarks import common

_PASSES = ("forward", "grad input", "grad weights")


class Convolution(NamedTuple):
    """One Conv2D layer of the model, shapes without the batch."""

    name: str
    input_shape: tuple
    output_shape: tuple
    kernel_shape: tuple
    stride: int
    padding: str
    multiply_adds: int  # per image, in each of the three passes


def conv_layers(variant, input_shape):
    """The variant's Conv2D layers as `Convolution`s, read from the model the
    pipeline builds."""
    from pipeline.training import models
    from pipeline.config import ModelConfig

    height, width, channels = input_shape
    model = models.build_model(
        ModelConfig(variant=variant, image_size=(height, width), channels=channels),
        common.NUM_CLASSES)
    layers = []
    for layer in model.layers:
        if layer.__class__.__name__ != "Conv2D":
            continue
        if layer.groups != 1 or layer.strides[0] != layer.strides[1]:
            raise ValueError(f"{layer.name}: only ungrouped square-stride convolutions are timed")
        layers.append(Convolution(
            layer.name, tuple(layer.input.shape[1:]), tuple(layer.output.shape[1:]),
            tuple(layer.kernel.shape), layer.strides[0], layer.padding,
            common.multiply_adds(layer)))
    return layers


def tensorflow_ms(conv, precision, batch_size, repeats, input_gradient):
    """{pass: ms} of TensorFlow's ops, the fastest of `repeats` calls each."""
    import tensorflow as tf

    strides = [1, conv.stride, conv.stride, 1]
    padding = conv.padding.upper()
    inputs = tf.cast(tf.random.normal([batch_size, *conv.input_shape]), precision)
    kernel = tf.cast(tf.random.normal(conv.kernel_shape) * 0.05, precision)
    output_gradient = tf.cast(tf.random.normal([batch_size, *conv.output_shape]), precision)
    passes = {
        "forward": lambda: tf.raw_ops.Conv2D(
            input=inputs, filter=kernel, strides=strides, padding=padding),
        "grad weights": lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=inputs, filter_sizes=conv.kernel_shape, out_backprop=output_gradient,
            strides=strides, padding=padding),
    }
    if input_gradient:
        passes["grad input"] = lambda: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=inputs.shape, filter=kernel, out_backprop=output_gradient,
            strides=strides, padding=padding)
    # Graphs, as the train step runs its ops, traced once here: a concrete
    # function's calls never retrace (nor warn that they might).
    passes = {name: tf.function(function).get_concrete_function()
              for name, function in passes.items()}
    return {name: 1000 * min(common.latencies(lambda: function().numpy(), repeats, warmup=1))
            for name, function in passes.items()}


def torch_ms(conv, precision, batch_size, repeats, input_gradient):
    """{pass: ms} of the same convolution in PyTorch; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    height, width, channels = conv.input_shape
    out_height, out_width, filters = conv.output_shape
    kernel_height, kernel_width, _, _ = conv.kernel_shape
    stride = conv.stride
    if conv.padding == "same" and (stride != 1 or kernel_height % 2 == 0
                                   or kernel_width % 2 == 0):
        raise ValueError("PyTorch's symmetric padding matches Keras' 'same' only for odd "
                         "kernels at stride 1")
    pad = (kernel_height // 2, kernel_width // 2) if conv.padding == "same" else (0, 0)
    dtype = getattr(torch, precision)
    inputs = torch.randn(batch_size, channels, height, width).to(dtype)
    kernel = (torch.randn(filters, channels, kernel_height, kernel_width) * 0.05).to(dtype)
    output_gradient = torch.randn(batch_size, filters, out_height, out_width).to(dtype)

    def backward(mask):
        return torch.ops.aten.convolution_backward(
            output_gradient, inputs, kernel, None, [stride, stride], list(pad), [1, 1],
            False, [0, 0], 1, mask)

    passes = {
        "forward": lambda: torch.nn.functional.conv2d(inputs, kernel, stride=stride,
                                                      padding=pad),
        "grad weights": lambda: backward([False, True, False]),
    }
    if input_gradient:
        passes["grad input"] = lambda: backward([True, False, False])
    with torch.no_grad():
        return {name: 1000 * min(common.latencies(function, repeats, warmup=1))
                for name, function in passes.items()}


def measure(layers, precision, batch_size, repeats):
    """[(layer name, GFLOP per pass, {pass: TensorFlow ms}, {pass: PyTorch ms} or None)]."""
    rows = []
    for index, conv in enumerate(layers):
        # conv1's input is the data: training needs no gradient for it.
        arguments = (conv, precision, batch_size, repeats, index > 0)
        rows.append((conv.name, 2 * batch_size * conv.multiply_adds / 1e9,
                     tensorflow_ms(*arguments), torch_ms(*arguments)))
    return rows


def print_table(variant, input_shape, precision, batch_size, peak, rows):
    print(f"\n{variant} AlexNet {input_shape}, {precision}, batch {batch_size}; matmul peak "
          f"{peak:.0f} GFLOP/s")
    print(f"{'':<8}{'GFLOP':>7}" + "".join(f"{name + ' ms':>16}{'of peak':>9}{'PyTorch':>9}"
                                           for name in _PASSES))
    tensorflow_total = pytorch_total = total_gflop = 0.0
    have_pytorch = all(pytorch is not None for *_, pytorch in rows)
    for name, layer_gflop, tensorflow, pytorch in rows:
        cells = []
        for pass_name in _PASSES:
            if pass_name not in tensorflow:
                cells.append(f"{'-':>16}{'':>9}{'':>9}")
                continue
            ms = tensorflow[pass_name]
            reference = f"{pytorch[pass_name]:9.1f}" if have_pytorch else f"{'-':>9}"
            cells.append(f"{ms:16.1f}{layer_gflop / ms * 1000 / peak:9.0%}{reference}")
            tensorflow_total += ms
            total_gflop += layer_gflop
            if have_pytorch:
                pytorch_total += pytorch[pass_name]
        print(f"{name:<8}{layer_gflop:7.1f}" + "".join(cells))
    share = total_gflop / tensorflow_total * 1000 / peak
    print(f"All passes: {tensorflow_total:.0f} ms, {share:.0%} of the peak; at most "
          f"{batch_size / tensorflow_total * 1000:.1f} images/s if nothing else in the step "
          "took time.")
    if have_pytorch:
        print(f"PyTorch: {pytorch_total:.0f} ms; PyTorch / TensorFlow "
              f"{pytorch_total / tensorflow_total:.2f}x")


def main(argv=None):
    # TensorFlow reads the process set-up when it is imported, so it and the
    # pipeline are imported in the functions above, never at the top.
    common.prepare_process()
    from benchmarks import train

    # Grouped convolutions (paper_2gpu) are measured whole, by benchmarks.train.
    input_shapes = {variant: shape for variant, shape in common.input_shapes().items()
                    if variant != "paper_2gpu"}
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.convolutions", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--variant", choices=tuple(input_shapes), action="append",
                        default=None, help="only these variants (default: every one)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), action="append",
                        default=None,
                        help="only these precisions (default: every one the CPU runs natively)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls of each pass; the fastest counts")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.repeats) < 1:
        parser.error("--batch-size and --repeats must be at least 1")
    precisions = args.precision or train.precisions()
    peaks = {precision: train.matmul_peak(precision) for precision in precisions}
    print(f"{common.cpu_model()}; flags: {' '.join(train.cpu_flags()) or 'unknown'}")
    for variant in args.variant or input_shapes:
        layers = conv_layers(variant, input_shapes[variant])
        for precision in precisions:
            rows = measure(layers, precision, args.batch_size, args.repeats)
            print_table(variant, input_shapes[variant], precision, args.batch_size,
                        peaks[precision], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
