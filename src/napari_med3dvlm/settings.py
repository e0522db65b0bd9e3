"""User settings (model source, device, dtype, generation), shared by the docks, the inference and
retrieval code and the command line.

Persisted as JSON so a choice made in the Settings dock (say a local model folder) is what the next
napari session and the next `napari-med3dvlm report` run use. ``NAPARI_MED3DVLM_CONFIG_DIR``
overrides the folder (tests, shared machines).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import platformdirs

from napari_med3dvlm.model.sources import EMBEDDED

CONFIG_DIR_ENV = "NAPARI_MED3DVLM_CONFIG_DIR"
SETTINGS_FILE = "settings.json"

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: How a closed question (choices A-D) is answered: rank the four choices by the model's
#: likelihood of each as the answer, or generate "B. ..." freely as the reference evaluates.
CLOSED_ANSWER_MODES = ("score", "generate")
#: Where the model runs: in this process, or on a `napari-med3dvlm serve` server.
BACKENDS = ("local", "server")
#: The name under which the server token is stored (`save_secret`), and the environment variables
#: that point the command line at a server (its --server / --token options win over them).
SERVER_TOKEN = "server_token"
SERVER_ENV = "NAPARI_MED3DVLM_SERVER"
TOKEN_ENV = "NAPARI_MED3DVLM_TOKEN"
#: Where the language model runs: in this process, or in a vLLM server (docs/vllm.md).
LLM_BACKENDS = ("transformers", "vllm")


@dataclass
class InferenceSettings:
    """Which model to run where, and how to sample from it."""

    model_source: str = EMBEDDED  # "embedded", a local folder, or a hub id
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy: the same volume gives the same report
    top_p: float = 0.9
    seed: int = 42
    closed_answer: str = "score"
    #: Show the "outside what this model knows" warning in the docks and on the CLI's stderr
    #: (`scope`). Exports record the check either way.
    scope_warnings: bool = True
    #: Where the model runs: "local" (this process) or "server" (`napari-med3dvlm serve` at
    #: ``server_url``; its token is a secret, see `load_secret("server_token")`).
    backend: str = "local"
    server_url: str = ""
    #: "transformers" (in this process) or "vllm" (a vLLM server: continuous batching, many GPUs).
    llm: str = "transformers"
    #: A vLLM server that is already running (http://host:port); empty: start one for the model.
    vllm_url: str = ""

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        self.max_new_tokens = int(self.max_new_tokens)
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        self.temperature = float(self.temperature)
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        self.top_p = float(self.top_p)
        if self.closed_answer not in CLOSED_ANSWER_MODES:
            raise ValueError(f"closed_answer must be one of {CLOSED_ANSWER_MODES}, got {self.closed_answer!r}")
        self.model_source = str(self.model_source).strip() or EMBEDDED
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        self.server_url = str(self.server_url or "").strip()
        if isinstance(self.scope_warnings, str):
            self.scope_warnings = self.scope_warnings.strip().lower() not in {"0", "false", "no", "off"}
        self.scope_warnings = bool(self.scope_warnings)
        if self.llm not in LLM_BACKENDS:
            raise ValueError(f"llm must be one of {LLM_BACKENDS}, got {self.llm!r}")
        self.vllm_url = str(self.vllm_url or "").strip().rstrip("/")

    def generation_kwargs(self) -> dict:
        """Keyword arguments for ``generate`` (sampling only when temperature > 0)."""
        kwargs = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False)
        return kwargs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> InferenceSettings:
        """Ignore unknown keys so settings written by a newer version still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def updated(self, **changes) -> InferenceSettings:
        return replace(self, **changes)


def config_dir(path: str | os.PathLike | None = None) -> Path:
    if path is not None:
        return Path(path)
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    return Path(platformdirs.user_config_dir("napari-med3dvlm"))


def settings_path(path: str | os.PathLike | None = None) -> Path:
    return config_dir(path) / SETTINGS_FILE


def load_settings(path: str | os.PathLike | None = None) -> InferenceSettings:
    """Saved settings, or defaults when none were saved (or the file is unreadable)."""
    file = settings_path(path)
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
        return InferenceSettings.from_dict(values)
    except (OSError, ValueError, TypeError):
        return InferenceSettings()


def save_settings(settings: InferenceSettings, path: str | os.PathLike | None = None) -> Path:
    file = settings_path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings.to_dict(), indent=2), encoding="utf-8")
    tmp.replace(file)
    return file


# -- secrets ------------------------------------------------------------------------------------
# Tokens and passwords (a backend server's token, PACS credentials) live beside the settings in a
# file of their own, readable by the user only, so that `InferenceSettings.to_dict()` (which goes
# into every export) never holds one. Callers never print or log a secret's value.
SECRETS_FILE = "secrets.json"


def secrets_path(path: str | os.PathLike | None = None) -> Path:
    return config_dir(path) / SECRETS_FILE


def load_secret(name: str, path: str | os.PathLike | None = None) -> str:
    """The secret stored under ``name`` ('' when none is stored or the file is unreadable)."""
    try:
        values = json.loads(secrets_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    value = values.get(name, "") if isinstance(values, dict) else ""
    return value if isinstance(value, str) else ""


def save_secret(name: str, value: str, path: str | os.PathLike | None = None) -> Path:
    """Store (or, with an empty ``value``, remove) one secret; the file is created with mode 0600."""
    file = secrets_path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
        values = values if isinstance(values, dict) else {}
    except (OSError, ValueError):
        values = {}
    if value:
        values[name] = value
    else:
        values.pop(name, None)
    tmp = file.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2)
    os.chmod(tmp, 0o600)
    tmp.replace(file)
    return file
