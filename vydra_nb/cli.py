"""The ``vydra-nb`` command: ``demo`` (the README's main job) and ``sandbox``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

QUICKSTART = "01_quickstart.ipynb"


def _notebooks_dir() -> Path:
    """The example notebooks: in a source checkout, beside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "notebooks", here / "notebooks"):
        if (candidate / QUICKSTART).exists():
            return candidate
    raise SystemExit("vydra-nb demo: the example notebooks were not found (run it from a source checkout).")


def _progress(message: str) -> None:
    print(f"[vydra-nb demo] {message}", flush=True)


def demo(argv: list[str]) -> int:
    """Execute the quickstart headlessly; write the executed notebook and an HTML page that plays the video."""
    parser = argparse.ArgumentParser(prog="vydra-nb demo", description=demo.__doc__)
    parser.add_argument("--output", "-o", default="demo-output", help="folder for the results (default: demo-output)")
    parser.add_argument("--real", action="store_true", help="use the real service (needs VYDRA_API_KEY; costs credits)")
    parser.add_argument("--notebook", default=QUICKSTART, help="which example notebook to run")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may take")
    args = parser.parse_args(argv)

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = _notebooks_dir() / args.notebook
    env_backup = dict(os.environ)
    if args.real:
        if not os.environ.get("VYDRA_API_KEY"):
            print("vydra-nb demo --real needs VYDRA_API_KEY; without --real the demo uses the free local sandbox.",
                  file=sys.stderr)
            return 2
        _progress("using the real Vydra service: this spends credits")
    else:
        os.environ.pop("VYDRA_API_KEY", None)
        _progress("using the local sandbox: no key, no cost")
    os.environ["VYDRA_NB_DOWNLOADS"] = str(out / "media")
    os.environ.setdefault("VYDRA_NB_HOME", str(out / ".vydra-nb"))

    nb = nbformat.read(source, as_version=4)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(out)}})
    started = time.monotonic()
    failed = None
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
        failed = exc
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    executed = out / source.name
    nbformat.write(nb, executed)
    html, _ = HTMLExporter().from_notebook_node(nb)
    page = out / (source.stem + ".html")
    page.write_text(html, encoding="utf-8")
    _progress(f"done in {time.monotonic() - started:.1f} s")
    print(f"executed notebook: {executed}")
    print(f"HTML page:         {page}")
    media = sorted((out / "media").glob("*")) if (out / "media").exists() else []
    for path in media:
        print(f"media:             {path}")
    if failed is not None:
        print(f"vydra-nb demo: a cell failed:\n{str(failed)[-2000:]}", file=sys.stderr)
        return 1
    if "<video" not in html:
        print("vydra-nb demo: the page has no <video> element; the quickstart did not produce a video.", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vydra-nb {demo,sandbox} [options]\n\n"
              "  demo     run the quickstart notebook headlessly (sandbox unless --real) and write an HTML page\n"
              "  sandbox  run a local Vydra-compatible server with fake credits (prints export lines)")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return demo(rest)
    if command == "sandbox":
        from .sandbox.__main__ import main as sandbox_main

        return sandbox_main(rest)
    print(f"vydra-nb: unknown command {command!r}; try `vydra-nb --help`.", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
