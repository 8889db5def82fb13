"""Write a rendered cine as a DICOM series: one single-frame MR image per cardiac phase.

Files are ``frame_01.dcm`` .. ``frame_16.dcm`` in explicit VR little endian. Frames share one
series and one position and differ in ``InstanceNumber``, ``TriggerTime`` (ms after the R wave)
and ``TemporalPositionIdentifier``, as a scanner exports a single-slice cine. UIDs are
``2.25`` UIDs made from name-based UUIDs of the cohort seed, the subject id and the frame, and the study date is
fixed, so the files are byte-identical across builds. The only patient attributes are
``PatientName`` and ``PatientID``, both set to the made-up subject id.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

STUDY_DATE = "20000101"
STUDY_TIME = "120000"


def _uid(seed: int, subject_id: str, *parts: str) -> str:
    # A name-based (version 5) UUID under the 2.25 root. pydicom's generate_uid ignores its
    # entropy sources when prefix is None, so it cannot give a reproducible 2.25 UID.
    name = "/".join(["pipeline", "cad_demo", str(seed), subject_id, *parts])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def write_cine_series(
    frames: np.ndarray, folder: Path, subject_id: str, seed: int, pixel_spacing_mm: float, frame_time_ms: float
) -> Path:
    """Write ``frames`` ``(H, W, T)`` (non-negative 12-bit integers) as ``T`` DICOM files in ``folder``.

    Each file's pixel data is the uint16 frame ``frames[:, :, t]`` unscaled (rows = ``H``), so it
    equals the NIfTI array written from the same frames. Returns ``folder``.
    """
    if frames.ndim != 3:
        raise ValueError(f"write_cine_series: frames must be (H, W, T), got shape {frames.shape}.")
    if frames.min() < 0 or frames.max() > 4095:
        raise ValueError(
            f"write_cine_series: frames must lie in [0, 4095] for 12-bit storage, "
            f"got [{frames.min()}, {frames.max()}] for {subject_id}."
        )

    folder.mkdir(parents=True, exist_ok=True)
    rows, columns, num_frames = frames.shape
    study_uid = _uid(seed, subject_id, "study")
    series_uid = _uid(seed, subject_id, "series")
    frame_of_reference_uid = _uid(seed, subject_id, "frame of reference")

    for index in range(num_frames):
        sop_uid = _uid(seed, subject_id, "frame", str(index))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian

        path = folder / f"frame_{index + 1:02d}.dcm"
        dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        dataset.SOPClassUID = MRImageStorage
        dataset.SOPInstanceUID = sop_uid
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.FrameOfReferenceUID = frame_of_reference_uid
        dataset.Modality = "MR"
        dataset.ImageType = ["DERIVED", "SECONDARY"]
        dataset.StudyDate = STUDY_DATE
        dataset.SeriesDate = STUDY_DATE
        dataset.ContentDate = STUDY_DATE
        dataset.StudyTime = STUDY_TIME
        dataset.SeriesDescription = "semi-synthetic cine rendered from one real scan"
        dataset.PatientName = subject_id
        dataset.PatientID = subject_id
        dataset.SeriesNumber = 1
        dataset.InstanceNumber = index + 1
        dataset.TemporalPositionIdentifier = index + 1
        dataset.NumberOfTemporalPositions = num_frames
        dataset.CardiacNumberOfImages = num_frames
        dataset.TriggerTime = f"{index * frame_time_ms:.2f}"
        dataset.SliceThickness = "10"
        dataset.PixelSpacing = [f"{pixel_spacing_mm:.5f}", f"{pixel_spacing_mm:.5f}"]
        dataset.ImagePositionPatient = [0, 0, 0]
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.Rows = rows
        dataset.Columns = columns
        dataset.BitsAllocated = 16
        dataset.BitsStored = 12
        dataset.HighBit = 11
        dataset.PixelRepresentation = 0
        dataset.PixelData = np.ascontiguousarray(frames[:, :, index], dtype="<u2").tobytes()
        dataset.save_as(path, enforce_file_format=True)

    return folder
