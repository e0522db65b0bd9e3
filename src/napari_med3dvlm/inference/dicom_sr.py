"""A report or a chat as a DICOM Structured Report (Comprehensive 3D SR), filed with its source.

A PACS files an object by its patient and study modules, so the SR copies them from the source
instances (highdicom does, from the evidence): the report lands in the source's study, in a new
series, and a de-identified source gives a de-identified SR. This is the one place where those
modules are read; the Markdown and JSON exports never see them.

The content tree (highdicom's generic SR content items; see docs/dicom_sr.md for why not TID 1500):

    CONTAINER  Diagnostic imaging report (LOINC 18748-4)
      HAS OBS CONTEXT  the model as the observer device (name, model = model id, serial = software)
      CONTAINS  CONTAINER Findings (DCM 121070)
                  CONTAINS  TEXT Finding (DCM 121071) = the findings text, as in the Markdown report
      CONTAINS  CONTAINER Questions and answers (chat only; a private coding scheme)
                  CONTAINS  TEXT Question / TEXT Answer, in turn order
      CONTAINS  TEXT Comment (DCM 121106) = the research-use disclaimer

VerificationFlag is UNVERIFIED (no person has signed it); CompletionFlag is PARTIAL when generation
was stopped. The source series' SOP instances are listed as evidence.
"""

from __future__ import annotations

import copy
import os
import unicodedata
from datetime import datetime
from pathlib import Path

from napari_med3dvlm import __version__

from .export import DISCLAIMER

#: Series number of the SR series in the source's study (a high number: after the scanner's series).
SR_SERIES_NUMBER = 9001
#: Private coding scheme for the question/answer items (no standard code says "question to a model").
CODING_SCHEME = "99NM3DVLM"

# Type 2 attributes of the patient and study modules: highdicom copies them from the evidence and
# needs them present; real series often lack some, so copies get them empty.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
    "AccessionNumber",
)

#: Optional general study attributes highdicom does not copy (the SR's study then reads as the source's).
_STUDY_OPTIONAL = ("StudyDescription", "IssuerOfAccessionNumberSequence")


class DicomSrError(ValueError):
    """The volume has no DICOM source, or its headers cannot make an SR (the message says which)."""


def _evidence(headers) -> list:
    """Copies of the source headers with the type 2 patient/study attributes present (empty where
    the source lacks them); pixel data is never copied."""
    copies = []
    for header in headers:
        item = copy.copy(header)  # shallow: elements are shared, the dataset's own dict is not
        if "PixelData" in item:
            del item.PixelData
        for keyword in _TYPE2:
            if keyword not in item:
                setattr(item, keyword, "")
        copies.append(item)
    return copies


def build_report_sr(
    source,
    findings: str,
    *,
    model_id: str,
    questions: list[tuple[str, str]] | None = None,
    complete: bool = True,
    created: datetime | None = None,
):
    """A Comprehensive 3D SR (a pydicom Dataset) for a report (``findings``) and/or a chat
    (``questions``: (question, answer) pairs) about the volume read from ``source`` (an
    `io.DicomSource`)."""
    import highdicom as hd

    if source is None or not getattr(source, "headers", None):
        raise DicomSrError("a DICOM SR needs a DICOM source (a series read from DICOM files or a DICOMweb server)")
    evidence = _evidence(source.headers)
    root = _content_tree(findings, questions, model_id)

    created = created or datetime.now()
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=root,
            series_instance_uid=hd.UID(),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="napari-med3dvlm",
            is_complete=complete,
            is_final=False,
            is_verified=False,
            series_description=(
                "Med3DVLM report (research use only)" if findings is not None
                else "Med3DVLM questions and answers (research use only)"
            ),
            software_versions=f"napari-med3dvlm {__version__}",
            content_date=created.date(),
            content_time=created.time(),
        )
    except (ValueError, TypeError, AttributeError) as err:
        raise DicomSrError(f"the source headers cannot make a DICOM SR ({' '.join(str(err).split())[:160]})") from err
    for keyword in _STUDY_OPTIONAL:  # the rest of the general study module, as the source has it
        if keyword in evidence[0] and keyword not in sr:
            setattr(sr, keyword, evidence[0].data_element(keyword).value)
    # UTF-8: the model writes any Unicode, and the copied patient/study values are re-encoded with it.
    sr.SpecificCharacterSet = "ISO_IR 192"
    if questions:  # declare the private coding scheme the question/answer items use
        schemes = list(sr.get("CodingSchemeIdentificationSequence", []))
        schemes.append(_coding_scheme_item())
        sr.CodingSchemeIdentificationSequence = schemes
    return sr


