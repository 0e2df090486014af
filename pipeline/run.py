"""Train AlexNet and export it for TensorFlow Serving: the whole pipeline.

    python -m pipeline.run --strategy mirrored

With no other flag it trains the paper's AlexNet on the embedded `digits`
dataset and exports it to `saved_models/alexnet/<version>/`. `--help` lists
every flag; docs/ explains what they are for. The stages are wired in
`pipeline.runner`.
"""

if __name__ == "__main__":
    from pipeline import cli

    cli.launch("run")
