"""The one exception type that carries a message meant for the user."""


class QvizError(Exception):
    """A problem with the user's input or files, described in one clear line.

    The CLI prints it and exits with code 2; the app shows it in a dialog and keeps running.
    Anything else escaping the core is a bug in qviz.
    """


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (ORT's own markers skipped)."""
    for line in str(exc).strip().splitlines():
        line = line.strip()
        if line and not line.startswith("==>"):
            return line
    return type(exc).__name__
