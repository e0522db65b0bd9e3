"""Offline WordNet for nltk's METEOR, built from the Debian ``wordnet-base`` package.

nltk's WordNet reader needs the database files plus a ``lexnames`` table that Debian does not
ship as a data file (it is rebuilt from the package's ``lexnames(5WN)`` manual page) and an
``index.sense`` file (from ``wordnet-sense-index`` when installed, else empty). Everything is
copied (not linked) into ``<user cache>/napari-med3dvlm/nltk_data/corpora/wordnet`` on first use.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

DEBIAN_DICT = Path("/usr/share/wordnet")
DEBIAN_LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_LEXNAME_LINE = re.compile(r"^(\d\d)\s+((adj|adv|noun|verb)\.[A-Za-z]+)\s")


def nltk_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-med3dvlm")) / "nltk_data"


def lexnames_from_manpage(text: str) -> str:
    """The 45-line ``lexnames`` file: ``NN<TAB>name<TAB>syntactic category``."""
    lines = []
    for raw in text.splitlines():
        m = _LEXNAME_LINE.match(raw)
        if m:
            lines.append(f"{m.group(1)}\t{m.group(2)}\t{_CATEGORY[m.group(3)]}")
    return "\n".join(lines) + "\n"


def ensure_wordnet(source: Path = DEBIAN_DICT, manpage: Path = DEBIAN_LEXNAMES_MAN) -> Path:
    """Install WordNet for nltk if needed and put its folder on nltk's search path."""
    import nltk

    root = nltk_data_dir()
    target = root / "corpora" / "wordnet"
    if not (target / "lexnames").exists():
        if not (source / "data.noun").exists():
            raise FileNotFoundError(
                f"WordNet database not found in {source}; install it (Debian: apt-get install wordnet-base)"
            )
        target.mkdir(parents=True, exist_ok=True)
        for path in source.iterdir():
            if path.is_file():
                shutil.copyfile(path, target / path.name)
        with gzip.open(manpage, "rt", encoding="utf-8", errors="replace") as fh:
            lexnames = lexnames_from_manpage(fh.read())
        if len(lexnames.splitlines()) != 45:
            raise RuntimeError(f"expected 45 lexnames entries, parsed {len(lexnames.splitlines())}")
        (target / "lexnames").write_text(lexnames, encoding="ascii")
        # nltk maps synsets to WordNet 3.0 through index.sense (Debian: wordnet-sense-index);
        # METEOR never uses that map, so an empty index is enough when the package is absent.
        if not (target / "index.sense").exists():
            (target / "index.sense").write_text("", encoding="ascii")
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    os.environ.setdefault("NLTK_DATA", str(root))
    return target
