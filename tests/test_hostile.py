"""Issue 10: a hostile (or broken) server cannot crash the client, write outside the download folder,
hang a download forever, or put anything executable into a notebook's HTML.

The API side uses tests/rawserver.py; media downloads use a small streaming server defined here,
since they need what rawserver cannot script: bodies that drip, stall, never end, or lie about
their size. Each case must end in a typed ``VydraError`` (with a message a user can act on) or be
handled safely; none may raise anything else.
"""

from __future__ import annotations

import gzip
import logging
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import vydra_nb
from vydra_nb.api.jobs import Job
from vydra_nb.api.media import Media
from vydra_nb.session import current as current_session
from vydra_nb.views import display as D

from .rawserver import Reply, Seen, raw_server

KEY = "vydra_live_hostile_tests_key"


def client_for(url: str, **kwargs: Any) -> vydra_nb.Client:
    """A client with tiny backoffs, so retried 5xx cost milliseconds, and no 429 patience."""
    c = vydra_nb.Client(api_key=KEY, base_url=url, time_scale=0.001, **kwargs)
    c._transport.max_rate_wait = 0.0
    return c


def job_view(**fields: Any) -> dict[str, Any]:
    return {"id": "job_h", "status": "running", **fields}


class _Switchable:
    """One rawserver for the whole module whose script each test swaps in.

    Starting and stopping a server costs about half a second (its shutdown poll), and this module
    needs a hundred of them; one shared server keeps the file well inside its time budget.
    """

    def __init__(self) -> None:
        self.reply: Callable[[Seen], Reply] = lambda req: Reply(500, {"error": "no script"})
        self.server: Any = None


_SHARED = _Switchable()


@pytest.fixture(scope="module", autouse=True)
def _shared_server() -> Iterator[None]:
    with raw_server(lambda req: _SHARED.reply(req)) as server:
        _SHARED.server = server
        yield
    _SHARED.server = None


@contextmanager
def serve(reply: Callable[[Seen], Reply]) -> Iterator[Any]:
    """Make the shared server answer with ``reply`` (and forget earlier requests) for a block."""
    server = _SHARED.server
    server.seen.clear()
    _SHARED.reply = reply
    try:
        yield server
    finally:
        _SHARED.reply = lambda req: Reply(500, {"error": "no script"})


# -- HTML safety helpers -------------------------------------------------------------------------
URL_ATTRS = {"href", "src", "srcset", "action", "formaction", "poster", "data", "xlink:href", "background"}


class _Attrs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]


def assert_inert(html_text: str) -> None:
    """No script tags, no event handlers, and every URL attribute is plain http(s) (or our own data: image)."""
    parser = _Attrs()
    parser.feed(html_text)
    parser.close()
    assert not {"script", "iframe", "object", "embed", "form", "base", "meta", "link"} & set(parser.tags), parser.tags
    for name, value in parser.attrs:
        assert not name.startswith("on"), f"event handler attribute {name}={value!r}"
        if name in URL_ATTRS:
            scheme = value.split(":", 1)[0].strip().lower() if ":" in value else ""
            assert scheme in ("http", "https") or value.startswith(("data:image/", "data:video/", "data:audio/")), (
                f"unsafe {name}={value!r}"
            )
            assert "javascript" not in value.lower().replace("\\", "")
        if name == "style":
            assert "url(" not in value.lower() and "expression" not in value.lower()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# -- malformed answers ---------------------------------------------------------------------------
CALLS: dict[str, Callable[[vydra_nb.Client], Any]] = {
    "models": lambda c: c.models(),
    "organization": lambda c: c.organization(),
    "job": lambda c: c.job("job_h"),
    "cancel": lambda c: c.cancel("job_h"),
    "generate": lambda c: c.generate("veo3", validate=False, prompt="x"),
    "list_jobs": lambda c: c.list_jobs(),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"null", b"[1, 2", b"\xff\xfe\x00garbage", b'{"a": NaN, "b": [}', b"<html><body>OK</body></html>"],
    ids=["broken", "empty", "null", "truncated", "binary", "bad-tokens", "html-200"],
)
def test_malformed_json_is_a_typed_error(call: str, raw: bytes) -> None:
    with serve(lambda req: Reply(200, raw=raw, headers={"Content-Type": "application/json"})) as api:
        c = client_for(api.url)
        try:
            CALLS[call](c)
        except vydra_nb.VydraError as exc:
            assert isinstance(exc, (vydra_nb.ResponseError, vydra_nb.ServerError)), repr(exc)
            assert "<html" not in str(exc) and "\n" not in str(exc)
        # An empty or null body may be tolerated where nothing was expected back (cancel): no crash.


HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title><script>alert(document.cookie)</script>"
    "</head><body><h1>Bad Gateway</h1>" + "padding " * 2000 + "</body></html>"
).encode()


@pytest.mark.parametrize(
    ("status", "call", "expected"),
    [
        (500, "models", vydra_nb.ServerError),
        (502, "job", vydra_nb.ServerError),
        (503, "organization", vydra_nb.ServerError),
        (502, "generate", vydra_nb.OutcomeUnknownError),
        (404, "job", vydra_nb.NotFoundError),
        (401, "models", vydra_nb.AuthenticationError),
        (403, "organization", vydra_nb.AuthenticationError),
        (400, "generate", vydra_nb.ValidationError),
        (402, "generate", vydra_nb.InsufficientCreditsError),
        (429, "models", vydra_nb.RateLimitError),
        (418, "models", vydra_nb.VydraError),
    ],
)
def test_html_error_pages_are_typed_and_short(status: int, call: str, expected: type[Exception]) -> None:
    with serve(lambda req: Reply(status, raw=HTML_PAGE, headers={"Content-Type": "text/html"})) as api:
        c = client_for(api.url)
        with pytest.raises(expected) as info:
            CALLS[call](c)
    message = str(info.value)
    assert "<script" not in message and "<html" not in message.lower() and len(message) < 600


def test_error_bodies_of_the_wrong_shape() -> None:
    bodies = [
        {"error": ["a", "list"]},
        {"error": None, "code": 42},
        {"error": {"message": {"nested": "object"}, "code": ["x"]}},
        {"error": "x" * 100_000},
        ["not", "an", "object"],
        {"error": "Insufficient credits", "creditsRequired": "lots", "creditsRemaining": 1e300},
    ]
    for body in bodies:
        for status in (400, 402, 404):
            with serve(lambda req, status=status, body=body: Reply(status, body)) as api:
                c = client_for(api.url)
                with pytest.raises(vydra_nb.VydraError) as info:
                    c.generate("veo3", validate=False, prompt="x")
            assert len(str(info.value)) < 1000, "a huge server message is cut to one short line"
            assert "\n" not in str(info.value)


# -- mistyped and missing fields -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "check"),
    [
        ({"progress": "45"}, lambda j: j.progress == 45),
        ({"progress": "lots"}, lambda j: j.progress is None),
        ({"progress": -20}, lambda j: j.progress == 0),
        ({"progress": 1e300}, lambda j: j.progress in (None, 100)),
        ({"progress": True}, lambda j: j.progress is None),
        ({"progress": [50]}, lambda j: j.progress is None),
        ({"status": None}, lambda j: not j.done),
        ({"status": 42}, lambda j: not j.done),
        ({"status": ["completed"]}, lambda j: not j.done),
        ({"status": {"state": "completed"}}, lambda j: not j.done),
        ({"status": "exploded"}, lambda j: j.status == "exploded" and not j.done),
        ({"status": "x" * 5000}, lambda j: len(j.status) <= 40 and not j.done),
        ({"status": "COMPLETED", "output": ["https://cdn.example/a.mp4"]}, lambda j: j.done and j.media == []),
        ({"status": "completed", "output": "https://cdn.example/a.mp4"}, lambda j: j.done and j.media == []),
        ({"status": "completed", "output": None}, lambda j: j.done and j.media == []),
        ({"status": "failed", "error": ["boom"]}, lambda j: j.status == "failed"),
        ({"status": "failed", "error": 42}, lambda j: j.status == "failed"),
        ({"status": "failed", "error": {"message": {"a": 1}, "code": None}}, lambda j: j.status == "failed"),
        ({"creditsCharged": "abc", "creditsRefunded": {}}, lambda j: j.credits_charged is None),
        ({"creditsCharged": -500}, lambda j: j.credits_charged == 0),
        ({"creditsCharged": 1e300}, lambda j: j.credits_charged is None or j.credits_charged < 2**63),
        ({"creditsCharged": "1e300"}, lambda j: j.credits_charged is None or j.credits_charged < 2**63),
        ({"createdAt": "yesterday", "completedAt": 1e300}, lambda j: j.created_at is None and j.completed_at is None),
        ({"createdAt": "9999-12-31T23:59:59Z"}, lambda j: j.created_at is not None),
        ({"createdAt": -1e18}, lambda j: j.created_at is None),
        ({"model": {"slug": "x"}, "workflow": ["y"]}, lambda j: isinstance(j.model, (str, type(None)))),
        ({"message": "m" * 100_000, "refundStatus": 7}, lambda j: len(j.message or "") <= 500),
    ],
)
def test_mistyped_job_fields_are_tolerated(fields: dict[str, Any], check: Callable[[Job], bool], tmp_path: Path) -> None:
    view = job_view(**fields)
    with serve(lambda req: Reply(200, view)) as api:
        c = client_for(api.url)
        job = c.job("job_h")
        assert check(job), vars(job)
        # Every other surface copes too: text, HTML, the history row, a table, a download attempt.
        assert_inert(D.job_html(job))
        D.job_text(job)

        row = current_session().history().get("job_h")
        assert row is not None, "the job was recorded in the history despite its odd fields"
        vydra_nb.jobs_df()
        if job.done:
            with pytest.raises(vydra_nb.VydraError):
                job.wait(timeout=1)  # failed, or a completed job with nothing to raise: never a crash
                job.download(tmp_path)
        else:
            with pytest.raises(vydra_nb.JobTimeoutError):
                job.wait(timeout=0.05)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "body",
    [
        [{"id": "job_h"}],
        "a string",
        None,
        42,
    ],
    ids=["list", "string", "null", "number"],
)
def test_list_where_object_expected(body: Any) -> None:
    with serve(lambda req: Reply(200, body)) as api:
        c = client_for(api.url)
        for call in ("job", "organization"):
            with pytest.raises(vydra_nb.ResponseError):
                CALLS[call](c)
        if isinstance(body, list):
            assert c.models() == [], "a bare list is a model list; rows without a slug are skipped"
        else:
            with pytest.raises(vydra_nb.ResponseError):
                c.models()
        with pytest.raises(vydra_nb.ResponseError):
            CALLS["generate"](c)


