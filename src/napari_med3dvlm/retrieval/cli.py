"""``napari-med3dvlm index`` and ``napari-med3dvlm search``: the Retrieval dock, headless."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from napari_med3dvlm.settings import DEVICES, DTYPES, SERVER_ENV, TOKEN_ENV


def register(subparsers) -> None:
    index = subparsers.add_parser(
        "index",
        help="add or refresh a folder of volumes in a retrieval index",
        description=(
            "Embed every NIfTI file and DICOM series under DIR into the index at --db. Unchanged volumes "
            "are skipped, changed ones re-embedded, deleted ones removed. Safe to interrupt and re-run."
        ),
    )
    index.add_argument(
        "folder", metavar="DIR", type=Path, nargs="?",
        help="folder tree of NIfTI files and DICOM series (leave out to refresh every folder in the index)",
    )
    index.add_argument("--db", required=True, type=Path, help="index folder (created if missing)")
    index.add_argument("--batch-size", type=int, default=4, help="volumes per encoder batch and per commit")
    _add_model(index)
    index.set_defaults(func=run_index, quick_exit=True)

    search = subparsers.add_parser(
        "search",
        help="find the volumes that best match a text, a report or a volume",
        description="Search an index by text (default), by a report file (--report) or by a volume (--volume).",
    )
    search.add_argument("text", nargs="?", help="the query, in quotes")
    search.add_argument("--db", type=Path, help="index folder (not with --server: the server has its own)")
    search.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--report", type=Path, help="use a report text file as the query")
    search.add_argument("--volume", type=Path, help="use a volume (NIfTI file or DICOM folder) as the query")
    search.add_argument("--json", action="store_true", help="print results as JSON lines")
    _add_model(search)
    server = search.add_argument_group("backend server")
    server.add_argument("--server", metavar="URL",
                        help="search the index of a `napari-med3dvlm serve --index DB` server "
                        "(default: $NAPARI_MED3DVLM_SERVER)")
    server.add_argument("--token", help="the server's token (default: $NAPARI_MED3DVLM_TOKEN, else the stored one)")
    search.set_defaults(func=run_search, quick_exit=True)


def _add_model(parser) -> None:
    group = parser.add_argument_group("model (default: the saved settings)")
    group.add_argument("--model", help="'embedded', a local model folder, or a hub id")
    group.add_argument("--device", choices=DEVICES)
    group.add_argument("--dtype", choices=DTYPES)


def _embedder(args):
    from .embedder import get_embedder

    return get_embedder(args.model, args.device, getattr(args, "dtype", None))


def run_index(args) -> int:
    from .indexer import index_folder
    from .store import VolumeIndex

    if args.batch_size < 1:
        print("--batch-size must be at least 1", file=sys.stderr)
        return 2
    if args.folder is not None and not args.folder.is_dir():
        print(f"error: not a folder: {args.folder}", file=sys.stderr)
        return 2
    embedder = _embedder(args)
    cancel = threading.Event()

    def progress(done: int, total: int, message: str) -> None:
        print(f"\r[{done}/{total}] {message[:60]:<60}", end="", file=sys.stderr, flush=True)

    try:
        if args.folder is None:
            from .indexer import refresh_index

            reports = refresh_index(VolumeIndex(args.db), embedder, batch_size=args.batch_size, progress=progress,
                                    cancel=cancel)
            print(file=sys.stderr)
            for report in reports:
                print(f"{report.root.name}: {report.summary()}")
            return 0
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under accelerate launch / torchrun: shard the work
            from .indexer import index_folder_distributed

            report = index_folder_distributed(args.db, args.folder, embedder, batch_size=args.batch_size)
            if report is None:  # not the main process: it only embedded its share
                return 0
        else:
            report = index_folder(
                VolumeIndex(args.db), args.folder, embedder, batch_size=args.batch_size, progress=progress,
                cancel=cancel,
            )
    except KeyboardInterrupt:
        cancel.set()
        print("\ninterrupted: finished batches are kept; run the same command again to resume", file=sys.stderr)
        return 130
    print(file=sys.stderr)
    for path, error in report.failed:
        print(f"failed: {path}: {error}", file=sys.stderr)
    print(report.summary())
    return 1 if report.failed and not report.embedded and not report.unchanged else 0


def run_search(args) -> int:
    from .search import search_text, search_volume
    from .store import VolumeIndex

    chosen = [q for q in (args.text, args.report, args.volume) if q]
    if len(chosen) != 1:
        print("give exactly one query: TEXT, --report FILE or --volume PATH", file=sys.stderr)
        return 2
    server = args.server or os.environ.get(SERVER_ENV)
    if server:
        return _search_server(args, server)
    if args.db is None:
        print("give the index with --db DIR (or a server with --server URL)", file=sys.stderr)
        return 2
    if not args.db.exists():
        print(f"no index at {args.db}; build one with `napari-med3dvlm index DIR --db {args.db}`", file=sys.stderr)
        return 2
    volume = None
    if args.volume:  # read (and refuse) the query volume before any model is loaded
        from napari_med3dvlm.io import VolumeReadError, read_volume
        from napari_med3dvlm.io.preprocess import thin_volume_message

        volume = read_volume(args.volume)
        if min(volume.shape) < 2:
            name = args.volume.name if args.volume.is_file() else "the folder"
            raise VolumeReadError(thin_volume_message(volume.shape, name))
    index = VolumeIndex(args.db)
    embedder = _embedder(args)
    if volume is not None:
        hits = search_volume(index, embedder, volume, k=args.k)
    else:
        text = args.report.read_text(encoding="utf-8") if args.report else args.text
        hits = search_text(index, embedder, text, k=args.k)
    _print_hits(
        [{"score": h.score, "path": str(h.path), "description": h.description, "modality": h.modality,
          "shape": list(h.shape)} for h in hits],
        args.json,
    )
    return 0


def _search_server(args, url: str) -> int:
    """Text or report search over the index on a backend server (it holds the volumes' paths)."""
    from napari_med3dvlm.backend_client import ServerClient
    from napari_med3dvlm.errors import ServerError
    from napari_med3dvlm.settings import SERVER_TOKEN, load_secret

    if args.volume:
        print("error: search by --volume is not offered through a server; search by text or --report",
              file=sys.stderr)
        return 2
    text = args.report.read_text(encoding="utf-8") if args.report else args.text
    token = args.token or os.environ.get(TOKEN_ENV) or load_secret(SERVER_TOKEN)
    from .remote import search_server

    try:
        hits = search_server(ServerClient(url, token), text, k=args.k)
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print_hits([{"score": h.score, "path": str(h.path), "description": h.description, "modality": h.modality,
                  "shape": list(h.shape)} for h in hits], args.json)
    return 0


def _print_hits(hits: list[dict], as_json: bool) -> None:
    for rank, hit in enumerate(hits, start=1):
        if as_json:
            print(json.dumps({"rank": rank, **hit, "score": round(float(hit["score"]), 4)}))
        else:
            print(f"{rank:>3}  {hit['score']:+.3f}  {hit['path']}  {hit['description']}")
