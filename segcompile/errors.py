"""The one exception type a user sees as a clean, single-line error."""


class SegcompileError(Exception):
    """A problem with the user's input or environment, worth one clear line.

    The CLI prints ``error: <message>`` and exits non-zero; the traceback is shown
    only with ``--debug``. The message should name the file, node or option at fault.
    """

    exit_code = 1


class AccuracyGateError(SegcompileError):
    """The int8 model lost more accuracy than the user allowed (``--max-drop``)."""

    exit_code = 3