def test_generate_answers_of_the_wrong_shape() -> None:
    cases: list[tuple[Any, Callable[[Any], bool]]] = [
        ({"jobId": 123, "status": "pending"}, lambda j: j.id == "123"),
        ({"jobId": None, "status": "pending"}, lambda j: False),
        ({"jobId": "j" * 10_000}, lambda j: len(j.id) <= 200),
        ({"jobId": "../../../etc/passwd", "status": ["x"]}, lambda j: not j.done),
        ({"jobId": "job_ok", "creditsCharged": 1e300}, lambda j: j.credits_charged is None or j.credits_charged < 2**63),
    ]
    for answer, check in cases:
        with serve(lambda req, answer=answer: Reply(202, answer)) as api:
            c = client_for(api.url)
            try:
                job = c.generate("veo3", validate=False, prompt="x")
            except vydra_nb.ResponseError as exc:
                assert "check `%vydra jobs --sync`" in str(exc)
                continue
            assert check(job), (answer, vars(job))

            assert current_session().history().get(job.id) is not None, f"a charged job must be recorded: {answer}"


def test_hostile_model_list() -> None:
    junk_models = {
        "data": [
            1, "veo3", None, [], {"slug": 5}, {"slug": ""}, {"name": "no slug"},
            {"slug": "odd", "inputSchema": ["not", "a", "schema"], "creditsPerUnit": "abc", "isActive": "yes"},
            {"slug": "odd2", "inputSchema": {"properties": ["x"], "required": {"a": 1}}, "creditsPerUnit": 1e300},
            {"slug": "odd3", "inputSchema": {"type": "object", "properties": {
                "prompt": {"type": "string"},
                "mode": {"enum": "not-a-list", "minimum": "zero", "x-vydra-credits": ["a"]},
                "n": {"type": ["integer", "null"], "minimum": 1, "maximum": "ten"},
                "<script>": {"type": "string", "description": "<img src=x onerror=alert(1)>"},
            }, "required": ["prompt", 7]}},
            {"slug": "../../admin", "name": "<script>alert(1)</script>", "description": "<img src=x onerror=alert(1)>"},
        ],
        "count": "many",
    }
    with serve(lambda req: Reply(200, junk_models)) as api:
        c = client_for(api.url)
        models = c.models()
        assert [m.slug for m in models] == ["odd", "odd2", "odd3", "../../admin"]
        for m in models:
            m.parameters, m.prompt_field, m.price(), m.price_variants(), m.required
            m.validate({"prompt": "x"}) if m.slug != "odd" else None
        with pytest.raises(vydra_nb.ValidationError):
            c.generate("../../admin", prompt="x")  # never POSTs to /models/../../admin
        assert api.count("POST") == 0
        df = vydra_nb.models_df(client=c)
        html_table = df._repr_html_() or ""
        assert "<script>" not in html_table and "<img src=x" not in html_table
    for body in ({"data": {}}, {"models": "x"}, {}):
        with serve(lambda req, body=body: Reply(200, body)) as api, pytest.raises(vydra_nb.ResponseError):
            client_for(api.url).models()


