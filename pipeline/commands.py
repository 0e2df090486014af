"""The console commands `pip install` puts on the PATH ([project.scripts]).

    alexnet-run --strategy mirrored        # python -m pipeline.run --strategy mirrored
    alexnet-ingest --dataset digits        # python -m pipeline.ingest ...
    alexnet-evaluate --saved-model saved_models/alexnet
    alexnet-predict digit.png --saved-model saved_models/alexnet
    alexnet-summary --variant d2l          # python -m alexnet_keras.summary ...

Each sets the process up before TensorFlow loads, as the `python -m` forms do,
then runs the same code; so this module imports nothing of TensorFlow's itself.
"""

from pipeline import environment


def _main(command):
    environment.prepare()
    from pipeline import cli

    return cli.main(command)


def run():
    return _main("run")


def ingest():
    return _main("ingest")


def evaluate():
    return _main("evaluate")


def predict():
    return _main("predict")


def summary():
    environment.prepare()
    from alexnet_keras import summary as summary_lib

    return summary_lib.main()
