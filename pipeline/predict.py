"""Classify image files with a served or an exported AlexNet.

    python -m pipeline.predict photos/ cat.jpg --server http://localhost:8501
    python -m pipeline.predict cat.jpg --saved-model saved_models/alexnet

The client itself is `pipeline.serving.client`.
"""

if __name__ == "__main__":
    from pipeline import cli

    cli.launch("predict")
