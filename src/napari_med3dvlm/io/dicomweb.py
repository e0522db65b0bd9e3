"""Studies and series from a DICOMweb server (a PACS or research archive): QIDO-RS to search,
WADO-RS to retrieve, STOW-RS to store a result back. The HTTP side is `dicomweb-client`'s.

Retrieved instances go through the file reader's own path (`dicom.InstanceSet`): the same grouping,
ordering along the slice normal, spacing from positions, rescale, multi-frame handling and the same
rules for damaged instances (left out with a warning; an error when nothing is left).

The size of a series is known before any pixel is fetched (the series metadata gives every
instance's rows, columns, frames and bit depth), so a retrieval above a limit is refused before it
starts. Instances are fetched one by one: progress can be shown, Stop takes effect between
instances, and an instance that the server lists but cannot deliver is noticed.

Nothing that identifies a patient appears in a message: instances are named by their instance
number, studies and series by what the caller asked for. Search results carry no patient name or
ID (those attributes are not even requested). Credentials never appear in messages or URLs shown.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pydicom

from ._util import VolumeReadError, check_memory, format_bytes, short_hash
from .dicom import InstanceSet, read_dicom_volumes
from .selection import select_series
from .volume import Volume

#: Default refusal threshold for one retrieval (decoded pixel bytes), above which a caller must
#: ask the user or pass a larger limit.
DEFAULT_MAX_BYTES = 2 << 30
DEFAULT_TIMEOUT_S = 30.0

#: Series that hold no greyscale image to read (reports, presentation states, key objects, ...).
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "PR", "KO", "DOC", "REG", "RTSTRUCT", "RTPLAN", "RTRECORD", "FID", "PLAN", "AU", "ECG", "SEG"}
)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_ENV_PREFIX = "NAPARI_MED3DVLM_DICOMWEB_"


class DicomWebError(VolumeReadError):
    """A DICOMweb request that failed: unreachable server, refused credentials, a timeout, a study
    or series that is not there or holds nothing to read, a retrieval above the size limit, a store
    the server rejected. The message says which and what to do."""


class RetrievalTooLarge(DicomWebError):
    """The retrieval would exceed the size limit; ``nbytes`` says how large it is (for asking)."""

    def __init__(self, message: str, nbytes: int):
        super().__init__(message)
        self.nbytes = nbytes


class RetrievalCancelled(DicomWebError):
    """Stopped by the user before every instance arrived; nothing was kept."""


def check_uid(uid: str, what: str = "UID") -> str:
    """``uid`` if it is a DICOM UID (digits and dots, no leading zeros, at most 64 characters)."""
    uid = str(uid or "").strip()
    if not uid or len(uid) > 64 or not _UID.match(uid):
        shown = uid if len(uid) <= 70 else uid[:67] + "..."
        raise DicomWebError(
            f"{what} {shown!r} is not a DICOM UID (digits separated by dots, at most 64 characters)"
        )
    return uid


def display_url(url: str) -> str:
    """The URL without any user name or password in it (for messages)."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def credentials_from_env(environ) -> dict:
    """``user``, ``password`` and ``token`` from NAPARI_MED3DVLM_DICOMWEB_USER/_PASSWORD/_TOKEN."""
    return {key: environ.get(_ENV_PREFIX + key.upper()) or None for key in ("user", "password", "token")}


@dataclass(frozen=True)
class StudyInfo:
    """One QIDO-RS study match: what a study list shows (no patient name or ID)."""

    study_uid: str
    date: str
    modalities: str
    description: str
    accession: str
    n_series: int | None
    n_instances: int | None


@dataclass(frozen=True)
class RemoteSeries:
    """One series of a study: what a series list shows."""

    series_uid: str
    number: int | None
    modality: str
    description: str
    n_instances: int | None

    @property
    def is_image(self) -> bool:
        return self.modality.upper() not in NON_IMAGE_MODALITIES

    @property
    def uid_hash(self) -> str:
        """The short hash that names the series in messages (as `SeriesInfo.uid_hash` does)."""
        return short_hash(self.series_uid)


@dataclass(frozen=True)
class SeriesPlan:
    """What retrieving one series will fetch, from its metadata: instance names and UIDs, and the
    decoded size of their pixels."""

    study_uid: str
    series_uid: str
    description: str
    instances: tuple  # ((name, SOPInstanceUID), ...)
    nbytes: int


