"""HL7 v2 over MLLP (ORU^R01 results to a RIS or interface engine), one message per connection.

How the acknowledgment code (MSA-1) maps onto a retry, as read from HL7 v2.5 §2.9:

- ``AA`` / ``CA`` (accept, commit accept): delivered.
- ``AE`` / ``CE`` (application / commit error): the receiver processed the message and found it
  wrong (content, segments, identifiers). Sending it again unchanged gets the same answer, so
  the error is permanent (``retryable=False``) and the message goes to the dead letters for a
  person to look at.
- ``AR`` / ``CR`` (application / commit reject): the receiver did not process the message,
  which HL7 allows for reasons unrelated to its content ("the system is down", an internal
  error) as well as for an unsupported message type or version. The transient reading wins
  (``retryable=True``); the outbox's retry window bounds the attempts when the cause is in fact
  permanent.
- Anything else: the receiver's answer cannot be read, so whether it kept the message is
  unknown; permanent, so a person decides rather than a retry possibly duplicating the result.

A connection failure or timeout (``MllpError``) means no ACK arrived: retryable.
"""

from __future__ import annotations

import socket

from router.vocabulary import DeliveryKind
from serving.delivery.base import DeliveryError, Payload, probe_timeout_s
from serving.mllp import MllpError, ack_code, ack_error_code, send_message

ACCEPTED = frozenset({"AA", "CA"})
REJECTED = frozenset({"AR", "CR"})
ERROR = frozenset({"AE", "CE"})


class MllpDestination:
    """Send HL7 v2 messages over MLLP and check the ACK.

    Args:
        host: The receiver's host name or address.
        port: Its MLLP port.
        timeout_s: Connect and ACK-wait limit, seconds.
        name: Destination name; ``mllp:host:port`` by default.
    """

    def __init__(self, host: str, port: int, timeout_s: float = 10.0, name: str = "") -> None:
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} is out of range")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.host = host
        self.port = int(port)
        self.timeout_s = float(timeout_s)
        self.name = name or f"mllp:{host}:{self.port}"

    def probe(self) -> None:
        """A TCP connection to the receiver (closed at once, nothing sent)."""
        try:
            with socket.create_connection(
                (self.host, self.port), timeout=probe_timeout_s(self.timeout_s)
            ):
                pass
        except OSError as exc:
            raise DeliveryError(True, f"{self.name}: cannot connect ({exc})") from exc

    def deliver(self, payload: Payload) -> None:
        """Send the ER7 message; return on AA/CA, raise ``DeliveryError`` otherwise."""
        if payload.kind is not DeliveryKind.HL7:
            raise DeliveryError(False, f"{self.name}: MLLP takes hl7 payloads, not {payload.kind}")
        message = payload.body.decode("utf-8") if isinstance(payload.body, bytes) else payload.body
        if not isinstance(message, str) or not message.startswith("MSH"):
            raise DeliveryError(False, f"{self.name}: payload is not an HL7 v2 message (no MSH)")
        try:
            ack = send_message(self.host, self.port, message, timeout_s=self.timeout_s)
        except MllpError as exc:
            raise DeliveryError(True, f"{self.name}: no acknowledgment ({exc})") from exc
        except ValueError as exc:  # text that MSH-18's character set cannot encode
            raise DeliveryError(False, f"{self.name}: cannot encode the message ({exc})") from exc
        try:
            code = ack_code(ack)
        except (MllpError, ValueError) as exc:
            raise DeliveryError(False, f"{self.name}: unreadable acknowledgment ({exc})") from exc
        check_ack(code, self.name, ack)


def check_ack(code: str, where: str, ack: str = "") -> None:
    """Return for an accept code; raise ``DeliveryError`` per the mapping in the module doc."""
    code = (code or "").strip().upper()
    if code in ACCEPTED:
        return
    detail = _ack_text(ack)
    if code in REJECTED:
        raise DeliveryError(True, f"{where}: message rejected, ACK {code}{detail}")
    if code in ERROR:
        raise DeliveryError(False, f"{where}: application error, ACK {code}{detail}")
    raise DeliveryError(False, f"{where}: unknown acknowledgment code {code!r}")


def _ack_text(ack: str) -> str:
    """The HL7 error code (table 0357) of the ACK's ERR segment, e.g. `` (HL7 error 207)``.

    Only the numeric code: MSA-3 and ERR free text can quote the message, which holds patient
    data, and this text ends up in logs.
    """
    code = ack_error_code(ack)
    return f" (HL7 error {code})" if code else ""
