"""Delivery destinations: where result objects, messages and worklist signals go.

``build_destination(config)`` makes one from configuration; each concrete destination lives in
its own module (``dicom``, ``stow``, ``http``, ``mllp``, ``folder``) and is imported only when
used.
"""

from router.delivery.destinations import (
    Destination,
    Payload,
    PayloadKind,
    build_destination,
    close_destination,
)
from router.delivery.errors import DeliveryError

__all__ = [
    "DeliveryError",
    "Destination",
    "Payload",
    "PayloadKind",
    "build_destination",
    "close_destination",
]
