"""torchvision's AlexNet as the tests' reference network.

torchvision's package cannot be imported beside the CPU build of torch (its
compiled ops link CUDA libraries), so the reference is torchvision's own
`AlexNet` class, taken from its installed source and run on plain torch: the
exact layout, and state-dict keys, of the published ImageNet weights.
"""

import ast
import importlib.util
import os

import torch


def torchvision_alexnet(num_classes=1000, seed=0):
    """torchvision.models.AlexNet, from torchvision's source, randomly initialised."""
    spec = importlib.util.find_spec("torchvision")
    path = os.path.join(spec.submodule_search_locations[0], "models", "alexnet.py")
    with open(path) as file:
        tree = ast.parse(file.read())
    source = next(node for node in tree.body
                  if isinstance(node, ast.ClassDef) and node.name == "AlexNet")
    namespace = {"nn": torch.nn, "torch": torch, "_log_api_usage_once": lambda module: None}
    exec(compile(ast.Module([source], []), path, "exec"), namespace)
    torch.manual_seed(seed)
    return namespace["AlexNet"](num_classes=num_classes).eval()
