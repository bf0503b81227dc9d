"""The ``vydra-nb`` command (also ``python -m vydra_nb``): ``demo`` (the README's main job), ``sandbox``
and ``--version``.

The example notebooks ship inside the package (``vydra_nb.examples``; in a checkout that package is
the ``notebooks/`` folder), so the demo runs from any folder after a plain ``pip install``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

QUICKSTART = "01_quickstart.ipynb"


def _notebooks_dir() -> Path:
    """The example notebooks: the ``vydra_nb.examples`` package data (``notebooks/`` in a checkout)."""
    from importlib import resources

    try:
        folder = Path(str(resources.files("vydra_nb.examples").joinpath(QUICKSTART))).parent
    except (ModuleNotFoundError, TypeError):
        folder = Path(__file__).resolve().parent.parent / "notebooks"
    if not (folder / QUICKSTART).is_file():
        raise SystemExit("vydra-nb demo: the example notebooks are missing from this installation "
                         f"(looked in {folder}); reinstall vydra-nb.")
    return folder


def _find_notebook(name: str) -> Path | None:
    """The example notebook called ``name`` (with or without ``.ipynb``), or None when there is none."""
    folder = _notebooks_dir()
    name = name.strip()
    if not name or Path(name).name != name:  # a bare name only: no folders, no ``..``
        return None
    filename = name if name.endswith(".ipynb") else name + ".ipynb"
    path = folder / filename
    return path if path.is_file() else None


def _available_notebooks() -> list[str]:
    return sorted(path.stem for path in _notebooks_dir().glob("*.ipynb"))


# What a demo run leaves in ``<output>/media``: downloads are named ``safe_filename(job id, extension)``
# (``jobs.py``), and the sandbox's job ids are ``job_...``. Only such files are ever removed, plus the
# files the previous run listed in its manifest (a real service's job ids need not start with ``job_``).
_MEDIA_FILE = re.compile(
    r"job_[A-Za-z0-9_-]{1,80}\.(mp4|webm|mov|m4v|mkv|png|jpg|jpeg|webp|gif|wav|mp3|ogg|m4a|flac|aac|txt|srt|vtt|json|bin)"
)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}\.[a-z0-9]{1,5}")
MANIFEST = ".vydra-nb-demo-media.json"


def _remove_stale_media(media: Path) -> list[Path]:
    """Delete the media files earlier demo runs wrote in ``media`` (and nothing else); return them."""
    if not media.is_dir():
        return []
    listed: set[str] = set()
    manifest = media / MANIFEST
    try:
        names = json.loads(manifest.read_text(encoding="utf-8"))
        if isinstance(names, list):
            listed = {n for n in names if isinstance(n, str) and _SAFE_NAME.fullmatch(n)}
    except (OSError, ValueError):
        pass
    removed = []
    for path in sorted(media.iterdir()):
        if not (_MEDIA_FILE.fullmatch(path.name) or path.name in listed):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    try:
        manifest.unlink(missing_ok=True)
    except OSError:
        pass
    return removed


def _write_manifest(media: Path, files: list[Path]) -> None:
    if files:
        (media / MANIFEST).write_text(json.dumps([p.name for p in files]), encoding="utf-8")


def _strip_widget_state(nb: Any) -> None:
    """Drop saved widget state: a committed notebook's state points at a sandbox that no longer runs."""
    nb.metadata.pop("widgets", None)


def _for_html(nb: Any) -> Any:
    """A copy of ``nb`` for the static page: a live widget (no saved state) gets a text stand-in."""
    import copy

    from vydra_nb.views.display import WIDGET_MIME

    page = copy.deepcopy(nb)
    for cell in page.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data and WIDGET_MIME in data and len(data) == 1:
                data["text/plain"] = "[an interactive widget: open the executed notebook in Jupyter to use it]"
    return page


def _progress(message: str) -> None:
    print(f"[vydra-nb demo] {message}", flush=True)


