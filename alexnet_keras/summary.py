"""Print AlexNet's layers with their output shapes and parameter counts.

    python -m alexnet_keras.summary --variant d2l --input-shape 224,224,1 --num-classes 10

The shapes come from building the functional model, so every layer is listed
even where a tutorial's dummy forward pass would fail.
"""

import argparse
import sys

from alexnet_keras import alexnet


def _input_shape(text):
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HEIGHT,WIDTH,CHANNELS such as 227,227,3, got {text!r}"
        )
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"expected three positive integers HEIGHT,WIDTH,CHANNELS, got {text!r}"
        )
    return dims


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_keras.summary", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--variant", choices=alexnet.VARIANTS, default="paper")
    parser.add_argument(
        "--input-shape",
        type=_input_shape,
        default=None,
        help="HEIGHT,WIDTH,CHANNELS (default: the variant's own, e.g. 227,227,3 for paper)",
    )
    parser.add_argument("--num-classes", type=int, default=None,
                        help="number of classes (default: 10 for d2l, else 1000)")
    parser.add_argument("--normalization", choices=alexnet.NORMALIZATIONS,
                        default=None, help="default: the variant's own")
    args = parser.parse_args(argv)

    num_classes = args.num_classes
    if num_classes is None:
        num_classes = 10 if args.variant == "d2l" else 1000
    try:
        model = alexnet.AlexNet(
            variant=args.variant,
            num_classes=num_classes,
            input_shape=args.input_shape,
            normalization=args.normalization,
        )
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    model.summary(line_length=80)
    return 0


if __name__ == "__main__":
    sys.exit(main())
