"""Error raised for malformed or unsupported NNC bitstreams."""

from __future__ import annotations

__all__ = ["NNCFormatError"]


class NNCFormatError(ValueError):
    """A bitstream that cannot be parsed or decoded.

    Parameters
    ----------
    message : str
        What went wrong, naming the offending field and value.
    unit : str, optional
        The NNR unit being read: its type, its index among all units of the
        stream (STR is #0) and, for an NDU, the tensor name once read, e.g.
        ``"NDU #3 'fc.weight'"``.
    offset : int, optional
        Byte offset in the whole bitstream where the problem was found.

    Notes
    -----
    ``str(error)`` carries both the unit and the offset, so a log line alone
    is enough to locate the problem. The class derives from ``ValueError`` so
    callers that only expect bad-value errors keep working.
    """

    def __init__(
        self, message: str, *, unit: str | None = None, offset: int | None = None
    ) -> None:
        self.reason = message
        self.unit = unit
        self.offset = offset
        super().__init__(_format(message, unit, offset))


def _format(message: str, unit: str | None, offset: int | None) -> str:
    where = []
    if unit is not None:
        where.append(unit)
    if offset is not None:
        where.append(f"byte offset {offset}")
    if not where:
        return message
    return f"{', '.join(where)}: {message}"