def test_styled_tables_escape_server_text() -> None:
    models = {"data": [{"slug": "m", "name": "<b>n</b>", "description": "<img src=x onerror=alert(1)>",
                        "creditsPerUnit": 1, "isActive": True}]}
    with serve(lambda req: Reply(200, models)) as api:
        df = vydra_nb.models_df(client=client_for(api.url))
    assert_inert(vydra_nb.styled(df).to_html())


# -- huge values ---------------------------------------------------------------------------------
def test_huge_credits_and_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    org = {"id": "org", "name": "<b>Org</b>", "creditsRemaining": 1e300, "plan": ["creator"], "updatedAt": 1e300}
    with serve(lambda req: Reply(200, org)) as api:
        c = client_for(api.url)
        got = c.organization()
        assert got.credits_remaining is None or got.credits_remaining > 10**12
        assert got.updated_at is None
    org_inf = b'{"creditsRemaining": Infinity, "plan": "free"}'
    with serve(lambda req: Reply(200, raw=org_inf)) as api:
        assert client_for(api.url).organization().credits_remaining is None
    org_nan = b'{"creditsRemaining": NaN, "plan": "free"}'
    with serve(lambda req: Reply(200, raw=org_nan)) as api:
        assert client_for(api.url).organization().credits_remaining is None
    big_int = b'{"creditsRemaining": ' + b"9" * 4000 + b', "plan": "free"}'
    with serve(lambda req: Reply(200, raw=big_int)) as api:
        try:
            client_for(api.url).organization()
        except vydra_nb.VydraError:
            pass  # Python refuses >4300-digit ints; a typed error is fine, a ValueError is not


@pytest.mark.parametrize("raw", [
    b'{"error": "Insufficient credits", "creditsRequired": 1e999, "creditsRemaining": 5}',
    b'{"error": "Insufficient credits", "creditsRequired": -1e999, "creditsRemaining": 1e999}',
    b'{"error": "Insufficient credits", "creditsRequired": NaN, "creditsRemaining": -Infinity}',
    b'{"error": "Insufficient credits", "creditsRequired": ' + b"9" * 400 + b', "creditsRemaining": "1e999"}',
], ids=["inf", "minus-inf", "nan", "400-digits"])
def test_a_402_whose_credit_counts_overflow_is_a_clean_error(raw: bytes) -> None:
    """JSON's 1e999 is a float infinity in Python: int() of it raised OverflowError, not the 402."""
    with serve(lambda req: Reply(402, raw=raw)) as api:
        with pytest.raises(vydra_nb.InsufficientCreditsError) as info:
            client_for(api.url).generate("veo3", validate=False, prompt="x")
        assert api.count("POST") == 1
    assert info.value.credits_required is None
    assert info.value.credits_remaining in (None, 5)
    assert str(info.value) == "Insufficient credits: Insufficient credits. Top up your plan or choose a cheaper model."


def test_ten_megabyte_answers_are_handled_quickly() -> None:
    big_description = "d" * (10 * 1024 * 1024)
    models = {"data": [{"slug": "big", "description": big_description, "creditsPerUnit": 1, "isActive": True,
                        "inputSchema": {"type": "object", "properties": {"prompt": {"type": "string"}}}}]}
    many = {"data": [{"slug": f"m{i}", "name": "x" * 100, "creditsPerUnit": i, "isActive": True} for i in range(60_000)]}
    view = job_view(status="completed", output={"videoUrl": "https://cdn.example/v.mp4", "junk": ["y" * 1000] * 10_000},
                    extra_blob="z" * (10 * 1024 * 1024))
    start = time.monotonic()
    with serve(lambda req: Reply(200, models)) as api:
        assert client_for(api.url).model("big").description == big_description
    with serve(lambda req: Reply(200, many)) as api:
        assert len(client_for(api.url).models()) == 60_000
    with serve(lambda req: Reply(200, view)) as api:
        job = client_for(api.url).job("job_h")
        assert job.media_url == "https://cdn.example/v.mp4"
        assert len(D.job_html(job)) < 10_000, "the display does not carry the server's junk"
        assert len(D.job_text(job)) < 10_000
    assert time.monotonic() - start < 20


