"""The hand-written Part-10 header is byte-identical to pynetdicom's/pydicom's encoding."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000, UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from serving.gateway.part10 import part10_header

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("sop_instance_uid", "transfer_syntax"),
    [
        ("1.2.3.4", ExplicitVRLittleEndian),  # even length
        ("1.2.3.45", DeflatedExplicitVRLittleEndian),  # odd length: padded with NUL
        ("2.25.123456789012345678901234567890123", JPEG2000),
    ],
)
def test_header_matches_pydicom_encoding(sop_instance_uid: str, transfer_syntax: str) -> None:
    expected = (
        b"\x00" * 128
        + b"DICM"
        + encode_file_meta(
            create_file_meta(
                sop_class_uid=UID(CT),
                sop_instance_uid=UID(sop_instance_uid),
                transfer_syntax=UID(transfer_syntax),
            )
        )
    )
    assert part10_header(CT, sop_instance_uid, transfer_syntax) == expected


def test_header_parses_as_file_meta() -> None:
    header = part10_header(CT, "1.2.3.45", ExplicitVRLittleEndian)
    meta = dcmread(BytesIO(header + b"\x08\x00\x18\x00UI\x08\x001.2.3.45"), force=True).file_meta
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.FileMetaInformationGroupLength == len(header) - 128 - 4 - 12
