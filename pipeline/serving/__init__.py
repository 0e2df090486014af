"""The serving stage: what TF Serving loads, and the client that asks it.

    contract   the signatures' names, inputs and outputs; loading one
    blessing   may the new model replace the served one?
    builder    the SavedModel version, with in-graph preprocessing
    pusher     a blessed model's version, and the .keras, LiteRT, ONNX files
    runtimes   LiteRT and ONNX
    client     python -m pipeline.predict: REST, gRPC or a local export
"""
