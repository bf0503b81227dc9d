"""Issue 10: the API key never leaks, through any surface a user or a saved notebook can see.

Every test here runs the real stack (sandbox over HTTP, tests/rawserver.py for hostile servers,
real SQLite, a real IPython shell, a real kernel through nbclient) with a *canary* key: a random
key that exists nowhere else, so finding it, or its random part, anywhere is a leak. The surfaces
are the ones a key has leaked through in other clients: printed output and rich displays, widget
state, reprs, log records, exception messages and their chains, the history file, file names, and
the saved notebook. Plus the two wire rules: no key over plain http to a remote host, and no key
carried across a redirect.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import select
import shutil
import socket
import sqlite3
import traceback
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import vydra_nb
from vydra_nb import sandbox as sandbox_mod
from vydra_nb.session import current as current_session

from .rawserver import Reply, Seen, raw_server

ROOT = Path(__file__).resolve().parent.parent


# -- the canary ----------------------------------------------------------------------------------
class Canary:
    """A fresh key and the ways a leak of it could look (whole, its random part, a long slice)."""

    def __init__(self) -> None:
        self.secret = uuid.uuid4().hex
        # The live service's shape (``vydra_live_...``), so mask_key's "keep the prefix" branch runs.
        self.key = f"vydra_live_canary{self.secret}"
        self.needles = (self.key, self.secret, self.secret[:16], self.secret[-16:])

    def leaks_in(self, text: str | bytes) -> str | None:
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        for needle in self.needles:
            if needle.encode() in data:
                return needle
        return None

    def assert_absent(self, text: str | bytes, where: str) -> None:
        hit = self.leaks_in(text)
        assert hit is None, f"the API key ({hit!r}) leaked in {where}"


def exception_texts(exc: BaseException) -> Iterator[str]:
    """Everything an exception shows or carries as text: message, repr, args, body, whole chain."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield str(cur)
        yield repr(cur)
        yield repr(cur.args)
        for attr in ("body", "message", "code", "idempotency_key", "suggestions"):
            if hasattr(cur, attr):
                yield repr(getattr(cur, attr))
        yield "".join(traceback.format_exception(type(cur), cur, cur.__traceback__))
        stack.extend([cur.__cause__, cur.__context__])


@pytest.fixture
def canary() -> Canary:
    return Canary()


@pytest.fixture
def box(canary: Canary) -> Iterator[sandbox_mod.Sandbox]:
    """A sandbox that accepts only the canary key."""
    with sandbox_mod.start(credits=10_000, speed=100, seed=5, api_key=canary.key) as sb:
        assert sb.api_key == canary.key
        yield sb


@pytest.fixture
def cclient(box: sandbox_mod.Sandbox) -> Iterator[vydra_nb.Client]:
    c = vydra_nb.Client(api_key=box.api_key, base_url=box.url, time_scale=1 / box.speed)
    yield c
    c.close()


@pytest.fixture
def ip(box: sandbox_mod.Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A real shell whose session client takes the canary key from the environment, as a user's would."""
    monkeypatch.setenv("VYDRA_API_KEY", box.api_key)
    monkeypatch.setenv("VYDRA_BASE_URL", box.url)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "vydra_nb")
    shell.run_line_magic("config", "VydraMagics.resume_on_load = False")
    session = current_session()
    session.reset()
    client = vydra_nb.Client(time_scale=1 / box.speed)
    session.use_client(client)
    yield shell
    client.close()
    session.reset()


def run_cells(shell: InteractiveShell, cells: Iterable[str]) -> tuple[list[str], list[BaseException]]:
    """Run cells as a user would; return every text they produced (stdout, stderr, displays) and errors."""
    texts: list[str] = []
    errors: list[BaseException] = []
    for source in cells:
        with capture_output(display=True) as cap:
            result = shell.run_cell(source, store_history=True)
        texts += [cap.stdout, cap.stderr]
        texts += [json.dumps(o.data, default=repr) + json.dumps(o.metadata, default=repr) for o in cap.outputs]
        for exc in (result.error_in_exec, result.error_before_exec):
            if exc is not None:
                errors.append(exc)
        if result.result is not None:
            texts.append(repr(result.result))
    return texts, errors


