"""Shared pieces of the fuzz tests (``tests/test_fuzz_*.py``): budget, seed, byte mutations and
the watch on server threads.

Budget: each fuzz test has a CI-sized number of examples; ``STATLANE_FUZZ_EXAMPLES`` raises every
test to that many (the full run, issue 15 asks for 10,000 per entry point)::

    STATLANE_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest -q tests/test_fuzz_*.py

Seed: every test is derandomized (Hypothesis derives its examples from the test's source, so a
run repeats exactly) and keeps no example database, so CI never replays a local failure it
did not find itself. ``STATLANE_FUZZ_RANDOM=1`` draws fresh random examples instead (for a
long exploratory run; a failure prints its reproducing ``@reproduce_failure`` blob).
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES_ENV = "STATLANE_FUZZ_EXAMPLES"
FUZZ_RANDOM_ENV = "STATLANE_FUZZ_RANDOM"
#: RSS growth allowed over a whole fuzz module (bytes).
RSS_BUDGET_BYTES = 200 * 1024**2


def fuzz_examples(ci_examples: int) -> int:
    """Examples for one fuzz test: ``ci_examples``, or ``STATLANE_FUZZ_EXAMPLES`` when set."""
    override = os.environ.get(FUZZ_EXAMPLES_ENV, "").strip()
    return int(override) if override else ci_examples


def fuzz_settings(ci_examples: int) -> settings:
    """Hypothesis settings of a fuzz test: fixed seed, no deadline, no example database."""
    return settings(
        max_examples=fuzz_examples(ci_examples),
        derandomize=os.environ.get(FUZZ_RANDOM_ENV, "") != "1",
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


# ---------------------------------------------------------------- byte mutations

#: Integers that break length and count fields: zero, one, odd, signed and unsigned edges.
INTERESTING_INTS = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000)
INTERESTING_INTS_32 = (*INTERESTING_INTS, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def _mutation(size: int) -> st.SearchStrategy[tuple[str, int, int, bytes]]:
    """One edit of a ``size``-byte buffer: (kind, position, amount, bytes)."""
    position = st.integers(0, max(size, 1))
    return st.one_of(
        st.tuples(st.just("flip"), position, st.integers(0, 7), st.just(b"")),
        st.tuples(st.just("byte"), position, st.integers(0, 255), st.just(b"")),
        st.tuples(st.just("insert"), position, st.just(0), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), position, st.integers(1, 64), st.just(b"")),
        st.tuples(st.just("truncate"), position, st.just(0), st.just(b"")),
        st.tuples(st.just("u16"), position, st.sampled_from(INTERESTING_INTS), st.just(b"")),
        st.tuples(st.just("u32"), position, st.sampled_from(INTERESTING_INTS_32), st.just(b"")),
        st.tuples(st.just("repeat"), position, st.integers(1, 64), st.just(b"")),
    )


def _apply(data: bytearray, kind: str, position: int, amount: int, payload: bytes) -> None:
    position = min(position, len(data))
    if kind == "flip" and position < len(data):
        data[position] ^= 1 << amount
    elif kind == "byte" and position < len(data):
        data[position] = amount
    elif kind == "insert":
        data[position:position] = payload
    elif kind == "delete":
        del data[position : position + amount]
    elif kind == "truncate":
        del data[position:]
    elif kind in ("u16", "u32"):
        width = 2 if kind == "u16" else 4
        value = amount % (1 << (8 * width))
        # Both byte orders occur: DIMSE and DICOM data are little endian, PDU headers big.
        encoded = value.to_bytes(width, "little") if position % 2 else value.to_bytes(width, "big")
        data[position : position + width] = encoded
    elif kind == "repeat":
        data[position:position] = data[position : position + amount]


def mutated(base: bytes, max_edits: int = 4) -> st.SearchStrategy[bytes]:
    """``base`` with 0 to ``max_edits`` edits: bit flips, byte and integer overwrites (length
    fields), inserts, deletes, truncation and repeats."""

    def edit(edits: list[tuple[str, int, int, bytes]]) -> bytes:
        data = bytearray(base)
        for kind, position, amount, payload in edits:
            _apply(data, kind, position, amount, payload)
        return bytes(data)

    return st.lists(_mutation(len(base)), max_size=max_edits).map(edit)


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """``data`` cut into consecutive chunks (as TCP may deliver it)."""

    def cut(cuts: list[int]) -> list[bytes]:
        edges = [0, *sorted(cuts), len(data)]
        return [data[a:b] for a, b in itertools.pairwise(edges)]

    return st.lists(st.integers(0, len(data)), max_size=6).map(cut)


# ---------------------------------------------------------------- the watch on server threads

#: (logger name, function name): errors logged with a traceback that are a refusal by design: a
#: PDU that pynetdicom's decoder cannot decode aborts the association (A-ABORT), the fast path's
#: reactor logging as pynetdicom's DUL does, and pynetdicom logs on the way.
_REFUSALS_WITH_TRACEBACK = frozenset(
    {
        ("serving.gateway.reactor", "_decode_standard"),
        ("pynetdicom.dul", "_read_pdu_data"),
        ("pynetdicom.utils", "decode_bytes"),
        ("pynetdicom.dimse", "receive_primitive"),  # "Received an invalid DIMSE message"
        # A state machine action failed on what the peer sent, logged and re-raised: the fast
        # path's reactor aborts (an exception escaping pynetdicom's DUL thread is still seen).
        ("pynetdicom.fsm", "do_action"),
    }
)


@dataclass
class Watch:
    """Unhandled exceptions seen on server threads and errors logged with a traceback."""

    thread_errors: list[str] = field(default_factory=list)
    logged_errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Everything seen so far, one line each."""
        return [*self.thread_errors, *self.logged_errors]

    def clear(self) -> None:
        self.thread_errors.clear()
        self.logged_errors.clear()


