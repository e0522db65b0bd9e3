"""`napari-med3dvlm serve`: the model on a GPU machine, the docks and the CLI anywhere (`app`)."""

from .app import Limits, create_app

__all__ = ["Limits", "create_app"]
