"""``napari-med3dvlm serve``: run the backend server (see docs/server.md)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from pathlib import Path

from napari_med3dvlm.settings import TOKEN_ENV


def register(subparsers) -> None:
    from napari_med3dvlm.inference.cli import add_model_options

    serve = subparsers.add_parser(
        "serve",
        help="serve the model over HTTP for the docks and the CLI on other computers",
        description="Serve one model (report, chat, closed questions, search) over HTTP; "
        "clients use Settings > Backend or --server URL.",
    )
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this computer only; reach it through an "
                       "SSH tunnel, or bind another address together with --token)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", default=None,
                       help=f"bearer token clients must send (default: ${TOKEN_ENV}); required off loopback")
    serve.add_argument("--index", type=Path, metavar="DB", help="a retrieval index (napari-med3dvlm index) to search")
    serve.add_argument("--max-upload-mb", type=int, default=2048, help="largest accepted upload (default 2048)")
    serve.add_argument("--cache-mb", type=int, default=4096,
                       help="memory for uploaded volumes, least recently used dropped first (default 4096)")
    serve.add_argument("--upload-timeout", type=float, default=30.0,
                       help="seconds without data before an upload is dropped (default 30)")
    serve.add_argument("--max-new-tokens-limit", type=int, default=1024, help="most tokens one request may ask for")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_model_options(serve)
    serve.set_defaults(func=run_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _exit_normally(signum, frame):
    raise SystemExit(0)


def run_serve(args: argparse.Namespace) -> int:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    if not is_loopback(args.host) and not token:
        print(f"error: refusing to serve on {args.host} without a token: anyone who can reach that address "
              f"could use the model; pass --token (or set {TOKEN_ENV}), or keep the default 127.0.0.1 and "
              "use an SSH tunnel", file=sys.stderr)
        return 2
    if args.index is not None and not args.index.exists():
        print(f"error: no index at {args.index}; build one with `napari-med3dvlm index DIR --db {args.index}`",
              file=sys.stderr)
        return 2
    import uvicorn

    from napari_med3dvlm.inference.cli import engine_from_args

    from .app import Limits, create_app

    engine = engine_from_args(args, local=True)
    limits = Limits(max_upload_bytes=args.max_upload_mb << 20, max_new_tokens=args.max_new_tokens_limit,
                    upload_idle_s=args.upload_timeout)
    app = create_app(engine, token=token, limits=limits, index_db=args.index, cache_bytes=args.cache_mb << 20)
    print(f"serving {engine.model_id} on http://{args.host}:{args.port} "
          f"({'token required' if token else 'no token: this computer only'}); API docs at /docs", flush=True)
    engine.load()  # fail now, not on the first client's request
    if engine.settings.llm == "vllm" and not engine.settings.vllm_url:
        from napari_med3dvlm.inference.vllm_backend import VLLMError, start_vllm_for

        print("starting vLLM for the language model (loopback only; docs/vllm.md)", flush=True)
        try:
            process = start_vllm_for(engine)  # restarted by the next request if it stops
        except VLLMError as err:
            print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
            return 2
        print(f"vLLM ready (pid {process.pid}); it is stopped when the server stops", flush=True)
    print("model loaded; ready", flush=True)
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again for the handler that was
    # there before it: make that handler a normal exit, so that what this process started is stopped
    signal.signal(signal.SIGTERM, _exit_normally)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        if engine.settings.llm == "vllm":  # now, not at interpreter exit: a supervisor may not wait that long
            from napari_med3dvlm.inference.vllm_backend import stop_all

            stop_all()
    return 0
