"""Synthetic DICOM studies (CT head, CT chest, CR/DX chest) with ground truth and faults.

All identities are made up; the same seed always gives byte-identical files.
"""

from models.synthetic.spec import Compression, Fault, StudyKind, SyntheticStudy, SynthSpecError
from models.synthetic.study import generate_study
from models.synthetic.writer import EncoderMissingError

__all__ = [
    "Compression",
    "EncoderMissingError",
    "Fault",
    "StudyKind",
    "SynthSpecError",
    "SyntheticStudy",
    "generate_study",
]
