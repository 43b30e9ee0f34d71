"""Telling a service that is not there from one that fails an item: submissions that could
not connect at all (each after the transport's own retries), or that were answered HTTP 404 on
the submission path. A few in a row stop the batch, whichever of the two they were, rather
than fail every item the same way."""

from __future__ import annotations

from .._errors import APIError, DreamboothError, EndpointNotFound, JobNotFound, TransportError

__all__ = ["UNREACHABLE_AFTER", "Absence", "is_absence"]

#: Consecutive submissions that found no service after which a batch stops.
UNREACHABLE_AFTER = 3


def is_absence(error: DreamboothError) -> bool:
    """True when ``error`` says nothing answered as the service would: no connection was
    made, or the submission path does not exist there (HTTP 404). Neither landed."""
    if isinstance(error, TransportError):
        return not error.may_have_landed
    return (
        isinstance(error, APIError)
        and error.http_status == 404
        and not isinstance(error, JobNotFound)
    )


class Absence:
    """The run of submissions in a row that found no service at ``base_url``."""

    def __init__(self, base_url: str, *, after: int = UNREACHABLE_AFTER) -> None:
        self._base_url = base_url
        self._after = after
        self._streak = 0

    def answered(self) -> None:
        """The service answered as itself (accepted, refused, busy...): the run is broken."""
        self._streak = 0

    def absent(self, error: DreamboothError) -> DreamboothError | None:
        """Count ``error`` (an absence); the error that stops the batch once ``after`` came
        in a row, else None."""
        self._streak += 1
        if self._streak < self._after:
            return None
        if isinstance(error, TransportError):
            return error
        return EndpointNotFound(
            f"{self._base_url} answered HTTP 404 (not found) to {self._streak} submissions in "
            "a row: the base URL does not look like the API root",
            http_status=404,
        )
