"""A real PACS for the DICOMweb tests: Orthanc with its DICOMweb plugin (Debian's `orthanc` and
`orthanc-dicomweb`, installed by scripts/setup.sh), started once per session on a free loopback port
with a temporary storage folder, and stopped at the end. A second instance requires HTTP basic
credentials. A Lua filter makes one study read-only for SRs (a real STOW-RS rejection).

Also: a multi-slice CT series (the InVesalius head CT, cropped) written as DICOM with identifiers
planted, uploaded to both servers, and small stand-in servers for faults Orthanc does not produce
(a server that accepts connections and never answers; one that forbids everything).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from napari_med3dvlm.io.dicom_write import write_dicom_series

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from io_assets import PATIENT_TAGS  # noqa: E402
from pacs_assets import PASSWORD, READ_ONLY_DESCRIPTION, USER, free_port  # noqa: E402

PLUGIN_PATHS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)

_FILTER = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.Modality == 'SR' and dicom.StudyDescription == '{READ_ONLY_DESCRIPTION}' then
    return false
  end
  return true
end
"""


@dataclass
class Orthanc:
    root: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    auth: tuple | None = None

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def upload(self, files) -> None:
        import requests

        for file in files:
            response = requests.post(f"{self.root}/instances", data=Path(file).read_bytes(), auth=self.auth, timeout=30)
            response.raise_for_status()

    def get(self, path: str):
        import requests

        response = requests.get(f"{self.root}{path}", auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()


def _plugin() -> Path | None:
    return next((p for p in PLUGIN_PATHS if p.exists()), None)


def _start(folder: Path, auth: bool) -> Orthanc:
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    plugin = _plugin()
    if binary is None or plugin is None:
        pytest.skip("Orthanc and its DICOMweb plugin are not installed (scripts/setup.sh installs them)")
    port = free_port()
    storage = folder / "storage"
    (folder / "filter.lua").write_text(_FILTER)
    config = {
        "Name": "napari-med3dvlm-tests",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth,
        "RegisteredUsers": {USER: PASSWORD} if auth else {},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "LuaScripts": [str(folder / "filter.lua")],
        "HttpTimeout": 10,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(f"http://127.0.0.1:{port}", process, (USER, PASSWORD) if auth else None)
    import requests

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited at start: {(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{server.root}/system", auth=server.auth, timeout=1).ok:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("Orthanc did not start within 30 s")


def _stop(server: Orthanc) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def head_ct_values() -> np.ndarray:
    """A 24-slice crop of the InVesalius head CT in HU (z, y, x), every second row and column."""
    import tarfile

    from io_assets import CRANIUM, CRANIUM_SHAPE

    if not CRANIUM.exists():
        pytest.skip("the InVesalius example CT is not installed (scripts/setup.sh installs it)")
    with tarfile.open(CRANIUM, "r:gz") as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("matrix.dat"))
        raw = archive.extractfile(member).read()
    volume = np.frombuffer(raw, dtype="<i2").reshape(CRANIUM_SHAPE)
    return np.ascontiguousarray(volume[40:64, ::2, ::2])


@dataclass
class Study:
    folder: Path
    files: list
    study_uid: str
    series_uid: str


def _write_study(folder: Path, values, description: str, study_description: str, accession: str, extra=None) -> Study:
    from pydicom.uid import generate_uid

    study_uid = generate_uid()
    tags = dict(PATIENT_TAGS, StudyInstanceUID=study_uid, StudyDescription=study_description,
                AccessionNumber=accession, StudyDate="20240315", StudyTime="101500", PatientSex="F")
    tags.update(extra or {})
    files = write_dicom_series(
        values, folder, spacing=(3.0, 1.914, 1.914), first_position=(-122.5, -130.0, -20.0),
        description=description, intercept=-1024, window=(40, 80), shuffle=True, seed=5, extra=tags,
    )
    import pydicom

    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    return Study(folder, files, study_uid, series_uid)


@pytest.fixture(scope="session")
def head_study(tmp_path_factory, head_ct_values) -> Study:
    """The head CT as a shuffled axial series, patient identifiers planted (none may leave the plugin
    except in the SR, which copies the patient module by design)."""
    return _write_study(tmp_path_factory.mktemp("head_ct"), head_ct_values, "Head CT axial", "CT head", "ACC-55102")


@pytest.fixture(scope="session")
def read_only_study(tmp_path_factory, head_ct_values) -> Study:
    """A second study whose description makes Orthanc's filter refuse SRs into it."""
    return _write_study(
        tmp_path_factory.mktemp("archived_ct"), head_ct_values[:6], "Old CT", READ_ONLY_DESCRIPTION, "ACC-10001"
    )


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, head_study, read_only_study):
    """Orthanc without authentication, holding the head CT study and the read-only study."""
    server = _start(tmp_path_factory.mktemp("orthanc"), auth=False)
    try:
        server.upload(head_study.files)
        server.upload(read_only_study.files)
        yield server
    finally:
        _stop(server)


@pytest.fixture(scope="session")
def orthanc_auth(tmp_path_factory, head_study):
    """Orthanc requiring HTTP basic credentials (USER, PASSWORD), holding the head CT study."""
    server = _start(tmp_path_factory.mktemp("orthanc_auth"), auth=True)
    try:
        server.upload(head_study.files)
        yield server
    finally:
        _stop(server)


# -- stand-in servers for faults a healthy Orthanc does not produce ------------------------------


@pytest.fixture
def stalling_server():
    """Accepts connections and never answers: the URL of a DICOMweb root that stalls."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
                held.append(connection)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
    stop.set()
    thread.join(2)
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture
def status_server():
    """An HTTP server answering every request with a chosen status (403 by default)."""

    class Handler(BaseHTTPRequestHandler):
        status = 403

        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(Handler.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"forbidden")

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", Handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def cutting_proxy(orthanc):
    """A stand-in in front of the real Orthanc: passes every request through, except that the third
    instance retrieval (WADO-RS) sends its headers and half of its multipart body, then closes the
    connection. ``Handler.framing`` picks how the cut answer was framed: ``length`` (a Content-Length
    for the whole body), ``chunked`` (the last chunk never comes) or ``close`` (no length: the end of the
    connection is the end of the answer, so only the missing closing boundary shows the cut)."""
    import re

    import requests

    instance = re.compile(r"/dicom-web/studies/[\d.]+/series/[\d.]+/instances/[\d.]+/?(\?.*)?$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        framing = "length"
        cut_after = 2  # whole instance answers before the cut one
        served = 0
        cuts = 0

        def log_message(self, *args):
            pass

        def _forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
            answer = requests.request(self.command, orthanc.root + self.path, headers=headers, data=body, timeout=30)
            content = answer.content
            if self.command == "GET" and instance.search(self.path):
                Handler.served += 1
                if Handler.served == Handler.cut_after + 1:
                    return self._cut(answer.headers.get("Content-Type", ""), content)
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def _cut(self, content_type, content):
            assert content_type.startswith("multipart/related") and len(content) > 1000
            part = content[: len(content) // 2]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            if Handler.framing == "length":
                self.send_header("Content-Length", str(len(content)))
            elif Handler.framing == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                part = f"{len(part):x}\r\n".encode() + part + b"\r\n"
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(part)
            self.wfile.flush()
            Handler.cuts += 1
            self.close_connection = True

        do_GET = do_POST = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", Handler
    server.shutdown()
    server.server_close()