def demo(argv: list[str]) -> int:
    """Execute the quickstart headlessly; write the executed notebook and an HTML page that plays the video."""
    parser = argparse.ArgumentParser(prog="vydra-nb demo", description=demo.__doc__)
    parser.add_argument("--out", "--output", "-o", dest="output", default="demo-output",
                        help="folder for the results, made if needed (default: ./demo-output)")
    parser.add_argument("--real", action="store_true", help="use the real service (needs VYDRA_API_KEY; costs credits)")
    parser.add_argument("--notebook", default=QUICKSTART,
                        help="which example notebook to run, with or without .ipynb (default: 01_quickstart)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may take")
    args = parser.parse_args(argv)

    source = _find_notebook(args.notebook)
    if source is None:
        print(f"vydra-nb demo: no example notebook named {args.notebook!r}; "
              f"available: {', '.join(_available_notebooks())}", file=sys.stderr)
        return 2
    if args.real and not os.environ.get("VYDRA_API_KEY"):
        print("vydra-nb demo --real needs VYDRA_API_KEY; without --real the demo uses the free local sandbox.",
              file=sys.stderr)
        return 2

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import (
        CellExecutionError,
        CellTimeoutError,
        DeadKernelError,
    )
    from nbconvert import HTMLExporter

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    media_dir = out / "media"
    removed = _remove_stale_media(media_dir)
    if removed:
        _progress(f"removed {len(removed)} media file(s) of an earlier run from {media_dir}")
    before = set(media_dir.iterdir()) if media_dir.is_dir() else set()
    env_backup = dict(os.environ)
    if args.real:
        _progress("using the real Vydra service: this spends credits")
    else:
        os.environ.pop("VYDRA_API_KEY", None)
        _progress("using the local sandbox: no key, no cost")
    os.environ["VYDRA_NB_DOWNLOADS"] = str(media_dir)
    os.environ.setdefault("VYDRA_NB_HOME", str(out / ".vydra-nb"))

    nb = nbformat.read(source, as_version=4)
    _strip_widget_state(nb)
    client = NotebookClient(
        nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(out)}},
        # The kernel's own log (e.g. "Kernel is running over TCP without encryption", a warning about a
        # kernel on localhost that nobody else reaches) is noise on a first run; errors still show.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    started = time.monotonic()
    failed: str | None = None
    _progress(f"executing {source.name} ({len(nb.cells)} cells)")
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                _progress(f"cell {index + 1}/{len(nb.cells)}: {first[:70]}")
                client.execute_cell(cell, index)
    except CellExecutionError as exc:
        failed = f"a cell failed:\n{str(exc)[-2000:]}"
    except CellTimeoutError as exc:
        failed = f"a cell took longer than --timeout {args.timeout} s: {str(exc)[-500:]}"
    except DeadKernelError as exc:
        failed = f"the notebook's kernel died: {exc}"
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    _strip_widget_state(nb)
    executed = out / source.name
    nbformat.write(nb, executed)
    html, _ = HTMLExporter().from_notebook_node(_for_html(nb))
    page = out / (source.stem + ".html")
    page.write_text(html, encoding="utf-8")
    _progress(f"done in {time.monotonic() - started:.1f} s")
    print(f"executed notebook: {executed}")
    print(f"HTML page:         {page}")
    # This run's downloads: files that were not in the folder before it (never anything the user put there).
    media = sorted(p for p in media_dir.iterdir() if p not in before and p.is_file() and p.name != MANIFEST
                   and not p.name.startswith(".")) if media_dir.is_dir() else []
    _write_manifest(media_dir, media)
    for path in media:
        print(f"media:             {path}")
    if failed is not None:
        print(f"vydra-nb demo: {failed}", file=sys.stderr)
        return 1
    if source.name == QUICKSTART and "<video" not in html:
        print("vydra-nb demo: the page has no <video> element; the quickstart did not produce a video.", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vydra-nb {demo,sandbox} [options] | vydra-nb --version\n\n"
              "  demo     run the quickstart (or --notebook NAME) headlessly (sandbox unless --real) and write an HTML page\n"
              "  sandbox  run a local Vydra-compatible server with fake credits (prints export lines)")
        return 0
    if argv[0] in ("-V", "--version", "version"):
        from vydra_nb.api.settings import VERSION

        print(f"vydra-nb {VERSION}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return demo(rest)
    if command == "sandbox":
        from vydra_nb.sandbox.__main__ import main as sandbox_main

        return sandbox_main(rest)
    print(f"vydra-nb: unknown command {command!r}; try `vydra-nb --help`.", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