def widget_states() -> str:
    """The synced state of every live widget: what a front end receives and a notebook saves."""
    from ipywidgets.widgets.widget import _instances

    states = []
    for widget in list(_instances.values()):
        state = widget.get_state()
        states.append(json.dumps(state, default=repr))
    return "\n".join(states)


# -- magics ----------------------------------------------------------------------------------------
def test_every_magic_command_keeps_the_key_out(
    ip: InteractiveShell, box: sandbox_mod.Sandbox, canary: Canary, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    job = vydra_nb.default_client().generate("elevenlabs-tts", text="to look up")
    cells = [
        "%vydra help",
        "%vydra help veo3",
        "%vydra models",
        "%vydra models --all --provider xai",
        "%vydra credits",
        "%%vydra veo3 --aspect-ratio 9:16 --dry-run\nA heron",
        "%%vydra nano-banana --wait -o img\nA lemon",
        "img",
        "print(repr(img), str(img), img.summary(), vars(img))",
        "%vydra generate kling-motion-control --image-url https://e.com/a.png --video-url https://e.com/b.mp4",
        "k = _; k",
        "get_ipython().run_line_magic('vydra', 'cancel ' + k.id)",
        f"%vydra job {job.id}",
        "%vydra jobs",
        "%vydra jobs --sync",
        "%vydra studio",
        "%vydra",
        # user mistakes: each must be one line that says what to do, without the key
        "%%vydra veo3 --colour red\nx",
        "%%vydra veo3 --aspect-ratio 4:3\nx",
        "%%vydra veo\nx",
        "%vydra modles",
        "%vydra job job_does_not_exist",
        "%vydra cancel job_does_not_exist",
        "%vydra models --bogus",
        "%%vydra veo3\n{undefined_name}",
        "%xmode Verbose",
        "vydra_nb.default_client().job('job_nope_verbose')",
        "vydra_nb.default_client()",
        "print(vydra_nb.default_client()._transport, vars(vydra_nb.default_client()))",
        "%xmode Context",
    ]
    ip.user_ns["vydra_nb"] = vydra_nb
    texts, errors = run_cells(ip, cells)
    # The commands really ran (a silent no-op would pass any leak check).
    joined = "\n".join(texts)
    assert "credits remaining" in joined and "Nothing was sent" in joined
    assert "Did you mean veo3" in joined and "no flag --colour" in joined
    assert ip.user_ns["img"].status == "completed" and ip.user_ns["img"].local_path is not None
    assert len(errors) >= 1  # the verbose traceback cell raised NotFoundError
    for i, text in enumerate(texts):
        canary.assert_absent(text, f"the output of a magic cell #{i // 3}")
    for exc in errors:
        for text in exception_texts(exc):
            canary.assert_absent(text, f"the exception {type(exc).__name__}")
    for name, value in list(ip.user_ns.items()):
        if name.startswith("_") and not name.startswith("_i"):
            canary.assert_absent(repr(value)[:100_000], f"user_ns[{name!r}]")
    for record in caplog.records:
        canary.assert_absent(record.getMessage(), f"log record {record.name}")
        canary.assert_absent(repr(record.args), f"log record args {record.name}")
        canary.assert_absent(record.exc_text or "", f"log record traceback {record.name}")
    assert any(r.name.startswith("urllib3") for r in caplog.records), "urllib3 debug logs were captured"
    canary.assert_absent(widget_states(), "widget state")


def test_402_and_auth_failures_are_clean(ip: InteractiveShell, canary: Canary) -> None:
    with sandbox_mod.start(credits=100, speed=100, api_key=canary.key) as poor:
        session = current_session()
        session.use_client(vydra_nb.Client(api_key=canary.key, base_url=poor.url, time_scale=0.01))
        texts, errors = run_cells(ip, ["%%vydra veo3 --yes\ntoo dear"])
        assert "needs 175 credits and 100 remain" in "".join(texts)
        # A server that rejects the key and echoes it back in every field it can.
        # (An echo in `code` or in nested values is test_echoed_key_in_error_code_and_details_is_scrubbed.)
        echo = {"error": f"Invalid API key {canary.key}", "code": "KEY_NOT_FOUND", "hint": f"Bearer {canary.key}"}
        with raw_server(lambda req: Reply(401, echo, headers={"WWW-Authenticate": canary.key})) as api:
            session.use_client(vydra_nb.Client(api_key=canary.key, base_url=api.url, time_scale=0.01))
            more, more_errors = run_cells(ip, ["%vydra credits", "%vydra models"])
            assert api.seen and api.seen[0].headers["Authorization"] == f"Bearer {canary.key}"
            with pytest.raises(vydra_nb.AuthenticationError) as info:
                session.client.organization()
    texts += more
    errors += [*more_errors, info.value]
    assert "Authentication failed" in "".join(more)
    for text in texts:
        canary.assert_absent(text, "the 402/401 output")
    for exc in errors:
        for text in exception_texts(exc):
            canary.assert_absent(text, f"{type(exc).__name__}")


def test_login_keeps_the_key_in_a_secret(
    box: sandbox_mod.Sandbox, canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``%vydra login`` holds the typed key only inside a Secret, and prints nothing of it."""
    monkeypatch.setenv("VYDRA_BASE_URL", box.url)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "vydra_nb")
    magics = shell.magics_manager.registry["VydraMagics"]
    current_session().reset()
    monkeypatch.setattr("getpass.getpass", lambda prompt="": canary.key)
    try:
        texts, errors = run_cells(shell, ["%vydra login", "%vydra credits", "%vydra logout"])
        assert not errors and "Logged in" in "".join(texts)
        for text in texts:
            canary.assert_absent(text, "login output")
        canary.assert_absent(repr(vars(magics)), "the magics object's attributes")
        canary.assert_absent(repr(vars(magics.session)), "the session's attributes")
    finally:
        current_session().reset()


# -- widgets, helpers, reprs, logs, history, files ------------------------------------------------
def test_widgets_helpers_reprs_history_and_files(
    cclient: vydra_nb.Client, canary: Canary, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from vydra_nb.notebook.studio import Studio
    from vydra_nb.tracking.tracker import Tracker
    from vydra_nb.views.job_view import JobView

    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    current_session().use_client(cclient)
    try:
        tracker = Tracker()
        video = cclient.generate("veo3", prompt="a fox <b>in</b> snow")
        failed = cclient.generate("veo3", prompt="doomed [fail]")
        view = JobView(video, tracker=tracker)
        fail_view = JobView(failed, tracker=tracker)
        tracker.track(video)
        tracker.track(failed)
        st = Studio(cclient, tracker=tracker)
        st.model_picker.value = "nano-banana"
        st.fields["prompt"].value = "a pear"
        submitted = st.submit_form()
        assert submitted is not None
        assert tracker.join_idle(30)
        assert video.status == "completed" and failed.status == "failed"
        path = video.download(tmp_path / "dl")
        default_path = submitted.wait(timeout=30).download()
        view._render()
        fail_view._render()
        st.update_state()
        states = widget_states()
        assert video.id in states and "SANDBOX" in states
        canary.assert_absent(states, "widget state (JobView, Studio)")

        frames = [vydra_nb.models_df(client=cclient), vydra_nb.jobs_df(), vydra_nb.spend_summary(by="model")]
        assert video.id in set(frames[1]["id"])
        for df in frames:
            for text in (df.to_csv(), df.to_json(default_handler=str, date_format="iso"), repr(df), df._repr_html_() or ""):
                canary.assert_absent(text, "a pandas helper's frame")
        canary.assert_absent(vydra_nb.styled(frames[1]).to_html(), "styled(jobs_df())")

        from vydra_nb.views import display as D

        texts = [
            repr(cclient), str(cclient), repr(vars(cclient)), repr(cclient._transport),
            str(cclient._transport), repr(vars(cclient._transport)), repr(cclient._transport._key),
            f"{cclient._transport._key}", repr(video), str(video), repr(vars(video)), video.summary(),
            D.job_html(video), D.job_text(video), json.dumps(D.job_bundle(failed)), repr(st.cards),
            repr(current_session().history()), repr(st), repr(view), repr(tracker), repr(cclient.organization()),
            repr(cclient.models()), str(cclient.cancel(failed.id)),
        ]
        for i, text in enumerate(texts):
            canary.assert_absent(text, f"repr/str #{i}")
        with pytest.raises(TypeError):
            pickle.dumps(cclient._transport._key)

        # The history database, byte for byte (WAL and shared-memory files included).
        history = current_session().history()
        assert history.get(video.id) is not None
        history.close()
        db = history.path
        files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
        assert files
        for f in files:
            canary.assert_absent(f.read_bytes(), f"the history file {f.name}")
        with sqlite3.connect(db) as conn:
            for row in conn.execute("SELECT * FROM jobs"):
                canary.assert_absent(repr(tuple(row)), "a history row")

        # Downloaded files: names, and everything under the data folder and the download folder.
        assert path.parent == tmp_path / "dl" and default_path.exists()
        data_home = vydra_nb.api.settings.data_home()
        for root in (tmp_path, data_home):
            for p in root.rglob("*"):
                canary.assert_absent(str(p), "a file name")
                if p.is_file() and not p.name.startswith("history.sqlite3"):
                    canary.assert_absent(p.read_bytes(), f"the file {p}")

        for record in caplog.records:
            canary.assert_absent(record.getMessage(), f"log record {record.name}")
            canary.assert_absent(repr(record.args), f"log record args {record.name}")
        assert any(r.name.startswith("urllib3") for r in caplog.records)
    finally:
        current_session().use_client(None)


def test_exceptions_and_their_chains_never_carry_the_key(cclient: vydra_nb.Client, canary: Canary) -> None:
    raised: list[BaseException] = []
    for call in (
        lambda: cclient.job("job_missing"),
        lambda: cclient.cancel("job_missing"),
        lambda: cclient.generate("veo3", prompt="x", aspect_ratio="4:3"),
        lambda: cclient.generate("veo3", validate=False, aspect_ratio="9:16"),
        lambda: cclient.model("veo"),
        lambda: cclient.generate("veo3", prompt="[fail]").wait(timeout=30),
    ):
        with pytest.raises(vydra_nb.VydraError) as info:
            call()
        raised.append(info.value)
    # Connection failures: refused (nothing listens) and dropped mid-request.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    offline = vydra_nb.Client(api_key=canary.key, base_url=f"http://127.0.0.1:{port}/api/v1", max_retries=0)
    with pytest.raises(vydra_nb.APIConnectionError) as info:
        offline.organization()
    raised.append(info.value)
    with raw_server(lambda req: Reply(drop=True)) as api:
        dropping = vydra_nb.Client(api_key=canary.key, base_url=api.url, max_retries=0, time_scale=0.01)
        for call in (dropping.organization, lambda: dropping.generate("veo3", validate=False, prompt="x")):
            with pytest.raises(vydra_nb.APIConnectionError) as info:
                call()
            raised.append(info.value)
    for exc in raised:
        for text in exception_texts(exc):
            canary.assert_absent(text, f"{type(exc).__name__}: {exc}")


def test_traceback_locals_never_show_the_key(canary: Canary) -> None:
    with raw_server(lambda req: Reply(404, {"error": "Job not found"})) as api:
        c = vydra_nb.Client(api_key=canary.key, base_url=api.url, max_retries=0)
        with pytest.raises(vydra_nb.NotFoundError) as info:
            c.job("job_x")
    exc = info.value
    # The library's frames only: this test's own frame holds the key and the raw server's log.
    library_tb = exc.__traceback__.tb_next
    assert library_tb is not None
    text = "".join(traceback.TracebackException(type(exc), exc, library_tb, capture_locals=True).format())
    assert "transport.py" in text  # the frame that sends the request, where the header is built
    canary.assert_absent(text, "a traceback with locals")


def test_echoed_key_in_error_code_and_details_is_scrubbed(canary: Canary) -> None:
    echo = {"error": "Invalid API key", "code": canary.key, "details": {"received": canary.key}}
    with raw_server(lambda req: Reply(401, echo)) as api:
        c = vydra_nb.Client(api_key=canary.key, base_url=api.url, max_retries=0)
        with pytest.raises(vydra_nb.AuthenticationError) as info:
            c.organization()
    for text in exception_texts(info.value):
        canary.assert_absent(text, "an error's code/details")


# -- the notebook, saved -------------------------------------------------------------------------
def test_executed_and_saved_notebook_has_no_key(
    box: sandbox_mod.Sandbox, canary: Canary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run the quickstart on a real kernel with the key in the environment, save it, grep the bytes.

    The quickstart's first cell uses the real service whenever VYDRA_API_KEY is set, so
    VYDRA_BASE_URL points that "real service" at the loopback sandbox holding the canary key.
    Extra cells show the session client, a failing call under ``%xmode Verbose`` and the job,
    which are where a key would most likely end up in a notebook file.
    """
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("VYDRA_API_KEY", canary.key)
    monkeypatch.setenv("VYDRA_BASE_URL", box.url)
    monkeypatch.setenv("VYDRA_NB_HOME", str(tmp_path / "home"))
    work = tmp_path / "nb"
    work.mkdir()
    src = work / "01_quickstart.ipynb"
    shutil.copy(ROOT / "notebooks" / "01_quickstart.ipynb", src)
    nb = nbformat.read(src, as_version=4)
    extra = [
        "import vydra_nb\nc = vydra_nb.default_client()\nprint(c, c.backend)\nc",
        "clip",
        "%vydra jobs",
        "%xmode Verbose",
        "c.job('job_missing')",
        "c._transport",
        "import logging\nlogging.basicConfig(level=logging.DEBUG, force=True)\nc.organization()",
    ]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in extra]
    NotebookClient(
        nb, timeout=60, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(work)}}
    ).execute()
    out = work / "saved.ipynb"
    nbformat.write(nb, out)
    data = out.read_bytes()
    # It ran against the sandbox, for real: the video was made and saved.
    assert b"completed" in data and b"Cannot find" not in data
    assert b"Using the real Vydra service" in data
    assert b"NotFoundError" in data, "the failing cell ran (under verbose tracebacks)"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert [e.ename for e in errors] == ["NotFoundError"], errors
    canary.assert_absent(data, "the saved notebook")
    for p in tmp_path.rglob("*"):
        canary.assert_absent(str(p), "a file name")
        if p.is_file() and p.suffix in (".ipynb", ".json", ".txt"):
            canary.assert_absent(p.read_bytes(), f"the file {p}")


