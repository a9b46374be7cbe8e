"""Synthetic DICOM studies (CT head, CT chest, CT abdomen, CR/DX chest) with ground truth and
faults.

All identities are made up; the same seed always gives byte-identical files.
"""

from models.synthetic.abdomen import ORGAN_LABELS
from models.synthetic.spec import Compression, Fault, StudyKind, SyntheticStudy, SynthSpecError
from models.synthetic.study import generate_study, load_label_map
from models.synthetic.writer import EncoderMissingError

__all__ = [
    "ORGAN_LABELS",
    "Compression",
    "EncoderMissingError",
    "Fault",
    "StudyKind",
    "SynthSpecError",
    "SyntheticStudy",
    "generate_study",
    "load_label_map",
]