def test_answers_over_the_size_cap_are_refused_unread() -> None:
    """A server could answer with gigabytes; past the cap the answer is neither read nor kept."""
    big = {"data": [{"slug": "m", "description": "d" * 3_000_000, "creditsPerUnit": 1, "isActive": True}]}
    with serve(lambda req: Reply(200, big)) as api:
        client = client_for(api.url)
        client._transport.max_response_bytes = 1_000_000
        with pytest.raises(vydra_nb.ResponseError, match="larger than 1,000,000 bytes"):
            client.models()
    accepted = {"jobId": "job_big", "status": "pending", "creditsCharged": 175, "pad": "p" * 3_000_000}
    with serve(lambda req: Reply(202, accepted)) as api:
        client = client_for(api.url)
        client._transport.max_response_bytes = 1_000_000
        with pytest.raises(vydra_nb.OutcomeUnknownError):  # a 202 means a job may exist, and be charged
            client._transport.send("POST", "/models/veo3", category="generate", json={"prompt": "p"},
                                   idempotency_key="vydra-nb-test")
        assert api.count("POST") == 1


def test_a_content_length_of_thousands_of_digits_is_too_large_not_a_crash() -> None:
    """Python refuses to parse an int of more than 4,300 digits: that must read "too large"."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conn.recv(65536)
        conn.sendall(head)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        client = client_for(f"http://127.0.0.1:{server.getsockname()[1]}/api/v1", max_retries=0)
        with pytest.raises(vydra_nb.ResponseError, match="larger than"):
            client.organization()
    finally:
        server.close()


def test_an_answer_cut_short_is_a_typed_error_and_a_generation_is_not_resent() -> None:
    """A body that ends before its Content-Length says is a broken connection, not a raw requests error."""
    cut = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"data\": ["
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    posts = []

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            request = conn.recv(65536)
            posts.append(request.startswith(b"POST"))
            conn.sendall(cut)
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        client = client_for(f"http://127.0.0.1:{server.getsockname()[1]}/api/v1", max_retries=2)
        with pytest.raises(vydra_nb.APIConnectionError) as info:
            client.organization()
        assert not isinstance(info.value, vydra_nb.OutcomeUnknownError) and "\n" not in str(info.value)
        posts.clear()
        with pytest.raises(vydra_nb.OutcomeUnknownError):
            client._transport.send("POST", "/models/veo3", category="generate", json={"prompt": "p"},
                                   idempotency_key="vydra-nb-test")
        assert posts == [True], "a generation whose answer was cut short must not be sent again"
    finally:
        server.close()


# -- output URLs ------------------------------------------------------------------------------
UNSAFE_URLS = [
    "javascript:alert(document.domain)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "javascript&colon;alert(1)",
    "vbscript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "data:image/svg+xml,<svg onload=alert(1)>",
    "file:///etc/passwd",
    "FILE:///etc/shadow",
    "/media/x.mp4",
    "media/x.mp4",
    "../../../etc/passwd",
    "//evil.example/x.mp4",
    "http://",
    "https:///x.mp4",
    "ftp://cdn.example/x.mp4",
    'https://cdn.example/x.mp4" onerror="alert(1)',
    "https://cdn.example/x.mp4'><script>alert(1)</script>",
    "https://cdn.example/x\x00.mp4",
    "https://cdn.example/" + "a" * 5000 + ".mp4",
    "https://[cdn.example/x.mp4",  # urlsplit raises "Invalid IPv6 URL"
    "http://[::1]:99999/x.mp4",  # a port out of range
]


@pytest.mark.parametrize("url", UNSAFE_URLS)
@pytest.mark.parametrize("key", ["videoUrl", "imageUrls", "resultUrl", "url"])
def test_unsafe_output_urls_are_never_shown_or_fetched(url: str, key: str, tmp_path: Path) -> None:
    value: Any = [url] if key.endswith("s") else url
    view = job_view(status="completed", output={key: value, "text": None},
                    model="<img src=x onerror=alert(1)>")
    with serve(lambda req: Reply(200, view)) as api:
        c = client_for(api.url)
        job = c.job("job_h")
        job.params = {"prompt": "<script>alert('prompt')</script> and javascript:alert(2)"}
        assert job.media == [] and job.media_url is None
        html_text = D.job_html(job)
        assert_inert(html_text)
        assert "&lt;script&gt;alert(&#x27;prompt&#x27;)&lt;/script&gt;" in html_text
        assert "<script>" not in html_text
        with pytest.raises(vydra_nb.DownloadError):
            job.download(tmp_path / "dl")
        with pytest.raises(vydra_nb.DownloadError, match="not an http"):
            c.download_media(Media(url, "video"), tmp_path / "dl", job.id)
        assert api.count("GET") == 1, "nothing but the job view was requested"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_safe_url_among_unsafe_ones_is_the_one_used() -> None:
    view = job_view(status="completed", output={"videoUrls": ["javascript:alert(1)", "file:///etc/passwd",
                                                              "https://cdn.example/ok.mp4"]})
    with serve(lambda req: Reply(200, view)) as api:
        job = client_for(api.url).job("job_h")
    assert [m.url for m in job.media] == ["https://cdn.example/ok.mp4"]
    html_text = D.job_html(job)
    assert_inert(html_text)
    assert 'src="https://cdn.example/ok.mp4"' in html_text


def test_unsafe_urls_are_reported_once_per_job_naming_only_their_scheme(caplog: pytest.LogCaptureFixture) -> None:
    """A front end links URL-looking text in any log line it shows: the warning names schemes, once."""
    urls = ["javascript:alert(document.domain)", " JAVASCRIPT:alert(2)", "https://[evil.example/x.mp4",
            "www.evil.example:80/x.mp4", "file:///etc/passwd", "https://cdn.example/ok.mp4"]
    view = job_view(status="completed", output={"videoUrls": urls})
    caplog.set_level(logging.DEBUG, logger="vydra_nb")
    with serve(lambda req: Reply(200, view)) as api:
        job = client_for(api.url).job("job_h")
        for _ in range(3):
            assert [m.url for m in job.media] == ["https://cdn.example/ok.mp4"]
            assert job.media_url == "https://cdn.example/ok.mp4"
        D.job_html(job)
        job.refresh()  # the same output again: still reported once
        assert len(job.media) == 1
    messages = [r.getMessage() for r in caplog.records]
    warnings = [m for m in messages if "not http(s)" in m]
    assert warnings == ["job job_h: ignored 5 result URL(s) that are not http(s) (file, javascript, malformed https, "
                        "other)"], messages
    for message in messages:
        assert "javascript:" not in message.lower() and "alert" not in message and "evil" not in message, message


@pytest.mark.parametrize("status", ["failed", "cancelled", "running", "<img src=x onerror=alert(1)>", "completed"])
def test_server_text_in_every_state_is_escaped(status: str) -> None:
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)><a href='javascript:alert(3)'>x</a>"
    view = job_view(
        id="job_<b>x</b>", status=status, progress=50, model=evil,
        error={"message": evil, "code": evil}, output={"text": evil}, creditsRefunded=5,
    )
    with serve(lambda req: Reply(200, view)) as api:
        job = client_for(api.url).job("job_<script>")
    for html_text in (D.job_html(job), D.job_bundle(job)["text/html"], D.header_html(job), D.outcome_html(job)):
        assert_inert(html_text)
        assert "<script>" not in html_text and "<img" not in html_text and "<a href='javascript" not in html_text


# -- downloads: a media server that misbehaves ----------------------------------------------------
@contextmanager
def media_server(handler: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A server whose handler writes the raw response itself (to drip, stall or never end)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            try:
                handler(self)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass  # the client gave up: that is the point of these tests

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def completed_job_with(client: vydra_nb.Client, url: str, job_id: str = "job_dl") -> Job:
    job = Job(id=job_id, model="veo3", client=client)
    job.apply({"status": "completed", "output": {"videoUrl": url}})
    return job


@pytest.fixture
def api_client() -> Iterator[vydra_nb.Client]:
    c = client_for("http://127.0.0.1:9/api/v1")  # downloads never touch the API
    yield c
    c.close()


def _headers(h: BaseHTTPRequestHandler, status: int = 200, **extra: str) -> None:
    h.send_response(status)
    for k, v in extra.items():
        h.send_header(k.replace("_", "-"), v)
    h.end_headers()


def _download_in_thread(job: Job, folder: Path, stop: threading.Event, **kwargs: Any) -> BaseException | None:
    """Run ``job.download`` with a watchdog: if it has not ended in 10 s the server is told to stop,
    so a regression fails this test instead of hanging the suite for hours."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            job.download(folder, **kwargs)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(10)
    stop.set()
    worker.join(10)
    assert outcome, "the download was still running after 20 s"
    assert time.monotonic() - start < 10, "the download outlived its timeout (the watchdog ended it)"
    return outcome[0]


