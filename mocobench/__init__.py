"""mocobench: MoCo pretraining and detection-transfer benchmarks.

The stages live in the top-level packages ``pretrain``, ``transfer`` and ``results``;
this package holds what they share: the CLI dispatcher, strict config loading, atomic
file writes, the configurable ResNet, progress logging and torch.distributed set-up.
"""

__version__ = "0.1.0"


def one_line(error: Exception) -> str:
    """The error's message; for a UserError raised in a data-loader worker (which comes back
    with the worker's traceback in its text), the original one-line message alone."""
    text = str(error)
    marker = "UserError: "
    if "Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


class UserError(Exception):
    """A problem with the user's input (a file, a config, a flag).

    The CLI prints the message on one line and exits non-zero instead of a traceback:
    the message must name the file and say what is wrong with it.
    """
