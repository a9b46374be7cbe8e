"""pydicom datasets for the CT Image, CR Image and DX Image (For Presentation) IODs, and
lossless encoding of their pixel data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders.base import Encoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pydicom.valuerep import format_number_as_ds

from models.synthetic.geometry import SeriesGeometry
from models.synthetic.identity import INSTITUTION, MANUFACTURER, Order, Patient
from models.synthetic.spec import Compression, StudyKind, StudySpec

TRANSFER_SYNTAXES = {
    Compression.NONE: ExplicitVRLittleEndian,
    Compression.RLE: RLELossless,
    Compression.JPEG_LS: JPEGLSLossless,
    Compression.JPEG2000: JPEG2000Lossless,
}
ENCODER_PACKAGES = {
    Compression.RLE: "pylibjpeg-rle (or none: pydicom's own RLE encoder)",
    Compression.JPEG_LS: "pyjpegls",
    Compression.JPEG2000: "pylibjpeg and pylibjpeg-openjpeg",
}
WINDOWS = {
    StudyKind.CT_HEAD: ([40.0, 80.0], [600.0, 2800.0], ["BRAIN", "BONE"]),
    StudyKind.CT_CHEST: ([-600.0, 40.0], [1500.0, 400.0], ["LUNG", "MEDIASTINUM"]),
    StudyKind.CT_ABDOMEN: ([40.0, 60.0], [400.0, 150.0], ["ABDOMEN", "LIVER"]),
}
KERNELS = {StudyKind.CT_HEAD: "H30s", StudyKind.CT_CHEST: "B70f", StudyKind.CT_ABDOMEN: "B30f"}
"""Reconstruction kernel per CT kind: soft head, sharp lung, soft body."""


class EncoderMissingError(RuntimeError):
    """The lossless encoder for a requested transfer syntax is not installed."""


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def base_dataset(
    spec: StudySpec, patient: Patient, order: Order, *, modality: str, sop_class_uid: str
) -> Dataset:
    """Patient, General Study, Patient Study, General Series and General Equipment modules."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = order.study_date
    ds.StudyTime = order.study_time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _later(order.study_time, 120)
    ds.AccessionNumber = order.accession_number
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = order.referring_physician
    ds.StationName = order.station_name
    ds.StudyDescription = order.procedure.study_description
    ds.ProcedureCodeSequence = DicomSequence(
        [_code(order.procedure.code_value, order.procedure.scheme, order.procedure.meaning)]
    )
    ds.SeriesDescription = order.procedure.study_description
    ds.ManufacturerModelName = "Phantom " + ("CT 64" if spec.kind.is_ct else "DR 43")
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = order.patient_age
    ds.BodyPartExamined = order.procedure.body_part
    ds.DeviceSerialNumber = f"SN{spec.kind.value.upper().replace('-', '')}01"
    ds.SoftwareVersions = "statlane-synth 1"
    ds.StudyInstanceUID = order.study_uid
    ds.SeriesInstanceUID = order.series_uid
    ds.StudyID = order.study_id
    ds.SeriesNumber = 2 if spec.kind.is_ct else 1
    ds.AcquisitionNumber = 1
    if spec.kind.is_ct:
        ds.FrameOfReferenceUID = order.frame_of_reference_uid
    request = Dataset()
    request.RequestedProcedureID = order.requested_procedure_id
    request.ScheduledProcedureStepID = order.scheduled_procedure_step_id
    request.AccessionNumber = order.accession_number
    request.StudyInstanceUID = order.study_uid
    request.RequestedProcedureCodeSequence = DicomSequence(
        [_code(order.procedure.code_value, order.procedure.scheme, order.procedure.meaning)]
    )
    request.ScheduledProcedureStepDescription = order.procedure.study_description
    ds.RequestAttributesSequence = DicomSequence([request])
    return ds


