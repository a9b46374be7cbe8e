"""The AI result as a DICOM Comprehensive 3D SR, TID 1500 Measurement Report (IHE AI Results).

One measurement group per finding (per label of a multi-label segmentation): finding type and
category (an organ's own, else morphologically abnormal structure), presence (Present / Absent),
probability, volume (ml) and key-slice area (mm²) where the model measured them, the box on the
key slice as an image region, a tracking identifier and UID, and the algorithm (TID 4019).
Observer is the model as a device. The document is PRELIMINARY and UNVERIFIED until a
radiologist accepts it, and COMPLETE: it holds every result the task will ever produce, and a
radiologist's verified report is a new document rather than a continuation of this one.

A result that replaces an earlier version (a re-run on more images, or another model version;
``AIResult.replaces``) is a new document in a new series that names the earlier SR in its
Predecessor Documents Sequence.
"""

from __future__ import annotations

from typing import Any, Final

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from models.postprocess import Finding
from router.objects.common import (
    CHARACTER_SET,
    ResultObjectError,
    box_outline,
    equipment_kwargs,
    finding_category,
    finding_code,
    finding_laterality,
    finding_tracking_uid,
    finish,
    frame_numbers,
    key_box,
    located_findings,
    object_identity,
    processing_equipment,
    read_header,
    reference_header,
    source_instance,
    unique_instances,
)
from router.result import AIResult, KeyImage

CodedConcept = hd.sr.CodedConcept
Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)

UNIT_NONE: Final = CodedConcept("1", "UCUM", "no units")
UNIT_ML: Final = CodedConcept("ml", "UCUM", "milliliter")
UNIT_MM2: Final = CodedConcept("mm2", "UCUM", "square millimeter")
PRESENT: Final = CodedConcept(*codes.SCT.Present)  # SCT 52101004
ABSENT: Final = CodedConcept(*codes.SCT.Absent)  # SCT 272519000 (CID 240; 2667000 is retired)
AI_FAMILY: Final = CodedConcept(*codes.cid7162.ArtificialIntelligence)  # DCM 123110

# When the source names no procedure: by modality, then by body part (CID 100 where possible).
_PROCEDURE_BY_MODALITY: Final = {
    "CT": CodedConcept("25045-6", "LN", "CT unspecified body region"),
    "MR": CodedConcept("25056-3", "LN", "MRI unspecified body region"),
    "CR": CodedConcept("43468-8", "LN", "XR unspecified body region"),
    "DX": CodedConcept("43468-8", "LN", "XR unspecified body region"),
}
_CT_HEAD: Final = CodedConcept("303653007", "SCT", "Computed tomography of head")
_IMAGING_PROCEDURE: Final = CodedConcept(*codes.cid100.ImagingProcedure)


def build_sr(result: AIResult) -> Dataset:
    """The result as a TID 1500 Comprehensive 3D SR in a new series of the source study.

    Raises:
        ResultObjectError: No findings or no source instances to report on.
    """
    study_uid = result.study.study_instance_uid
    if not result.findings:
        raise ResultObjectError(study_uid, "an SR needs at least one finding")
    if not result.source_instances:
        raise ResultObjectError(study_uid, "an SR needs the source instances as evidence")
    identity = object_identity(result, "sr")
    keys = {finding.name: key for finding, key in located_findings(result)}
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(result),
        procedure_reported=procedure_reported(result),
        imaging_measurements=[_group(result, f, keys.get(f.name)) for f in result.findings],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[reference_header(result, i) for i in unique_instances(result)],
        content=report,
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[processing_equipment(result)],
        specific_character_set=CHARACTER_SET,
        series_description=identity.series_description,
        content_date=result.completed_at.date(),
        content_time=result.completed_at.time(),
        previous_versions=predecessors(result),
        **equipment_kwargs(result),
    )
    finish(sr, result, identity)
    return sr


