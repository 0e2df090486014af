"""Export a .keras AlexNet as the next TF Serving version.

    python -m pipeline.export alexnet_imagenet.keras --export-dir saved_models/alexnet

takes a model a run saved (`--export-format keras`) or torchvision's ImageNet
AlexNet converted by `python -m alexnet_keras.torchvision_weights`; the stage
itself is `pipeline.serving.builder`.
"""

if __name__ == "__main__":
    from pipeline import cli

    cli.launch("export")