def test_slow_drip_download_times_out(api_client: vydra_nb.Client, tmp_path: Path) -> None:
    """A byte every 50 ms never trips a read timeout; only a whole-download deadline ends it."""
    stop = threading.Event()

    def drip(h: BaseHTTPRequestHandler) -> None:
        _headers(h, Content_Type="video/mp4", Content_Length=str(10 * 1024 * 1024))
        while not stop.is_set():
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.05)

    with media_server(drip) as base:
        job = completed_job_with(api_client, base + "/slow.mp4")
        error = _download_in_thread(job, tmp_path / "dl", stop, timeout=1.0)
    assert isinstance(error, vydra_nb.DownloadError) and "longer than 1 s" in str(error), repr(error)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [], "no partial file is left"


def test_default_download_timeout_applies(api_client: vydra_nb.Client, tmp_path: Path) -> None:
    """Downloads the user did not time (the tracker's auto-download) are bounded by the client's setting."""
    stop = threading.Event()

    def drip(h: BaseHTTPRequestHandler) -> None:
        _headers(h, Content_Type="video/mp4", Content_Length="100000")
        while not stop.is_set():
            h.wfile.write(b"y")
            h.wfile.flush()
            time.sleep(0.05)

    api_client.download_timeout = 0.8
    with media_server(drip) as base:
        job = completed_job_with(api_client, base + "/slow.mp4")
        error = _download_in_thread(job, tmp_path / "dl", stop)
    assert isinstance(error, vydra_nb.DownloadError), repr(error)


