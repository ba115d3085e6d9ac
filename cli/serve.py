"""``nmt serve``: a translation server (REST API, LibreTranslate routes, a web page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, handle_errors
from nmt.decode.loading import ENGINES
from nmt.serve.config import ServeConfig, read_api_keys
from nmt.serve.registry import load_models

D = ServeConfig  # the defaults


@handle_errors
def serve(
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            "-m",
            help="Model folder (served under its name), or ID=DIR; repeat for several models "
            "side by side.",
        ),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = D.host,
    port: Annotated[
        int,
        typer.Option(
            help="Port to listen on; 0 = a free port, which the 'listening on' line names."
        ),
    ] = D.port,
    engine: Annotated[
        str,
        typer.Option(
            help=f"{', '.join(ENGINES)}; auto = ctranslate2 for a folder written by nmt export."
        ),
    ] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_tokens: Annotated[
        int, typer.Option(help="Source tokens per dynamic batch at most.")
    ] = D.batch_tokens,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            help="How long a request waits for others to share its batch, in ms (never when "
            "it is alone)."
        ),
    ] = D.max_wait_ms,
    max_lines: Annotated[int, typer.Option(help="Lines per request at most.")] = D.max_lines,
    max_chars: Annotated[
        int, typer.Option(help="Characters per request at most (all lines).")
    ] = D.max_chars,
    timeout_s: Annotated[
        float, typer.Option(help="Seconds before a request is answered 504.")
    ] = D.timeout_s,
    workers: Annotated[
        int,
        typer.Option(
            help="Translation worker threads, as in nmt translate: 0 = one single-threaded "
            "worker per CPU thread, 1 = one batch at a time on all threads."
        ),
    ] = D.workers,
    max_queue: Annotated[
        int,
        typer.Option(
            help="Lines waiting for a batch at most, per model; more gets 503 with Retry-After."
        ),
    ] = D.max_queue,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File of API keys, one per line: the translation routes then need one "
            "(Authorization: Bearer KEY, X-API-Key, or LibreTranslate's api_key)."
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="A browser origin allowed to call the API (e.g. https://app.example.com, "
            "or * for any); repeat for several."
        ),
    ] = None,
    shortlist: Annotated[
        bool,
        typer.Option(
            "--shortlist",
            help="Search each batch over the target pieces its sources make likely, as nmt "
            "translate --shortlist (each folder's shortlist from nmt shortlist; CTranslate2: "
            "its vmap.txt); sampling requests are then refused.",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve models over HTTP: /v1/translate, LibreTranslate's /translate, a page at /."""
    from nmt.serve.app import run_server  # needs the serve extra (FastAPI, uvicorn)

    cfg = ServeConfig(
        host=host,
        port=port,
        batch_tokens=batch_tokens,
        max_wait_ms=max_wait_ms,
        max_lines=max_lines,
        max_chars=max_chars,
        timeout_s=timeout_s,
        workers=workers,
        max_queue=max_queue,
        api_keys=read_api_keys(api_key_file) if api_key_file is not None else frozenset(),
        cors_origins=tuple(cors_origin or ()),
    )
    models = load_models(model, engine, device, batch_tokens, workers, shortlist)
    for m in models.values():
        shortlisted = ", shortlist" if shortlist else ""
        err_console.print(
            f"serving {m.id}: {m.src_lang}->{m.tgt_lang} ({m.engine}{shortlisted}) from {m.folder}",
            highlight=False,
        )

    def listening(url: str) -> None:
        # One unwrapped line that scripts and the tests read for the port (--port 0).
        err_console.print(
            f"listening on {url} (page at /, API at /docs)", highlight=False, soft_wrap=True
        )

    run_server(models, cfg, log_level, on_listening=listening)