def _content_tree(findings: str | None, questions: list[tuple[str, str]] | None, model_id: str):
    """The SR's content: the observing device (the model), the findings section and/or the
    question-and-answer section, and the research-use disclaimer."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["napari-med3dvlm", model_id]),  # one UID per model
            name=_short(model_id, 64),
            manufacturer_name="napari-med3dvlm",
            model_name=_short(model_id, 64),
            serial_number=f"napari-med3dvlm {__version__}",
        ),
    )
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report"))
    content = list(hd.sr.ObservationContext(observer_device_context=device))
    if findings is not None:
        section = hd.sr.ContainerContentItem(
            name=codes.DCM.Findings, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        section.ContentSequence = hd.sr.ContentSequence(
            [_text(codes.DCM.Finding, findings or "(no text generated)")], is_root=False, is_sr=True
        )
        content.append(section)
    if questions:
        section = hd.sr.ContainerContentItem(
            name=hd.sr.CodedConcept("QA", CODING_SCHEME, "Questions and answers"),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        turns = []
        for question, answer in questions:
            turns.append(_text(hd.sr.CodedConcept("Q", CODING_SCHEME, "Question"), question))
            turns.append(_text(hd.sr.CodedConcept("A", CODING_SCHEME, "Answer"), answer or "(no answer)"))
        section.ContentSequence = hd.sr.ContentSequence(turns, is_root=False, is_sr=True)
        content.append(section)
    content.append(_text(codes.DCM.Comment, DISCLAIMER))
    root.ContentSequence = hd.sr.ContentSequence(content, is_root=False, is_sr=True)
    return root


def chat_questions(turns) -> list[tuple[str, str]]:
    """(question, answer) pairs of chat turns (`prompts.Turn`) as the SR holds them: a closed
    question with its four choices, as the model was asked it; turns without an answer are left out."""
    from napari_med3dvlm.model.prompts import question_text

    return [
        (question_text(turn.question, turn.choices).strip(), turn.answer.strip())
        for turn in turns
        if turn.answer and turn.answer.strip()
    ]


def sr_questions(sr) -> list[tuple[str, str]]:
    """The (question, answer) pairs of an SR written by `build_report_sr` (empty when it has none)."""
    pairs = []
    for item in sr.get("ContentSequence", []):
        if item.get("ValueType") == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "QA":
            texts = [str(child.TextValue) for child in item.get("ContentSequence", []) if child.get("ValueType") == "TEXT"]
            pairs += list(zip(texts[::2], texts[1::2]))
    return pairs


def _coding_scheme_item():
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = CODING_SCHEME
    item.CodingSchemeName = "napari-med3dvlm model dialogue"
    item.CodingSchemeResponsibleOrganization = "napari-med3dvlm"
    return item


def dicom_text(text: str) -> str:
    """``text`` as a DICOM text value holds it: trimmed, control characters other than tab, line
    and form feeds left out (the UT value representation forbids them; a model may emit them)."""
    return "".join(
        c for c in str(text) if c in "\t\n\r\f" or unicodedata.category(c) not in ("Cc", "Cs")
    ).strip()


def _text(name, value: str):
    import highdicom as hd

    return hd.sr.TextContentItem(
        name=name, value=dicom_text(value), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _short(text: str, length: int) -> str:
    text = str(text)
    return text if len(text) <= length else text[: length - 3] + "..."


def sr_findings(sr) -> str:
    """The findings text of an SR written by `build_report_sr` ('' when it has none)."""
    for item in sr.get("ContentSequence", []):
        if item.get("ValueType") == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "121070":
            for child in item.get("ContentSequence", []):
                if child.get("ValueType") == "TEXT":
                    return str(child.TextValue)
    return ""


def write_sr(sr, path) -> Path:
    """Write the SR as a DICOM file, atomically (a temporary file renamed into place: a failure
    leaves no half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        sr.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
