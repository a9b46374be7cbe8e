"""Typed gateway errors; each carries one clear line and, where known, the instance UID.

Messages never contain patient data: only UIDs, AE titles, addresses and sizes.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error raised by the DICOM gateway."""


class InvalidInstance(GatewayError):
    """A received object is not a usable DICOM instance (unreadable, truncated, bad identity)."""

    def __init__(self, reason: str, *, sop_instance_uid: str | None = None) -> None:
        self.reason = reason
        self.sop_instance_uid = sop_instance_uid
        where = f" (SOP Instance UID {sop_instance_uid})" if sop_instance_uid else ""
        super().__init__(f"invalid DICOM instance{where}: {reason}")


class StudyMismatch(InvalidInstance):
    """An instance does not belong to the study the request was addressed to (STOW-RS)."""

    def __init__(self, *, expected: str, found: str, sop_instance_uid: str) -> None:
        self.expected = expected
        self.found = found
        super().__init__(
            f"Study Instance UID {found} does not match the requested study {expected}",
            sop_instance_uid=sop_instance_uid,
        )


class OutOfResources(GatewayError):
    """The spool cannot take the instance without dropping below its free-space reserve."""

    def __init__(self, *, free_bytes: int, needed_bytes: int, reserve_bytes: int) -> None:
        self.free_bytes = free_bytes
        self.needed_bytes = needed_bytes
        self.reserve_bytes = reserve_bytes
        super().__init__(
            f"spool out of space: {free_bytes} bytes free, instance needs {needed_bytes} bytes "
            f"and {reserve_bytes} bytes must stay free"
        )


class UnknownCaller(GatewayError):
    """A calling AE title (or its network address) is not allowed to send to this gateway."""

    def __init__(self, calling_ae: str, address: str) -> None:
        self.calling_ae = calling_ae
        self.address = address
        super().__init__(f"calling AE {calling_ae!r} from {address} is not an allowed caller")


class MalformedRequest(GatewayError):
    """A STOW-RS request that cannot be parsed at all (headers or multipart framing)."""

    def __init__(self, reason: str, *, http_status: int = 400) -> None:
        self.reason = reason
        self.http_status = http_status
        super().__init__(reason)
