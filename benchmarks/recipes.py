"""Recipes against each other: validation accuracy after every epoch, and test
accuracy, of whole `python -m pipeline.run` runs, side by side.

    python -m benchmarks.recipes                      # the default against the previous one, digits
    python -m benchmarks.recipes --dataset folder:/data/fashion_mnist --epochs 2
    python -m benchmarks.recipes --recipe recipes/d2l_fashion_mnist.json \\
        --recipe recipes/default.json --set image-size=67

Each recipe runs as a user runs it (`--config FILE`, the `--set` flags after
it) on each dataset, with `--seed` and without ten-crop testing; the data is
ingested once into `data/`, as the pipeline does, and the runs go to a
temporary directory (`--keep DIR` keeps them). The first recipe is the
reference the others are compared with. Accuracy, not speed, is what this
measures: it may run beside other work.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

from benchmarks import common

_DEFAULT_RECIPES = ("recipes/previous_default.json", "recipes/default.json")


def _run(recipe, dataset, args, run_dir):
    command = [sys.executable, "-m", "pipeline.run", "--config", recipe, "--dataset", dataset,
               "--seed", str(args.seed), "--no-ten-crop", "--output-dir", run_dir,
               "--export-dir", os.path.join(run_dir, "models"),
               *(f"--{flag}" for flag in args.set)]
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    with open(os.path.join(run_dir, "history.csv")) as file:
        history = list(csv.DictReader(file))
    with open(os.path.join(run_dir, "metrics.json")) as file:
        metrics = json.load(file)
    return [float(row["val_accuracy"]) for row in history], metrics


def _name(recipe):
    return os.path.splitext(os.path.basename(recipe))[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", action="append",
                        help="a --config file; repeatable, the first is the reference "
                             f"(default: {' and '.join(_DEFAULT_RECIPES)})")
    parser.add_argument("--dataset", action="append",
                        help="a --dataset of pipeline.run; repeatable (default: digits)")
    parser.add_argument("--epochs", type=int, help="override the recipes' epochs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[],
                        help="one more pipeline.run flag for every run, without its dashes: "
                             "--set image-size=67 --set no-pca-noise")
    parser.add_argument("--keep", help="keep the runs in this directory")
    args = parser.parse_args(argv)
    recipes = args.recipe or list(_DEFAULT_RECIPES)
    datasets = args.dataset or ["digits"]
    for recipe in recipes:
        if not os.path.isfile(recipe):
            parser.error(f"--recipe {recipe} is not a file; pass a --config file "
                         "such as recipes/default.json")

    print(f"Recipes on {common.cpu_model()}; seed {args.seed}"
          + (f", {args.epochs} epochs" if args.epochs else "")
          + (f", {' '.join('--' + flag for flag in args.set)}" if args.set else ""))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        for dataset in datasets:
            results = {}
            for recipe in recipes:
                run_dir = os.path.join(root, f"{_name(recipe)}-{dataset.replace('/', '_')}")
                results[recipe] = _run(recipe, dataset, args, run_dir)
            print(f"\n{dataset}: validation accuracy after each epoch")
            names = [_name(recipe) for recipe in recipes]
            print("epoch " + "".join(f"{name:>24}" for name in names))
            epochs = max(len(curve) for curve, _ in results.values())
            for epoch in range(epochs):
                cells = []
                for recipe in recipes:
                    curve = results[recipe][0]
                    cells.append(f"{curve[epoch]:>24.4f}" if epoch < len(curve) else " " * 24)
                print(f"{epoch + 1:>5} " + "".join(cells))
            reference = results[recipes[0]][1]
            print("test  " + "".join(f"{metrics['test_accuracy']:>24.4f}"
                                     for _, metrics in results.values()))
            print("vs ref" + "".join(
                f"{metrics['test_accuracy'] - reference['test_accuracy']:>+24.4f}"
                for _, metrics in results.values()))
            print("images" + "".join(f"{metrics['num_examples']:>24}"
                                     for _, metrics in results.values()))


if __name__ == "__main__":
    main()