def test_stalled_download_times_out(api_client: vydra_nb.Client, tmp_path: Path) -> None:
    stop = threading.Event()

    def stall(h: BaseHTTPRequestHandler) -> None:
        _headers(h, Content_Type="video/mp4", Content_Length="1000")
        h.wfile.write(b"x" * 10)
        h.wfile.flush()
        stop.wait(30)

    with media_server(stall) as base:
        job = completed_job_with(api_client, base + "/stall.mp4")
        error = _download_in_thread(job, tmp_path / "dl", stop, timeout=1.0)
    assert isinstance(error, vydra_nb.DownloadError), repr(error)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_endless_download_hits_the_byte_cap(api_client: vydra_nb.Client, tmp_path: Path) -> None:
    def endless(h: BaseHTTPRequestHandler) -> None:
        _headers(h, Content_Type="video/mp4", Transfer_Encoding="chunked")
        chunk = b"\0" * 65536
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        for _ in range(100_000):  # ~6.5 GB if nobody stops reading
            h.wfile.write(frame)

    with media_server(endless) as base:
        job = completed_job_with(api_client, base + "/endless.mp4")
        with pytest.raises(vydra_nb.DownloadError, match="cap"):
            job.download(tmp_path / "dl", max_bytes=2 * 1024 * 1024)
        api_client.max_download_bytes = 1024 * 1024  # the client-wide cap applies too
        with pytest.raises(vydra_nb.DownloadError, match="cap"):
            job.download(tmp_path / "dl")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_declared_gigantic_download_is_refused_before_reading(api_client: vydra_nb.Client, tmp_path: Path) -> None:
    sent: list[int] = []

    def huge(h: BaseHTTPRequestHandler) -> None:
        _headers(h, Content_Type="video/mp4", Content_Length=str(50 * 1024**3))
        for _ in range(1000):
            h.wfile.write(b"\0" * 65536)
            sent.append(1)

    with media_server(huge) as base:
        job = completed_job_with(api_client, base + "/huge.mp4")
        start = time.monotonic()
        with pytest.raises(vydra_nb.DownloadError, match="above the"):
            job.download(tmp_path / "dl")  # the default cap is 2 GiB
        assert time.monotonic() - start < 5
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_compression_bomb_is_capped_by_decoded_size(api_client: vydra_nb.Client, tmp_path: Path) -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # ~64 KB on the wire

    def serve_bomb(h: BaseHTTPRequestHandler) -> None:
        _headers(h, Content_Type="image/png", Content_Encoding="gzip", Content_Length=str(len(bomb)))
        h.wfile.write(bomb)

    with media_server(serve_bomb) as base:
        job = completed_job_with(api_client, base + "/bomb.png")
        with pytest.raises(vydra_nb.DownloadError, match="cap"):
            job.download(tmp_path / "dl", max_bytes=4 * 1024 * 1024)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    ("job_id", "path", "disposition", "content_type"),
    [
        ("job_dl", "/x.mp4", 'attachment; filename="../../../evil.sh"', "video/mp4"),
        ("job_dl", "/x.mp4", "attachment; filename*=UTF-8''..%2F..%2F..%2Fevil.sh", "video/mp4"),
        ("job_dl", "/x.mp4", 'attachment; filename="/tmp/evil_abs.sh"', "application/x-sh"),
        ("job_dl", "/a/..%2F..%2F..%2Fevil.sh", "", "text/html"),
        ("job_dl", "/../../../../tmp/evil_url.mp4", "", "video/mp4"),
        ("../../../evil_id", "/x.mp4", 'inline; filename="..\\..\\evil.bat"', "application/octet-stream"),
        ("..", "/x.png", "", "image/png"),
        ("job/../../../evil_id2", "/evil.sh", "", "application/x-executable"),
        ("job_\u202eexe.mp4", "/x.exe", 'attachment; filename="evil.exe"', "application/x-msdownload"),
    ],
)
def test_downloads_stay_in_their_folder(
    api_client: vydra_nb.Client, tmp_path: Path, job_id: str, path: str, disposition: str, content_type: str
) -> None:
    def reply(h: BaseHTTPRequestHandler) -> None:
        body = b"#!/bin/sh\necho pwned\n"
        extra = {"Content_Type": content_type, "Content_Length": str(len(body))}
        if disposition:
            extra["Content_Disposition"] = disposition
        _headers(h, **extra)
        h.wfile.write(body)

    root = tmp_path / "root"
    folder = root / "a" / "b" / "downloads"
    root.mkdir()
    before = files_under(tmp_path)
    with media_server(reply) as base:
        job = completed_job_with(api_client, base + path, job_id=job_id)
        saved = job.download(folder)
    created = files_under(tmp_path) - before
    assert saved.resolve().parent == folder.resolve()
    assert {p for p in created if p.is_file()} == {saved}, "exactly one file, inside the folder"
    assert all(p == folder or folder in p.parents or p in folder.parents for p in created)
    assert saved.suffix in {".mp4", ".png", ".bin", ".txt", ".json"}, saved.name
    assert all(ord(ch) < 128 for ch in saved.name) and ".." not in saved.stem
    assert not saved.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH), "nothing executable"
    import tempfile

    tmp_root = Path(tempfile.gettempdir())
    assert not list(tmp_root.glob("evil*")) and not (Path.cwd() / "evil.sh").exists()
    assert_inert(D.job_html(job))


