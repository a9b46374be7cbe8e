"""HL7 v2 text helpers for the message tests: undo the standard escape sequences."""

from __future__ import annotations

HL7_ESCAPES = {"\\F\\": "|", "\\S\\": "^", "\\T\\": "&", "\\R\\": "~", "\\E\\": "\\"}
"""Escape sequences of the default delimiters (HL7 v2.5.1, 2.7.1) and the characters they mean."""


def unescape(value: str) -> str:
    """The text an HL7 field value stands for, with every standard escape sequence undone."""
    out, i = [], 0
    while i < len(value):
        for sequence, char in HL7_ESCAPES.items():
            if value.startswith(sequence, i):
                out.append(char)
                i += len(sequence)
                break
        else:
            out.append(value[i])
            i += 1
    return "".join(out)
