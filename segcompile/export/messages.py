"""How the export stage words the exceptions of the libraries it drives."""

from __future__ import annotations

import re

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def short_reason(exc: BaseException) -> str:
    """The first line of an exception message (library errors can run to pages), capped in length."""
    text = _ANSI_ESCAPE.sub("", str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def root_reason(exc: BaseException) -> str:
    """``short_reason`` of the innermost explicit cause, named by its type.

    torch.onnx wraps the real failure (e.g. a data-dependent branch torch.export cannot trace)
    in a generic "Failed to export the model" error; the cause is what the user can act on.
    """
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return f"{type(exc).__name__}: {short_reason(exc)}"
