"""The one error a destination raises, and how DICOM storage statuses map onto it."""

from __future__ import annotations


class DeliveryError(Exception):
    """A payload did not reach its destination.

    Args:
        retryable: True when the same payload may succeed later unchanged (peer down, timeout,
            out of resources); False when retrying cannot help (rejected content, bad
            configuration), so the outbox moves it to the dead letters at once.
        message: One line saying what went wrong, with the destination and the status the peer
            answered; never patient names or IDs.
    """

    def __init__(self, retryable: bool, message: str) -> None:
        super().__init__(message)
        self.retryable = bool(retryable)
        self.message = message

    def __str__(self) -> str:
        kind = "retryable" if self.retryable else "permanent"
        return f"{self.message} ({kind})"


def storage_status_retryable(status: int) -> bool:
    """Whether a failed DICOM storage status (DIMSE C-STORE or STOW-RS FailureReason) is transient.

    ``0xA7xx`` (out of resources) and ``0x0213`` (resource limitation) clear when the peer frees
    space; every other failure (``0xA9xx`` dataset does not match SOP class, ``0xCxxx`` cannot
    understand, ``0x0122`` SOP class not supported, ``0x0124`` not authorised ...) will be
    answered the same way again.
    """
    return 0xA700 <= status <= 0xA7FF or status == 0x0213


def storage_status_ok(status: int) -> bool:
    """Success (``0x0000``) or a warning (``0x0001``, ``0xBxxx``): the instance was stored."""
    return status in (0x0000, 0x0001) or 0xB000 <= status <= 0xBFFF
