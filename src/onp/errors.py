"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class OnpError(Exception):
    """A problem with the user's input (a path, a name, a value) that the user can fix.

    The CLI prints ``onp: error: <message>`` and exits with status 2; anything else is a bug.
    """
