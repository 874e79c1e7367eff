"""The one exception type that carries a message meant for the user."""


class QvizError(Exception):
    """A problem with the user's input or files, described in one clear line.

    The CLI prints it and exits with code 2; the app shows it in a dialog and keeps running.
    Anything else escaping the core is a bug in qviz.
    """
