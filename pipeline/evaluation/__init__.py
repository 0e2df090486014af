"""The evaluation stage: a split's metrics and their pictures (`metrics`)."""