class DicomWebServer:
    """One DICOMweb service, with optional HTTP basic credentials or a bearer token."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ):
        import requests
        from dicomweb_client.api import DICOMwebClient

        url = str(url or "").strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DicomWebError(
                f"{display_url(url) or url[:40]!r} is not a DICOMweb address; give one like "
                "http://host:8042/dicom-web"
            )
        if parts.username or parts.password:  # credentials belong in options, not the URL
            user, password = user or parts.username, password or parts.password
            url = display_url(url)
        self.url = display_url(url)
        self.timeout = float(timeout)
        session = requests.Session()
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        elif user:
            session.auth = (user, password or "")
        session.hooks["response"].append(_whole_multipart)  # a cut transfer is a fault, not a damaged instance
        self._client = DICOMwebClient(url.rstrip("/"), session=session, timeout=self.timeout)
        self._client.set_http_retry_params(retry=False)  # a fault is reported, not hidden by retries

    # -- requests, with faults turned into messages ------------------------------------------------

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DicomWebError:
            raise
        except Exception as err:  # noqa: BLE001 - every transport and protocol fault becomes one message
            raise self._fault(err, what) from err

    def _fault(self, err: BaseException, what: str) -> DicomWebError:
        import requests

        where = f"the DICOMweb server at {self.url}"
        if isinstance(err, requests.exceptions.ChunkedEncodingError):  # the body stopped part-way
            return DicomWebError(
                f"{where} closed the connection in the middle of its answer while {what}; nothing was kept, "
                "try again (or check the server's and any proxy's logs)"
            )
        if isinstance(err, requests.exceptions.Timeout):
            return DicomWebError(
                f"{where} did not answer within {self.timeout:g} s while {what}; check that it is up, or "
                "allow more time (--dicomweb-timeout)"
            )
        if isinstance(err, requests.exceptions.ConnectionError):
            return DicomWebError(
                f"cannot reach {where} while {what} (connection refused, reset or host not found); check the "
                "address and that the server is running"
            )
        if isinstance(err, requests.exceptions.HTTPError) and err.response is not None:
            status = err.response.status_code
            if status == 401:
                return DicomWebError(
                    f"{where} refused the request while {what} (HTTP 401, not authenticated): give a user and "
                    "password or a token, or check them"
                )
            if status == 403:
                return DicomWebError(
                    f"{where} does not allow this account to do this (HTTP 403, forbidden) while {what}; ask "
                    "its administrator for access"
                )
            if status == 404:
                return DicomWebError(
                    f"{where} has nothing at the requested address (HTTP 404) while {what}: the study or "
                    "series is not on this server, or the URL is not its DICOMweb root"
                )
            return DicomWebError(f"{where} answered HTTP {status} ({err.response.reason}) while {what}")
        if isinstance(err, requests.exceptions.RequestException):
            return DicomWebError(f"{where}: the request failed while {what} ({type(err).__name__})")
        text = " ".join(str(err).split())[:160] or type(err).__name__
        return DicomWebError(f"{where} sent an answer that could not be read while {what} ({text})")

    # -- search -----------------------------------------------------------------------------------

    def search_studies(
        self,
        *,
        date: str = "",
        modality: str = "",
        description: str = "",
        accession: str = "",
        limit: int = 200,
    ) -> list[StudyInfo]:
        """Studies matching the filters (QIDO-RS). ``date`` is YYYYMMDD or a range YYYYMMDD-YYYYMMDD;
        ``description`` is part of the study description, or a pattern with * and ?. Patient
        attributes are neither requested nor returned."""
        filters = {}
        if date.strip():
            text = date.strip().replace(" ", "")
            if not re.fullmatch(r"\d{8}(-\d{8})?|\d{8}-|-\d{8}", text):
                raise DicomWebError(f"study date {date!r}: use YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
            filters["StudyDate"] = text
        if modality.strip():
            filters["ModalitiesInStudy"] = modality.strip().upper()
        # The description is matched here, case-insensitively, as a substring or * pattern: servers
        # differ in how they match it (case, wildcards; Orthanc 1.10 does not decode a percent-encoded
        # query value, so "CT head" or "CT*" never match there).
        pattern = description.strip().lower()
        if pattern and "*" not in pattern and "?" not in pattern:
            pattern = f"*{pattern}*"
        if accession.strip():
            filters["AccessionNumber"] = accession.strip()
        fields = [
            "StudyDate",
            "StudyDescription",
            "AccessionNumber",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
        ]
        found = self._call(
            "searching for studies",
            self._client.search_for_studies,
            search_filters=filters,
            fields=fields,
            limit=limit,
        )
        studies = []
        for item in found or []:
            uid = _json_text(item, "0020000D")
            if pattern and not fnmatch.fnmatchcase(_json_text(item, "00081030").lower(), pattern):
                continue
            if uid:
                studies.append(
                    StudyInfo(
                        study_uid=uid,
                        date=_json_text(item, "00080020"),
                        modalities="/".join(_json_values(item, "00080061")),
                        description=_json_text(item, "00081030"),
                        accession=_json_text(item, "00080050"),
                        n_series=_json_int(item, "00201206"),
                        n_instances=_json_int(item, "00201208"),
                    )
                )
        return sorted(studies, key=lambda s: s.date, reverse=True)

    def list_series(self, study_uid: str) -> list[RemoteSeries]:
        """The series of a study (QIDO-RS), in series-number order."""
        study_uid = check_uid(study_uid, "study UID")
        fields = ["Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances"]
        found = self._call(
            "listing the study's series",
            self._client.search_for_series,
            study_instance_uid=study_uid,
            fields=fields,
        )
        series = []
        for item in found or []:
            uid = _json_text(item, "0020000E")
            if uid:
                series.append(
                    RemoteSeries(
                        series_uid=uid,
                        number=_json_int(item, "00200011"),
                        modality=_json_text(item, "00080060"),
                        description=_json_text(item, "0008103E"),
                        n_instances=_json_int(item, "00201209"),
                    )
                )
        if not series:
            raise DicomWebError(f"the study was not found on {self.url}, or it holds no series")
        return sorted(series, key=lambda s: (s.number is None, s.number or 0))

    # -- retrieval --------------------------------------------------------------------------------

    def plan(self, study_uid: str, series_uid: str) -> SeriesPlan:
        """What retrieving a series would fetch and how large it is, from its metadata (no pixels)."""
        study_uid = check_uid(study_uid, "study UID")
        series_uid = check_uid(series_uid, "series UID")
        metadata = self._call(
            "reading the series' metadata",
            self._client.retrieve_series_metadata,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
        )
        instances, nbytes, description = [], 0, ""
        for index, item in enumerate(metadata or [], start=1):
            sop = _json_text(item, "00080018")
            if not sop:
                continue
            number = _json_int(item, "00200013")
            name = f"instance {number if number is not None else index}"
            rows, cols = _json_int(item, "00280010") or 0, _json_int(item, "00280011") or 0
            frames = _json_int(item, "00280008") or 1
            bits = _json_int(item, "00280100") or 16
            samples = _json_int(item, "00280002") or 1
            nbytes += rows * cols * frames * samples * max(bits, 16) // 8
            description = description or _json_text(item, "0008103E")
            instances.append((name, sop))
        if not instances:
            raise DicomWebError(f"the series was not found on {self.url}, or it holds no instances")
        return SeriesPlan(study_uid, series_uid, description, tuple(instances), nbytes)

    def image_series(self, study_uid: str, series_uid: str | None = None) -> list[RemoteSeries]:
        """The series to read: ``series_uid`` alone, or every image series of the study."""
        listed = self.list_series(study_uid)
        if series_uid:
            series_uid = check_uid(series_uid, "series UID")
            try:  # the readers' one rule (by SeriesInstanceUID here)
                return [listed[select_series(listed, series_uid, f"the study on {self.url}")]]
            except VolumeReadError as err:
                raise DicomWebError(str(err)) from None
        images = [s for s in listed if s.is_image]
        if not images:
            kinds = ", ".join(sorted({s.modality or "?" for s in listed}))
            raise DicomWebError(
                f"the study on {self.url} holds no image series ({len(listed)} series of {kinds}); nothing to read"
            )
        return images

    def check_size(self, plans: list[SeriesPlan], max_bytes: int | None) -> int:
        """Refuse, before anything is fetched, plans larger than ``max_bytes`` or the free memory."""
        total = sum(p.nbytes for p in plans)
        count = sum(len(p.instances) for p in plans)
        if max_bytes is not None and total > max_bytes:
            raise RetrievalTooLarge(
                f"the retrieval would fetch {count} instances, {format_bytes(total)} of pixels, more than the "
                f"limit of {format_bytes(max_bytes)}; pick one series, or raise the limit (--max-download-gb)",
                total,
            )
        check_memory(total, f"the {'series' if len(plans) == 1 else 'study'} on {self.url}", "retrieving it")
        return total

    def retrieve(
        self, plan: SeriesPlan, cancelled: Callable[[], bool] | None = None
    ) -> Iterator[int]:
        """Fetch a planned series instance by instance (WADO-RS), yielding the count so far, and
        return (as the generator's value) the volume read from them; raises `RetrievalCancelled` when
        ``cancelled()`` turns true. Damaged instances are left out with a warning, as files are."""
        import requests

        items, damaged = [], []
        total = len(plan.instances)
        for done, (name, sop) in enumerate(plan.instances, start=1):
            if cancelled is not None and cancelled():
                raise RetrievalCancelled(f"retrieval stopped after {done - 1} of {total} instances; nothing was kept")
            try:
                dataset = self._client.retrieve_instance(
                    study_instance_uid=plan.study_uid,
                    series_instance_uid=plan.series_uid,
                    sop_instance_uid=sop,
                    media_types=(("application/dicom", "*"),),  # as stored: no server-side transcoding
                )
            except requests.exceptions.RequestException as err:  # transport faults end the retrieval
                raise self._fault(err, f"retrieving {name} ({done} of {total})") from err
            except Exception as err:  # noqa: BLE001 - the instance's bytes do not parse: damaged
                damaged.append(f"{name}: damaged DICOM data ({type(err).__name__})")
                continue
            items.append((name, dataset))
            yield done
        if not items:
            raise DicomWebError(f"the series on {self.url}: none of its {total} instances could be read")
        if damaged:
            warnings.warn(
                f"the series on {self.url}: skipped {len(damaged)} unreadable instance(s): {'; '.join(damaged[:3])}",
                stacklevel=2,
            )
        source = InstanceSet(
            items=tuple(items), label=f"the series on {self.url}", key=f"{self.url}|{plan.series_uid}", server=self.url
        )
        volumes = read_dicom_volumes(source)
        if len(volumes) > 1:
            warnings.warn(
                f"the series on {self.url} splits into {len(volumes)} parts (sizes or orientations differ); the "
                "largest is used",
                stacklevel=2,
            )
        return max(volumes, key=lambda v: v.data.size)

    def read_series(self, study_uid: str, series_uid: str, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Volume:
        """One series as a `Volume` (size checked first)."""
        plan = self.plan(study_uid, series_uid)
        self.check_size([plan], max_bytes)
        return _drain(self.retrieve(plan))

    def read_study(
        self, study_uid: str, series_uid: str | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES
    ) -> list[Volume]:
        """Every image series of a study (or the one given) as volumes; the total size is checked
        before anything is fetched."""
        plans = [self.plan(study_uid, s.series_uid) for s in self.image_series(study_uid, series_uid)]
        self.check_size(plans, max_bytes)
        return [_drain(self.retrieve(plan)) for plan in plans]

    # -- store ------------------------------------------------------------------------------------

    def store(self, dataset: pydicom.Dataset) -> str:
        """Store one instance (STOW-RS); returns where it can be retrieved. Raises `DicomWebError`
        when the server rejects it."""
        study_uid = check_uid(dataset.StudyInstanceUID, "study UID")
        response = self._call(
            "storing the report", self._client.store_instances, datasets=[dataset], study_instance_uid=study_uid
        )
        failed = (response or pydicom.Dataset()).get("FailedSOPSequence") or []
        stored = (response or pydicom.Dataset()).get("ReferencedSOPSequence") or []
        if failed or not stored:
            reason = ""
            if failed:
                code = failed[0].get("FailureReason")
                reason = f" (failure reason {int(code):#06x})" if code is not None else ""
            raise DicomWebError(f"the DICOMweb server at {self.url} did not store the report{reason}")
        # Some servers acknowledge an instance that a filter then drops (Orthanc's Lua filters do):
        # the report counts as stored only once the server lists it.
        listed = self._call(
            "checking that the report was stored",
            self._client.search_for_instances,
            study_instance_uid=study_uid,
            series_instance_uid=check_uid(dataset.SeriesInstanceUID, "series UID"),
            search_filters={"SOPInstanceUID": check_uid(dataset.SOPInstanceUID, "SOP instance UID")},
        )
        if not listed:
            raise DicomWebError(
                f"the DICOMweb server at {self.url} acknowledged the report but does not list it (a filter on the "
                "server dropped it, or the study does not accept new objects); it was not stored"
            )
        return str(stored[0].get("RetrieveURL") or f"{self.url}/studies/{study_uid}/series/{dataset.SeriesInstanceUID}")


def _whole_multipart(response, *args, **kwargs):
    """Response hook: a multipart answer (WADO-RS) must end with its closing boundary. A connection
    cut part-way through an answer without a length (close-delimited) otherwise looks complete to
    the HTTP layer, and the cut instance would pass for a damaged one; with a length or chunks the
    HTTP layer notices the cut itself. Raises ``ChunkedEncodingError`` as requests does then."""
    import requests

    content_type = response.headers.get("Content-Type", "")
    if kwargs.get("stream") or not response.ok or not content_type.lower().startswith("multipart/"):
        return response
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if match is None:
        return response
    closing = b"--" + match.group(1).strip().encode("latin-1") + b"--"
    body = response.content  # raises ChunkedEncodingError itself when a declared length or chunk is cut
    if closing not in body[-(len(closing) + 1024):]:
        raise requests.exceptions.ChunkedEncodingError(
            "the multipart answer ended before its closing boundary", response=response
        )
    return response


def _drain(generator):
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def _json_values(item: dict, tag: str) -> list:
    element = (item or {}).get(tag) or {}
    values = element.get("Value") or []
    return [v for v in values if isinstance(v, (str, int, float))]


def _json_text(item: dict, tag: str) -> str:
    values = _json_values(item, tag)
    return str(values[0]).strip() if values else ""


def _json_int(item: dict, tag: str) -> int | None:
    text = _json_text(item, tag)
    try:
        return int(float(text))
    except ValueError:
        return None
