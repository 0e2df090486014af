"""The command line: `launch` sets the process up, then runs one command once.

    alexnet-run --strategy mirrored        # python -m pipeline.run --strategy mirrored
    alexnet-ingest --dataset digits        # python -m pipeline.ingest ...
    alexnet-evaluate --saved-model saved_models/alexnet
    alexnet-export alexnet_imagenet.keras  # python -m pipeline.export ...
    alexnet-predict digit.png --saved-model saved_models/alexnet
    alexnet-summary --variant d2l          # python -m alexnet_keras.summary ...
    alexnet-data-service dispatcher        # python -m pipeline.data.service ...

The `python -m pipeline.X` modules and the console commands `pip install` puts
on the PATH ([project.scripts]) all come here. TensorFlow reads its
environment variables once, when it is imported, so this module imports none
of it: `launch` prepares the process first and only then loads the commands
(`pipeline.cli.main`).
"""

import sys

from pipeline import environment


def launch(command):
    """Runs a pipeline command ("run", "ingest", "evaluate", "export", "predict") on
    `sys.argv` and exits with its status."""
    environment.prepare()
    from pipeline.cli import main

    sys.exit(main.main(command))


def run():
    launch("run")


def ingest():
    launch("ingest")


def evaluate():
    launch("evaluate")


def export():
    launch("export")


def predict():
    launch("predict")


def summary():
    environment.prepare()
    from alexnet_keras import summary as summary_lib

    sys.exit(summary_lib.main())


def data_service():
    environment.prepare()
    from pipeline.data import service

    sys.exit(service.main())