# -- the wire ---------------------------------------------------------------------------------------
def _non_loopback_ip() -> str | None:
    """An address of this machine that is not loopback (no packet is sent to find it)."""
    candidates = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            candidates.append(s.getsockname()[0])
    except OSError:
        pass
    try:
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    return next((a for a in candidates if not a.startswith("127.") and a != "0.0.0.0"), None)


@pytest.mark.parametrize(
    "host",
    ["{ip}", "0.0.0.0", "localhost.evil.example", "127.0.0.1.nip.io", "127.0.0.1@evil.example", "2130706433"],
)
def test_key_is_refused_over_plain_http_to_a_non_loopback_host(host: str, canary: Canary) -> None:
    """A listener on every interface, reached by a non-loopback name: the client never connects."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        if host == "{ip}":
            ip = _non_loopback_ip()
            if ip is None:
                pytest.skip("this machine has no non-loopback address")
            host = ip
        url = f"http://{host}:{port}/api/v1"
        with pytest.raises(vydra_nb.ConfigurationError) as info:
            vydra_nb.Client(api_key=canary.key, base_url=url)
        message = str(info.value)
        assert "Refusing to send the API key over plain http" in message and "https" in message
        for text in exception_texts(info.value):
            canary.assert_absent(text, "the refusal")
        # The environment route (VYDRA_BASE_URL) and a key given later are refused the same way.
        os.environ["VYDRA_BASE_URL"] = url
        try:
            with pytest.raises(vydra_nb.ConfigurationError):
                vydra_nb.Client(api_key=canary.key)
        finally:
            del os.environ["VYDRA_BASE_URL"]
        ready, _, _ = select.select([listener], [], [], 0.2)
        assert not ready, "a connection was attempted to a plain-http remote host"
    finally:
        listener.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_host_never_carries_the_key(status: int, canary: Canary) -> None:
    """Every kind of API call meets the redirect: none is followed, so the other host sees nothing."""
    with raw_server(lambda req: Reply(200, {"data": [], "id": "job_1", "status": "pending"})) as other:
        def redirect(req: Seen) -> Reply:
            # The Location also tries to smuggle the key into the error message.
            return Reply(status, {}, headers={"Location": f"{other.url}{req.path}?k={canary.key}"})

        with raw_server(redirect) as api:
            c = vydra_nb.Client(api_key=canary.key, base_url=api.url, max_retries=0, time_scale=0.01)
            calls = {
                "models": c.models,
                "job": lambda: c.job("job_1"),
                "generate": lambda: c.generate("veo3", validate=False, prompt="x"),
                "cancel": lambda: c.cancel("job_1"),
                "organization": c.organization,
            }
            raised = []
            for action in calls.values():
                with pytest.raises(vydra_nb.ConfigurationError, match="redirect") as info:
                    action()
                raised.append(info.value)
            # One request per call; a generation first asks for the plan's limits (GET /account/rate-limits),
            # which meets the redirect too.
            assert len(api.seen) == len(calls) + 1
            assert sum(s.path.endswith("/account/rate-limits") for s in api.seen) == 1
            assert all(s.headers.get("Authorization") == f"Bearer {canary.key}" for s in api.seen)
        assert all("Authorization" not in s.headers for s in other.seen)
        assert all(canary.key not in json.dumps(s.headers) + s.path for s in other.seen)
        assert other.seen == [], "the redirect was not followed at all"
    for exc in raised:
        for text in exception_texts(exc):
            canary.assert_absent(text, "the redirect error")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_media_redirect_carries_no_key(status: int, canary: Canary, tmp_path: Path) -> None:
    """Media downloads may follow a CDN redirect: neither hop ever sees the key."""
    with raw_server(lambda req: Reply(200, raw=b"\x89PNG final", headers={"Content-Type": "image/png"})) as final:
        target = final.url.replace("/api/v1", "") + "/media/final.png"
        with raw_server(lambda req: Reply(status, {}, headers={"Location": target})) as cdn:
            media_url = cdn.url.replace("/api/v1", "") + "/media/x.png"
            view = {"id": "job_r", "status": "completed", "output": {"imageUrl": media_url}}
            with raw_server(lambda req: Reply(200, view)) as api:
                c = vydra_nb.Client(api_key=canary.key, base_url=api.url, max_retries=0)
                path = c.job("job_r").download(tmp_path)
    assert path.read_bytes() == b"\x89PNG final"
    for server in (cdn, final):
        assert server.seen
        for s in server.seen:
            assert "Authorization" not in s.headers
            canary.assert_absent(json.dumps(s.headers) + s.path, "a media request")
