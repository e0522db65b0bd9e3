"""Search the index that lives on a backend server (`napari-med3dvlm serve --index DB`): the same
`SearchHit`s as a local index, with paths as the server sees them."""

from __future__ import annotations

import base64
from pathlib import Path

from napari_med3dvlm.backend_client import ServerClient

from .store import SearchHit


def hit_to_wire(hit: SearchHit) -> dict:
    return {"score": round(float(hit.score), 4), "key": hit.key, "path": str(hit.path),
            "relative_path": hit.relative_path, "description": hit.description, "modality": hit.modality,
            "shape": list(hit.shape), "spacing": list(hit.spacing),
            "thumbnail": base64.b64encode(hit.thumbnail or b"").decode("ascii"), "scope": list(hit.scope)}


def hit_from_wire(values: dict) -> SearchHit:
    return SearchHit(score=float(values["score"]), key=values.get("key", ""), path=Path(values["path"]),
                     relative_path=values.get("relative_path", values["path"]),
                     description=values.get("description", ""), modality=values.get("modality", ""),
                     shape=tuple(values.get("shape", ())), spacing=tuple(values.get("spacing", ())),
                     thumbnail=base64.b64decode(values.get("thumbnail", "")), scope=tuple(values.get("scope", ())))


def search_server(client: ServerClient, text: str, k: int = 10) -> list[SearchHit]:
    """Text (or a report) -> the most similar volumes of the server's index."""
    reply = client.json("POST", "/v1/search", json={"text": text, "k": int(k)})
    return [hit_from_wire(values) for values in reply["hits"]]
