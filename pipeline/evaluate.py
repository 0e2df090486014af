"""Evaluate an export on any dataset through its own `serving_default`.

    python -m pipeline.evaluate --saved-model saved_models/alexnet --dataset digits

writes `evaluation.json` and the pictures to `--output-dir`
(`pipeline.runner.evaluate_export`).
"""

if __name__ == "__main__":
    from pipeline import cli

    cli.launch("evaluate")
