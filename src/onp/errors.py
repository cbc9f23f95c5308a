"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class OnpError(Exception):
    """A problem with the user's input (a path, a name, a value) that the user can fix.

    The CLI prints ``onp: error: <message>`` and exits with status 2; anything else is a bug.
    """


def at_least(value: object, low: int, key: str) -> None:
    """Refuse an integer setting below ``low`` (``--epochs 0``, ``--batch-size -1``) with one line."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OnpError(f"{key} must be an integer of at least {low}, got {value!r}")


def within(value: object, low: float, high: float, key: str, low_open: bool = False) -> None:
    """Refuse a number outside ``[low, high]`` (``(low, high]`` with ``low_open``), NaN or infinite."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not ok or (low_open and value == low) or value != value:  # value != value: NaN
        bracket = "(" if low_open else "["
        raise OnpError(f"{key} must be a number in {bracket}{low}, {high}], got {value!r}")
