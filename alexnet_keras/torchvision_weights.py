"""torchvision's ImageNet AlexNet weights as an `AlexNet(variant="torchvision")`.

    python -m alexnet_keras.torchvision_weights alexnet-owt-7be5be79.pth \\
        --output alexnet_imagenet.keras

torchvision publishes its AlexNet's ImageNet weights as
`AlexNet_Weights.IMAGENET1K_V1`, the state dict `alexnet-owt-7be5be79.pth`
(https://download.pytorch.org/models/alexnet-owt-7be5be79.pth, 233 MB; the
hash prefix in its name is the first 8 hex digits of its SHA-256): 56.522%
top-1 and 79.066% top-5 on ImageNet's validation set at resize 256 / central
crop 224. Download it, then convert it once; the `.keras` file carries
ImageNet's 1000 class names (from torchvision's own metadata) and its
preprocessing (`model.image_spec`), and needs neither torch nor torchvision
afterwards.

The file is read with `torch.load(weights_only=True)`: tensors only, no
pickled objects are ever run. Needs `pip install -e ".[torchvision]"`.
"""

import argparse
import ast
import importlib.util
import os
import sys

import numpy as np

from alexnet_keras.alexnet import AlexNet

# torchvision's module names for each of our layers, and the shape of its
# weight: (out, in, height, width) for convolutions, (out, in) for Linear.
_LAYERS = (
    ("conv1", "features.0", (64, 3, 11, 11)),
    ("conv2", "features.3", (192, 64, 5, 5)),
    ("conv3", "features.6", (384, 192, 3, 3)),
    ("conv4", "features.8", (256, 384, 3, 3)),
    ("conv5", "features.10", (256, 256, 3, 3)),
    ("fc6", "classifier.1", (4096, 256 * 6 * 6)),
    ("fc7", "classifier.4", (4096, 4096)),
    ("fc8", "classifier.6", (None, 4096)),
)
INPUT_SHAPE = (224, 224, 3)
# A state dict larger than this is not torchvision's AlexNet (233 MB).
_MAX_BYTES = 1 << 30


def read_state_dict(path):
    """The tensors of a PyTorch state dict file, as numpy arrays by key.

    Raises:
        ValueError: one line naming `path` and what it is not.
    """
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"reading {path} needs PyTorch: pip install -e \".[torchvision]\""
        ) from None
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a file; pass torchvision's alexnet-owt-*.pth")
    if os.path.getsize(path) > _MAX_BYTES:
        raise ValueError(f"{path} is over {_MAX_BYTES:,} bytes: not an AlexNet state dict")
    try:
        # weights_only: tensors and plain containers, never arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a bad file
        reason = " ".join(str(error).split())[:200]
        raise ValueError(f"{path} is not a PyTorch state dict ({reason})") from None
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise ValueError(f"{path} is not a state dict of tensors; pass torchvision's "
                         "alexnet-owt-*.pth")
    return {key: value.detach().to(torch.float32).numpy() for key, value in state.items()}


def check_state_dict(state, source="the state dict"):
    """The number of classes of a torchvision AlexNet state dict.

    Raises:
        ValueError: naming the first key or shape that does not fit.
    """
    for _, module, shape in _LAYERS:
        for suffix, expected in (("weight", shape), ("bias", shape[:1])):
            key = f"{module}.{suffix}"
            if key not in state:
                raise ValueError(f"{source} is not torchvision's AlexNet: it has no {key} "
                                 f"(its first key is {next(iter(state), 'none')!r})")
            found = state[key].shape
            if len(found) != len(expected) or any(
                want is not None and want != got for want, got in zip(expected, found)
            ):
                shown = tuple("classes" if want is None else want for want in expected)
                raise ValueError(f"{source} is not torchvision's AlexNet: {key} has shape "
                                 f"{tuple(found)}, not {shown}")
    if state["classifier.6.bias"].shape[0] != state["classifier.6.weight"].shape[0]:
        raise ValueError(f"{source} is not torchvision's AlexNet: classifier.6's weight and "
                         "bias disagree on the number of classes")
    return int(state["classifier.6.weight"].shape[0])


def keras_weights(state):
    """`{layer name: [kernel, bias]}` in Keras' layouts, from a checked state dict.

    Convolution kernels go from PyTorch's (out, in, h, w) to Keras' (h, w, in,
    out) and dense kernels are transposed. fc6's input rows are reordered:
    PyTorch flattens the 6x6x256 map channels first (c, h, w), Keras'
    `Flatten` channels last (h, w, c).
    """
    weights = {}
    for name, module, _ in _LAYERS:
        kernel = state[f"{module}.weight"]
        if kernel.ndim == 4:
            kernel = kernel.transpose(2, 3, 1, 0)
        elif name == "fc6":
            kernel = kernel.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(-1, 4096)
        else:
            kernel = kernel.T
        weights[name] = [np.ascontiguousarray(kernel), state[f"{module}.bias"]]
    return weights


def imagenet_class_names():
    """ImageNet's 1000 class names as torchvision lists them (its weights'
    `meta["categories"]`), read from its installed source without importing
    it: torchvision's compiled ops only load beside the CUDA build of torch."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ValueError("ImageNet's class names come with torchvision: pip install -e "
                         "\".[torchvision]\"")
    path = os.path.join(spec.submodule_search_locations[0], "models", "_meta.py")
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(target, "id", None) == "_IMAGENET_CATEGORIES" for target in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise ValueError(f"{path} lists no ImageNet classes; install torchvision==0.28.0")


def from_state_dict(state, class_names=None, source="the state dict"):
    """An `AlexNet(variant="torchvision")` holding a torchvision state dict's
    weights, with `class_names` (ImageNet's for a 1000-class dict, else
    `class_0`, `class_1`, ...)."""
    num_classes = check_state_dict(state, source)
    if class_names is None:
        class_names = (imagenet_class_names() if num_classes == 1000
                       else [f"class_{index}" for index in range(num_classes)])
    model = AlexNet(variant="torchvision", num_classes=num_classes,
                    input_shape=INPUT_SHAPE, class_names=class_names)
    for name, values in keras_weights(state).items():
        model.get_layer(name).set_weights(values)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_keras.torchvision_weights",
        description="Convert torchvision's AlexNet state dict (alexnet-owt-*.pth) into a "
                    ".keras file.",
    )
    parser.add_argument("state_dict", help="the .pth file, e.g. alexnet-owt-7be5be79.pth")
    parser.add_argument("--output", default="alexnet_imagenet.keras",
                        help="the .keras file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.output.endswith(".keras"):
        parser.error(f"--output must end in .keras. Received: {args.output}")
    try:
        model = from_state_dict(read_state_dict(args.state_dict), source=args.state_dict)
    except ValueError as error:
        parser.error(str(error))
    model.save(args.output)
    print(f"{args.output}: torchvision's AlexNet, {model.num_classes} classes, "
          f"{model.count_params():,} parameters, input {model.image_spec.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
