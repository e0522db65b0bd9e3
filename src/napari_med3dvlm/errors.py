"""Errors every layer may raise and every front end (docks, command line) knows how to show."""

from __future__ import annotations


class ModelUnavailableError(RuntimeError):
    """The model could not be loaded or run; the message tells the user which setting to change."""


class ServerError(ModelUnavailableError):
    """A backend server could not be reached or refused a request; the message names the server,
    says why and what to do (and never holds the token)."""