def predecessors(result: AIResult) -> list[Dataset] | None:
    """The SR this one replaces, as highdicom takes it for the Predecessor Documents Sequence
    (0040,A360): its Study, Series and SOP Instance UIDs and SOP Class; None for a first
    version (the sequence is type 1C: present only in a revision of a previous document)."""
    prior = result.replaces
    if prior is None:
        return None
    header = Dataset()
    header.StudyInstanceUID = prior.study_instance_uid
    header.SeriesInstanceUID = prior.sr_series_instance_uid
    header.SOPInstanceUID = prior.sr_sop_instance_uid
    header.SOPClassUID = prior.sr_sop_class_uid
    return [header]


def procedure_reported(result: AIResult) -> list[CodedConcept]:
    """The imaging procedure: the source's Procedure Code Sequence, else one by modality.

    Only the first source instance's header is read; without a file the SOP class decides.
    """
    first = result.source_instances[0]
    header = read_header(result, first) if first.path is not None else None
    if header is not None:
        coded = [
            CodedConcept(str(c.CodeValue), str(c.CodingSchemeDesignator), str(c.CodeMeaning))
            for c in header.get("ProcedureCodeSequence", [])
            if c.get("CodeValue") and c.get("CodingSchemeDesignator") and c.get("CodeMeaning")
        ]
        if coded:
            return coded
        modality = str(header.get("Modality", "")).upper()
        part = str(header.get("BodyPartExamined", "")).upper()
    else:
        modality, part = _modality_of(first.sop_class_uid), ""
    if modality == "CT" and part in ("HEAD", "BRAIN"):
        return [_CT_HEAD]
    return [_PROCEDURE_BY_MODALITY.get(modality, _IMAGING_PROCEDURE)]


def _modality_of(sop_class_uid: str) -> str:
    name = UID(sop_class_uid).name
    for prefix, modality in (
        ("CT ", "CT"),
        ("Enhanced CT", "CT"),
        ("MR ", "MR"),
        ("Enhanced MR", "MR"),
        ("Computed Radiography", "CR"),
        ("Digital X-Ray", "DX"),
    ):
        if name.startswith(prefix):
            return modality
    return ""


def _observation_context(result: AIResult) -> hd.sr.ObservationContext:
    algorithm = result.algorithm
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid,
        name=algorithm.name,
        manufacturer_name=algorithm.manufacturer,
        model_name=f"{algorithm.name} {algorithm.version}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _algorithm_id(result: AIResult) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=result.algorithm.name,
        version=result.algorithm.version,
        family=AI_FAMILY,
        manufacturer=result.algorithm.manufacturer,
    )


def _measurements(finding: Finding) -> list[hd.sr.Measurement]:
    measured = [
        hd.sr.Measurement(
            name=codes.DCM.Probability, value=round(finding.probability, 6), unit=UNIT_NONE
        )
    ]
    if finding.volume_ml is not None:
        measured.append(
            hd.sr.Measurement(name=codes.SCT.Volume, value=finding.volume_ml, unit=UNIT_ML)
        )
    if finding.area_mm2 is not None:
        measured.append(
            hd.sr.Measurement(name=codes.SCT.Area, value=finding.area_mm2, unit=UNIT_MM2)
        )
    return measured


def _group(result: AIResult, finding: Finding, key: KeyImage | None) -> Group:
    """One finding's measurement group: TID 1410 on the key slice when located, else 1501."""
    common: dict[str, Any] = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=finding_tracking_uid(result, finding), identifier=finding.name
        ),
        "finding_type": finding_code(finding),
        "finding_category": finding_category(finding),
        "algorithm_id": _algorithm_id(result),
        "measurements": _measurements(finding),
        "qualitative_evaluations": [
            hd.sr.QualitativeEvaluation(
                name=finding_code(finding), value=PRESENT if finding.present else ABSENT
            )
        ],
    }
    side = finding_laterality(finding)
    if side is not None:  # a paired organ: where it is, on which side
        common["finding_sites"] = [
            hd.sr.FindingSite(anatomic_location=finding_code(finding), laterality=side)
        ]
    if key is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    instance = source_instance(result, key.sop_instance_uid)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=box_outline(key_box(result, key)),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=instance.sop_class_uid,
            referenced_sop_instance_uid=instance.sop_instance_uid,
            referenced_frame_numbers=frame_numbers(
                instance.sop_class_uid, key.frame, instance.number_of_frames
            ),
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)
