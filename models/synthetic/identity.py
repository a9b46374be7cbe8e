"""Made-up patient, order and equipment identity for synthetic studies (no real PHI).

Everything derives from the seed: the patient from the seed alone (so one patient can have a
head CT and a chest film), the order and UIDs from the full study request."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from models.synthetic.spec import StudyKind, StudySpec, seeded_int

FAMILY_NAMES = (
    "QUILLBY", "MARROWAY", "TENSLEY", "ORCHARDSON", "VELLACOTT", "BRINDLEMERE", "HASKETT",
    "DORNWELL", "PILCROFT", "SANDOVARI", "ULLERTON", "KESTRAVEN", "MOBERLANE", "FINCHWORTH",
)  # fmt: skip
GIVEN_NAMES = {
    "F": ("ALINDA", "BRISA", "CORVETTE", "DELPHA", "ESMERAY", "FENNA", "GWYNETH", "HALLIE"),
    "M": ("ARVO", "BASTIEN", "CORMAC", "DARIEL", "EMRYS", "FABIAN", "GIDEAN", "HOLLIS"),
}
REFERRING_PHYSICIANS = ("PARRISH^ODETTE^^DR", "LINDQVIST^TOMAS^^DR", "ABARA^NKEM^^DR")
STATIONS = {
    StudyKind.CT_HEAD: "CTED01",
    StudyKind.CT_CHEST: "CTMAIN02",
    StudyKind.CT_ABDOMEN: "CTMAIN02",
    StudyKind.CR_CHEST: "CRROOM3",
    StudyKind.DX_CHEST: "DXED01",
}
INSTITUTION = "SYNTHETIC GENERAL HOSPITAL"
MANUFACTURER = "Statlane Synthetic"


@dataclass(frozen=True)
class ProcedureCode:
    """A coded procedure (LOINC) with the study description a RIS would send."""

    code_value: str
    scheme: str
    meaning: str
    study_description: str
    body_part: str


_XR_CHEST = ProcedureCode("36554-4", "LN", "XR Chest Single view", "XR CHEST 1 VIEW", "CHEST")
PROCEDURES = {
    StudyKind.CT_HEAD: ProcedureCode(
        "30799-1", "LN", "CT Head WO contrast", "CT HEAD WO CONTRAST", "HEAD"
    ),
    StudyKind.CT_CHEST: ProcedureCode(
        "29252-4", "LN", "CT Chest WO contrast", "CT CHEST WO CONTRAST", "CHEST"
    ),
    StudyKind.CT_ABDOMEN: ProcedureCode(
        "36424-0", "LN", "CT Abdomen WO contrast", "CT ABDOMEN WO CONTRAST", "ABDOMEN"
    ),
    StudyKind.CR_CHEST: _XR_CHEST,
    StudyKind.DX_CHEST: _XR_CHEST,
}
"""Requested procedure per kind: LOINC code, RIS study description, Body Part Examined."""


@dataclass(frozen=True)
class Patient:
    """Synthetic demographics: PN as ``FAMILY^GIVEN``, dates as YYYYMMDD."""

    name: str
    patient_id: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class Order:
    """What the RIS would have attached to the study: accession, ids, dates and UIDs."""

    accession_number: str
    study_id: str
    requested_procedure_id: str
    scheduled_procedure_step_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_time: str
    referring_physician: str
    station_name: str
    procedure: ProcedureCode
    patient_age: str

    def instance_uid(self, spec: StudySpec, index: int) -> str:
        """SOP Instance UID of image ``index`` (extra instances use indices past the series)."""
        return _uid(spec, "instance", str(index))


def _uid(spec: StudySpec, *salt: str) -> str:
    """A ``2.25.<uuid>`` UID from a name-based (version 5 style) UUID of the study request;
    pydicom's ``generate_uid(prefix=None)`` would ignore the entropy and be random."""
    name_based = uuid.UUID(bytes=spec.digest(*salt)[:16], version=5)
    return f"2.25.{name_based.int}"


def make_patient(seed: int, *, variant: str = "") -> Patient:
    """A made-up patient from ``seed`` (``variant`` gives a different person, same seed)."""
    n = seeded_int("patient", seed, variant)
    sex = "F" if n % 2 == 0 else "M"
    family = FAMILY_NAMES[(n >> 1) % len(FAMILY_NAMES)]
    given = GIVEN_NAMES[sex][(n >> 5) % len(GIVEN_NAMES[sex])]
    birth = dt.date(1935, 1, 1) + dt.timedelta(days=(n >> 9) % (365 * 65))
    return Patient(
        name=f"{family}^{given}",
        patient_id=f"SYN{(n >> 20) % 10_000_000:07d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
    )


def make_order(spec: StudySpec, patient: Patient) -> Order:
    """Accession, procedure ids, UIDs and a study date/time in 2024, all from ``spec``."""
    n = int.from_bytes(spec.digest("order")[:8], "little")
    when = dt.datetime(2024, 1, 1, 0, 0, 0) + dt.timedelta(seconds=n % (366 * 86400))
    birth = dt.datetime.strptime(patient.birth_date, "%Y%m%d").date()
    today = when.date()
    age = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    accession = f"SYN{(n >> 32) % 10**10:010d}"
    return Order(
        accession_number=accession,
        study_id=str((n >> 8) % 100_000),
        requested_procedure_id=f"RP{(n >> 12) % 10**8:08d}",
        scheduled_procedure_step_id=f"SPS{(n >> 16) % 10**8:08d}",
        study_uid=_uid(spec, "study"),
        series_uid=_uid(spec, "series"),
        frame_of_reference_uid=_uid(spec, "frame-of-reference"),
        study_date=when.strftime("%Y%m%d"),
        study_time=when.strftime("%H%M%S"),
        referring_physician=REFERRING_PHYSICIANS[(n >> 40) % len(REFERRING_PHYSICIANS)],
        station_name=STATIONS[spec.kind],
        procedure=PROCEDURES[spec.kind],
        patient_age=f"{age:03d}Y",
    )
