"""The HTTP side of talking to `napari-med3dvlm serve`: one client with the token, timeouts and the
rule that turns every failure into a `ServerError` sentence. `inference.remote.RemoteEngine` (report,
chat) and the retrieval command line (search) both use it.
"""

from __future__ import annotations

import json

import httpx

from napari_med3dvlm.errors import ServerError

#: Seconds to wait for a connection, and for any byte of a reply (a stream sends a piece per token,
#: so silence this long means the server or the network is gone).
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0


class UnknownVolume(Exception):
    """The server does not hold the volume (it restarted or evicted it): upload it again."""


class ServerClient:
    """Requests to one server; ``token`` goes in a bearer header and nowhere else."""

    def __init__(self, url: str, token: str = "", timeout: float = READ_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None):
        url = (url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ServerError(f"Backend server address {url!r} must start with http:// or https://")
        self.url = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, transport=transport,
                                 timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S))

    def close(self) -> None:
        self.http.close()

    def json(self, method: str, path: str, unknown_volume: bool = False, **kwargs) -> dict:
        return self.request(method, path, unknown_volume=unknown_volume, **kwargs).json()

    def request(self, method: str, path: str, ok=(200, 201), unknown_volume: bool = False, **kwargs):
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise self.transport_error(err) from err
        if response.status_code not in ok:
            self.raise_for(response, unknown_volume)
        return response

    def raise_for(self, response: httpx.Response, unknown_volume: bool = False):
        """Raise the `ServerError` (or `UnknownVolume`) that a non-success ``response`` means."""
        status = response.status_code
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = None
        if isinstance(detail, dict) and detail.get("code") == "unknown_volume" and unknown_volume:
            raise UnknownVolume()
        message = detail.get("message") if isinstance(detail, dict) else detail
        if not isinstance(message, str):
            message = json.dumps(detail) if detail else response.reason_phrase
        if status == 401:
            raise ServerError(f"The server at {self.url} refused the token (missing or wrong); set the "
                              "token in Settings, --token or NAPARI_MED3DVLM_TOKEN")
        raise ServerError(f"The server at {self.url} answered {status}: {message}")

    def transport_error(self, err: Exception, during: str = "") -> ServerError:
        if isinstance(err, httpx.ConnectError):
            return ServerError(f"The backend server at {self.url} is not reachable (is `napari-med3dvlm serve` "
                               "running, and the address or SSH tunnel right?)")
        if isinstance(err, httpx.TimeoutException):
            return ServerError(f"The backend server at {self.url} did not answer in time "
                               f"({type(err).__name__}); the text so far is kept")
        what = f" while {during}" if during else ""
        return ServerError(f"The connection to the backend server at {self.url} broke{what} "
                           f"({type(err).__name__}); the text so far is kept")
