"""The errors a user can cause and fix, and the line of a library error that says what.

Every stage raises `PipelineError` (or `ConfigError` for a setting); the
command line prints its one line and exits with status 2 (138 for a run that
stopped to be resumed, `pipeline.training.checkpoints.Retryable`).
"""

import re


class PipelineError(Exception):
    """A problem the user caused and can fix: a bad flag, path, file or dataset.

    Its message is one line that names the thing and the fix; the command line
    prints it, with settings named as flags, and exits with status 2 instead of
    a traceback.
    """


class ConfigError(PipelineError, ValueError):
    """A setting a user gave is invalid."""


class TrainingDiverged(PipelineError):
    """The training loss became NaN or infinite: the weights are lost from
    that step on, so the run stops there, before anything is evaluated or
    exported, with its last good checkpoint kept."""


def first_line(error):
    """The line of an error, or of an error message, that says what went wrong.

    TensorFlow wraps an op's error in lines such as "Graph execution error:",
    "Detected at node ..." and "[[{{node ...}}]]" and decorates it with
    "{{function_node ...}}" and "[Op:...]": those say where, not what.
    """
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", text)
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    for line in lines:
        if not (line.endswith(":") or line.startswith(("<", "[[", "Detected at node"))):
            return line
    if lines:
        return lines[0]
    return type(error).__name__ if isinstance(error, BaseException) else "no details"
