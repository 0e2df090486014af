"""The tuning stage: a keras-tuner search whose trials train through the
training stage's own model builder and loop (`tuner`)."""