_WATCHED_LOGGERS = ("serving", "router", "pynetdicom", "pydicom")


class _ErrorRecords(logging.Handler):
    def __init__(self, watch: Watch) -> None:
        super().__init__(logging.ERROR)
        self._watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        try:
            problem = self._problem(record)
        finally:
            # The handlers after this one (pytest's capture, attached to every logger) keep the
            # record for the test's report: as text, without the exception (``LOGGER.exception
            # (exc)`` logs the exception itself) and traceback whose frames would keep a whole
            # association alive for the rest of the test.
            record.msg, record.args = record.getMessage(), None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        if problem is not None:
            self._watch.logged_errors.append(problem)

    @staticmethod
    def _problem(record: logging.LogRecord) -> str | None:
        unexpected_type = record.name == "serving.gateway.mllp" and "failed" in record.msg
        if record.exc_info is None and not unexpected_type:
            return None  # a refusal logged as an error (an invalid PDU, a peer gone mid-PDU)
        where = ""
        if record.exc_info is not None:
            if (record.name, record.funcName) in _REFUSALS_WITH_TRACEBACK:
                return None
            if isinstance(record.exc_info[1], OSError):  # the peer reset the connection
                return None
            if record.exc_info[2] is not None:
                frames = traceback.extract_tb(record.exc_info[2])[-3:]
                where = " at " + " < ".join(
                    f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames)
                )
        return f"{record.name}: {record.getMessage()}{where}"


@contextmanager
def watching_servers() -> Iterator[Watch]:
    """Collect exceptions that escape threads (``threading.excepthook``) and ERROR records
    with a traceback from the gateway and pynetdicom, while the block runs.

    MLLP connection and handler failures are logged by exception type only (no traceback, the
    text could quote patient data): those count too.
    """
    watch = Watch()
    previous_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        watch.thread_errors.append(f"thread {name}: {args.exc_type.__name__}: {args.exc_value}")

    handler = _ErrorRecords(watch)
    # The servers log every refusal, and pytest keeps each record of a test in memory (on every
    # logger): only errors are logged while fuzzing, and those without their tracebacks.
    loggers = [logging.getLogger(name) for name in _WATCHED_LOGGERS]
    levels = [logger.level for logger in loggers]
    threading.excepthook = hook
    for logger in loggers:
        logger.handlers.insert(0, handler)  # before pytest's capture, which gets it stripped
        logger.setLevel(logging.ERROR)
    try:
        yield watch
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
        threading.excepthook = previous_hook


def rss_bytes() -> int:
    """Resident set size of this process (the servers run in it)."""
    return int(psutil.Process().memory_info().rss)


# ---------------------------------------------------------------- valid samples to mutate

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def _uid(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def store_command(sop_instance_uid: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (Implicit VR Little Endian), group length first."""
    body = b"".join(
        (
            _element(0x0000, 0x0002, _uid(CT_IMAGE_STORAGE)),
            _element(0x0000, 0x0100, struct.pack("<H", 0x0001)),
            _element(0x0000, 0x0110, struct.pack("<H", message_id)),
            _element(0x0000, 0x0700, struct.pack("<H", 0)),
            _element(0x0000, 0x0800, struct.pack("<H", 0x0000)),
            _element(0x0000, 0x1000, _uid(sop_instance_uid)),
        )
    )
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def echo_command(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set."""
    body = b"".join(
        (
            _element(0x0000, 0x0002, _uid(VERIFICATION)),
            _element(0x0000, 0x0100, struct.pack("<H", 0x0030)),
            _element(0x0000, 0x0110, struct.pack("<H", message_id)),
            _element(0x0000, 0x0800, struct.pack("<H", 0x0101)),
        )
    )
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def pdv(context_id: int, control: int, fragment: bytes) -> bytes:
    """One PDV item: length, presentation context, control header (bit 0 command, 1 last)."""
    return struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment


def p_data_tf(body: bytes) -> bytes:
    """A P-DATA-TF PDU around PDV items."""
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def small_ct() -> tuple[str, bytes, bytes]:
    """(SOP Instance UID, data set in Explicit VR Little Endian, Part-10 file) of one 8x8 CT."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from tests.series_factory import make_series, to_bytes

    dataset = make_series(1, rows=8, columns=8)[0]
    assert dataset.file_meta.TransferSyntaxUID == EXPLICIT_VR_LE
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)
    return str(dataset.SOPInstanceUID), buffer.getvalue(), to_bytes(dataset)


def associate_rq(calling: str = "FUZZ", called: str = "STATLANE") -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification (context 1) and CT Image Storage in Explicit
    (3) and Implicit (5) VR Little Endian, maximum PDU 16 KiB."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    contexts = [
        build_context(VERIFICATION, IMPLICIT_VR_LE),
        build_context(CT_IMAGE_STORAGE, EXPLICIT_VR_LE),
        build_context(CT_IMAGE_STORAGE, IMPLICIT_VR_LE),
    ]
    for context_id, context in zip((1, 3, 5), contexts, strict=True):
        context.context_id = context_id
    primitive.presentation_context_definition_list = contexts
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    primitive.user_information = [maximum]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())
