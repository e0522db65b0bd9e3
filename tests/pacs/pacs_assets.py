"""Facts and small helpers the PACS tests share."""

import socket

#: The protected Orthanc's one account.
USER, PASSWORD = "radiologist", "correct horse battery"
#: Orthanc's Lua filter refuses SRs into studies with this description (a real STOW-RS rejection).
READ_ONLY_DESCRIPTION = "Archived read-only study"


def free_port() -> int:
    """A loopback TCP port nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