@pytest.mark.parametrize(
    "answer",
    ["404", "500", "redirect-file", "redirect-loop", "drop", "refused"],
)
def test_download_failures_are_download_errors(api_client: vydra_nb.Client, tmp_path: Path, answer: str) -> None:
    def reply(h: BaseHTTPRequestHandler) -> None:
        if answer in ("404", "500"):
            _headers(h, int(answer), Content_Length="0")
        elif answer == "redirect-file":
            _headers(h, 302, Location="file:///etc/passwd", Content_Length="0")
        elif answer == "redirect-loop":
            _headers(h, 302, Location=h.path, Content_Length="0")
        elif answer == "drop":
            _headers(h, Content_Type="video/mp4", Content_Length="100000")
            h.wfile.write(b"x" * 100)
            h.wfile.flush()
            h.connection.shutdown(2)

    with media_server(reply) as base:
        url = "http://127.0.0.1:9/x.mp4" if answer == "refused" else base + "/x.mp4"
        job = completed_job_with(api_client, url)
        with pytest.raises(vydra_nb.DownloadError):
            job.download(tmp_path / "dl", timeout=5)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert not Path("/etc/passwd").samefile(tmp_path) if Path("/etc/passwd").exists() else True


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    from vydra_nb.api.media import atomic_write

    def chunks() -> Iterator[bytes]:
        yield b"a" * 10
        raise OSError("disk vanished")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "f.mp4", chunks())
    with pytest.raises(vydra_nb.DownloadError):
        atomic_write(tmp_path / "g.mp4", iter([b"a" * 10, b"b" * 10]), max_bytes=15)
    assert list(tmp_path.iterdir()) == []
    assert atomic_write(tmp_path / "h.mp4", iter([b"ok"])) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["h.mp4"]
    assert not (tmp_path / "h.mp4").stat().st_mode & 0o111


def test_a_planted_symlink_is_replaced_not_followed(api_client: vydra_nb.Client, tmp_path: Path) -> None:
    """If the target name already is a symlink (planted, or left by another tool), the download
    replaces the link itself; the file it pointed to, outside the folder, is untouched."""
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "job_dl.mp4").symlink_to(outside)

    def reply(h: BaseHTTPRequestHandler) -> None:
        _headers(h, Content_Type="video/mp4", Content_Length="4")
        h.wfile.write(b"data")

    with media_server(reply) as base:
        saved = completed_job_with(api_client, base + "/x.mp4").download(folder)
    assert saved == folder / "job_dl.mp4" and not saved.is_symlink() and saved.read_bytes() == b"data"
    assert outside.read_text() == "precious"