def ct_slice(
    base: Dataset,
    geometry: SeriesGeometry,
    index: int,
    stored: npt.NDArray[np.uint16],
    sop_instance_uid: str,
    kind: StudyKind,
) -> Dataset:
    """One axial CT Image: slice ``index`` (0 = most inferior) with 12-bit stored values."""
    ds = Dataset()
    ds.update(base)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceNumber = index + 1
    ds.ScanOptions = "AXIAL" if kind is StudyKind.CT_HEAD else "HELICAL"
    ds.SliceThickness = decimal_string(geometry.slice_thickness_mm)
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = decimal_string(geometry.pixel_spacing_mm * geometry.columns)
    ds.GantryDetectorTilt = decimal_string(geometry.gantry_tilt_deg)
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "1000"
    ds.XRayTubeCurrent = 300 if kind is StudyKind.CT_HEAD else 150
    ds.Exposure = 300 if kind is StudyKind.CT_HEAD else 150
    ds.FilterType = "HEAD" if kind is StudyKind.CT_HEAD else "BODY"
    ds.ConvolutionKernel = KERNELS[kind]
    ds.PatientPosition = "HFS"
    ds.PositionReferenceIndicator = ""
    position = geometry.positions()[index]
    ds.ImagePositionPatient = [decimal_string(v) for v in position]
    ds.ImageOrientationPatient = [decimal_string(v) for v in geometry.orientation]
    ds.SliceLocation = decimal_string(float(position[2]))
    ds.PixelSpacing = [decimal_string(geometry.pixel_spacing_mm)] * 2
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    centres, widths, explanations = WINDOWS[kind]
    ds.WindowCenter = [decimal_string(v) for v in centres]
    ds.WindowWidth = [decimal_string(v) for v in widths]
    ds.WindowCenterWidthExplanation = explanations
    set_pixels(ds, stored)
    return ds


def radiograph(
    base: Dataset,
    stored: npt.NDArray[np.uint16],
    pixel_spacing_mm: float,
    sop_instance_uid: str,
    kind: StudyKind,
) -> Dataset:
    """A PA chest film as CR Image or DX Image (For Presentation), MONOCHROME2, 12 bits."""
    ds = Dataset()
    ds.update(base)
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ViewPosition = "PA"
    ds.KVP = "110"
    ds.ExposureTime = "8"
    ds.XRayTubeCurrent = 320
    ds.Exposure = 3
    ds.DistanceSourceToDetector = "1800"
    ds.ImagerPixelSpacing = [decimal_string(pixel_spacing_mm)] * 2
    ds.WindowCenter = "1900"
    ds.WindowWidth = "3400"
    if kind is StudyKind.DX_CHEST:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
        ds.AnatomicRegionSequence = DicomSequence([_code("51185008", "SCT", "Chest")])
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.LossyImageCompression = "00"
        ds.BurnedInAnnotation = "NO"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = "COLUMN"
        ds.AcquisitionContextSequence = DicomSequence([])
        ds.ViewCodeSequence = DicomSequence([_code("399348003", "SCT", "postero-anterior")])
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    set_pixels(ds, stored)
    return ds


def set_pixels(ds: Dataset, stored: npt.NDArray[np.uint16]) -> None:
    """Image Pixel module for unsigned 12-bit in 16-bit greyscale, native encoding."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()


def encoder_for(compression: Compression) -> Encoder | None:
    """The pydicom encoder for ``compression`` (None for native); raises if not installed."""
    if compression is Compression.NONE:
        return None
    from pydicom.pixels import get_encoder

    encoder = get_encoder(TRANSFER_SYNTAXES[compression])
    if not encoder.is_available:
        raise EncoderMissingError(
            f"no encoder for {compression.value} ({TRANSFER_SYNTAXES[compression].name}); "
            f"pip install {ENCODER_PACKAGES[compression]}"
        )
    return encoder


def save(ds: Dataset, path: Path, compression: Compression) -> None:
    """Encode losslessly (SOP Instance UID kept: the pixels are unchanged) and write Part 10."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if compression is not Compression.NONE:
        encoder_for(compression)
        ds.compress(TRANSFER_SYNTAXES[compression], generate_instance_uid=False)
        ds.LossyImageCompression = "00"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def sop_class_for(kind: StudyKind) -> tuple[str, str]:
    """(SOP Class UID, Modality) of the image IOD used for ``kind``."""
    return {
        StudyKind.CT_HEAD: (CTImageStorage, "CT"),
        StudyKind.CT_CHEST: (CTImageStorage, "CT"),
        StudyKind.CT_ABDOMEN: (CTImageStorage, "CT"),
        StudyKind.CR_CHEST: (ComputedRadiographyImageStorage, "CR"),
        StudyKind.DX_CHEST: (DigitalXRayImageStorageForPresentation, "DX"),
    }[kind]


def decimal_string(value: float) -> str:
    """Decimal String at the most precision 16 characters allow, integers without ".0"."""
    if math.isclose(value, round(value), abs_tol=1e-9):
        return str(round(value))
    return format_number_as_ds(float(value))


def _later(hhmmss: str, seconds: int) -> str:
    total = int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:6]) + seconds
    total = min(total, 86399)
    return f"{total // 3600:02d}{total % 3600 // 60:02d}{total % 60:02d}"
