"""worker.models.checkpoints: fetching official checkpoints from a real local HTTP server.

The server below serves files from a temp folder with an ETag and Last-Modified, honours
`Range: bytes=N-` (206 / 416) and `If-Range`, records every request, and can be switched to
ignore Range, to send no validators, to answer 206 with a wrong or missing Content-Range, to
redirect, or to cut the connection after K body bytes.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from common.errors import FetchError
from worker.models.checkpoints import describe_state_dict, fetch, official_filename, official_url

TINY_NAME = "sam2.1_hiera_tiny.pt"
OFFICIAL_TINY_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
RANGE = re.compile(r"bytes=(\d+)-$")


class FileServer(ThreadingHTTPServer):
    """Serves `root`; request handler threads are joined on close (none outlives the fixture)."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.if_ranges: list[str | None] = []  # the If-Range header of each request
        self.honour_range = True
        self.validators = True  # send ETag and Last-Modified
        # None, or how to get a 206 wrong: "wrong_start", "no_content_range", "whole_as_206"
        self.bad_range: str | None = None
        self.redirects: dict[str, str] = {}  # path -> Location of a 302
        self.cut_after: int | None = None  # close the connection after this many body bytes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        server.if_ranges.append(self.headers.get("If-Range"))
        if self.path in server.redirects:
            self.send_response(302)
            self.send_header("Location", server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        info = path.stat()
        size = info.st_size
        # A re-upload is a new file (new inode, mtime): a new ETag.
        etag = f'"{info.st_ino:x}-{size:x}-{info.st_mtime_ns:x}"'
        modified = email.utils.formatdate(info.st_mtime, usegmt=True)
        start = 0
        match = RANGE.match(self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        if match and if_range is not None and if_range not in (etag, modified):
            match = None  # RFC 9110: the file changed, so the whole new one is sent
        if match and server.honour_range:
            start = int(match.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            if server.bad_range == "wrong_start":
                self.send_header("Content-Range", f"bytes {start + 1}-{size - 1}/{size}")
            elif server.bad_range == "whole_as_206":
                start = 0
                self.send_header("Content-Range", f"bytes 0-{size - 1}/{size}")
            elif server.bad_range is None:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        if server.validators:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        budget = size - start if server.cut_after is None else min(server.cut_after, size - start)
        try:
            with open(path, "rb") as handle:
                handle.seek(start)
                while budget > 0 and (chunk := handle.read(min(budget, 1 << 20))):
                    self.wfile.write(chunk)
                    budget -= len(chunk)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing to clean up
        # Returning closes the connection (HTTP/1.0): with cut_after, the body is left short.


@pytest.fixture(scope="module")
def tiny_sha256(tiny_checkpoint) -> str:
    return hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()


def place(source: Path, dest: Path) -> Path:
    """Put `source` at `dest` cheaply (hard link when possible; only ever read afterwards)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
    return dest


@pytest.fixture
def server(tmp_path, tiny_checkpoint):
    """A local HTTP server serving tmp_path/served, with the tiny checkpoint under its official
    name; shut down, with all of its threads joined, afterwards."""
    root = tmp_path / "served"
    place(tiny_checkpoint, root / TINY_NAME)
    httpd = FileServer(root)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http-server"
    )
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()  # joins the request threads
        thread.join(timeout=10)
        assert not thread.is_alive(), "the test HTTP server thread did not stop"


@pytest.fixture
def models_dir(tmp_path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def fetch_tiny(models_dir: Path, url: str, **kwargs) -> Path:
    return fetch("sam2.1", "tiny", models_dir, base_url=url, progress=False, **kwargs)


def tiny_dest(models_dir: Path) -> Path:
    return models_dir / "base" / TINY_NAME


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def test_full_download_lands_in_base_folder_with_sha256_sidecar(
    server, models_dir, tiny_checkpoint, tiny_sha256
):
    """A full download lands at <models>/base/<official name>, byte-identical, with a sha256
    sidecar and no .part left behind."""
    path = fetch_tiny(models_dir, server.url)

    dest = tiny_dest(models_dir)
    assert path == dest
    assert same_bytes(dest, tiny_checkpoint)
    sidecar = Path(f"{dest}.sha256")
    assert sidecar.read_text().split() == [tiny_sha256, TINY_NAME]
    assert not part_of(dest).exists()
    assert server.requests == [(f"/{TINY_NAME}", None)]


def test_interrupted_download_resumes_with_a_range_request(server, models_dir, tiny_checkpoint):
    """A download cut after K bytes fails asking to run again, keeps a K-byte .part, and the next
    fetch asks for `bytes=K-` and completes byte-identical."""
    cut = 3_000_123
    server.cut_after = cut
    dest = tiny_dest(models_dir)

    with pytest.raises(FetchError, match="run the same command again to resume") as excinfo:
        fetch_tiny(models_dir, server.url)

    assert f"got {cut} of {tiny_checkpoint.stat().st_size} bytes" in str(excinfo.value)
    assert part_of(dest).stat().st_size == cut
    assert not dest.exists()

    server.cut_after = None
    assert fetch_tiny(models_dir, server.url) == dest

    assert server.requests == [(f"/{TINY_NAME}", None), (f"/{TINY_NAME}", f"bytes={cut}-")]
    assert server.if_ranges[1] and server.if_ranges[1].startswith('"')  # the saved ETag
    assert same_bytes(dest, tiny_checkpoint)
    assert not part_of(dest).exists()
    # Resumed: the bytes were checked (length, structure), but this sha256 is no reference.
    assert not Path(f"{dest}.sha256").exists()
    assert not Path(f"{part_of(dest)}.json").exists()


def test_server_ignoring_range_makes_the_download_start_over(server, models_dir, tiny_checkpoint):
    """When the server answers a Range request with 200 and the whole file, the .part is
    overwritten (not appended to) and the result is still byte-identical."""
    cut = 1_234_567
    server.cut_after = cut
    with pytest.raises(FetchError, match="resume"):
        fetch_tiny(models_dir, server.url)
    dest = tiny_dest(models_dir)
    assert part_of(dest).stat().st_size == cut

    server.cut_after = None
    server.honour_range = False
    fetch_tiny(models_dir, server.url)

    assert server.requests[-1] == (f"/{TINY_NAME}", f"bytes={cut}-")
    assert same_bytes(dest, tiny_checkpoint)
    assert not part_of(dest).exists()


def test_complete_part_file_is_finished_after_a_416_answer(server, models_dir, tiny_checkpoint):
    """A .part (with its saved validators) that already holds the whole file gets 416 to its
    If-Range request and is verified and moved into place."""
    dest = tiny_dest(models_dir)
    server.cut_after = 1000
    with pytest.raises(FetchError, match="resume"):
        fetch_tiny(models_dir, server.url)  # saves the validators beside the .part
    shutil.copyfile(tiny_checkpoint, part_of(dest))  # the rest arrived, then a crash
    server.cut_after = None
    size = tiny_checkpoint.stat().st_size

    assert fetch_tiny(models_dir, server.url) == dest

    assert server.requests[-1] == (f"/{TINY_NAME}", f"bytes={size}-")
    assert same_bytes(dest, tiny_checkpoint)
    assert not part_of(dest).exists()


def test_sha256_mismatch_removes_the_download(server, models_dir):
    """A download whose sha256 differs from expected_sha256 raises and leaves neither the final
    file nor a .part."""
    served = server.root / TINY_NAME
    served.unlink()
    served.write_bytes(os.urandom(256 * 1024))  # the sha256 check comes before any loading
    expected = "0" * 64

    with pytest.raises(
        FetchError, match=f"sha256 [0-9a-f]{{64}} differs from the expected {expected}"
    ) as excinfo:
        fetch_tiny(models_dir, server.url, expected_sha256=expected)

    dest = tiny_dest(models_dir)
    assert "the download was removed" in str(excinfo.value)
    assert not dest.exists()
    assert not part_of(dest).exists()
    assert not Path(f"{dest}.sha256").exists()


def test_checkpoint_of_another_size_is_refused(server, models_dir, tiny_checkpoint):
    """A tiny checkpoint served as the small one fails verification, naming what was found, and
    the download is removed."""
    place(tiny_checkpoint, server.root / "sam2.1_hiera_small.pt")

    with pytest.raises(
        FetchError, match=re.escape("expected a sam2.1 small checkpoint, found sam2.1 tiny")
    ):
        fetch("sam2.1", "small", models_dir, base_url=server.url, progress=False)

    dest = models_dir / "base" / "sam2.1_hiera_small.pt"
    assert not dest.exists()
    assert not part_of(dest).exists()


def test_file_that_is_not_a_checkpoint_is_refused(server, models_dir):
    """Random bytes served as the tiny checkpoint fail as not loadable, and are removed."""
    junk = server.root / TINY_NAME
    junk.unlink()
    junk.write_bytes(os.urandom(64 * 1024))

    with pytest.raises(FetchError, match="not a loadable PyTorch checkpoint"):
        fetch_tiny(models_dir, server.url)

    dest = tiny_dest(models_dir)
    assert not dest.exists()
    assert not part_of(dest).exists()


def test_unreachable_server_names_the_destination_and_official_url(models_dir, closed_port):
    """Offline, the error gives the exact path to place the file at and the official URL."""
    with pytest.raises(FetchError, match="cannot reach") as excinfo:
        fetch_tiny(models_dir, f"http://127.0.0.1:{closed_port}")

    message = str(excinfo.value)
    assert str(tiny_dest(models_dir).resolve()) in message
    assert OFFICIAL_TINY_URL in message
    assert f"http://127.0.0.1:{closed_port}/{TINY_NAME}" in message
    assert not part_of(tiny_dest(models_dir)).exists()


def test_http_404_is_reported_with_its_status(server, models_dir):
    """A missing file on the server raises FetchError with `HTTP 404` and the offline hint."""
    with pytest.raises(FetchError, match="HTTP 404") as excinfo:
        fetch("sam2.1", "large", models_dir, base_url=server.url, progress=False)

    dest = models_dir / "base" / "sam2.1_hiera_large.pt"
    assert str(dest.resolve()) in str(excinfo.value)
    assert server.requests == [("/sam2.1_hiera_large.pt", None)]
    assert not dest.exists()


def test_present_checkpoint_is_returned_without_any_request(
    server, models_dir, tiny_checkpoint, tiny_sha256
):
    """A checkpoint already in place whose sidecar sha256 matches is returned with no request."""
    dest = place(tiny_checkpoint, tiny_dest(models_dir))
    Path(f"{dest}.sha256").write_text(f"{tiny_sha256}  {TINY_NAME}\n")

    assert fetch_tiny(models_dir, server.url) == dest
    assert fetch_tiny(models_dir, server.url) == dest

    assert server.requests == []


def test_present_checkpoint_with_wrong_sidecar_sha256_is_refused(
    server, models_dir, tiny_checkpoint
):
    """A present checkpoint whose recorded sha256 differs raises, says to delete it, and does not
    download or touch it."""
    dest = place(tiny_checkpoint, tiny_dest(models_dir))
    Path(f"{dest}.sha256").write_text(f"{'a' * 64}  {TINY_NAME}\n")

    with pytest.raises(FetchError, match="sha256 differs from the expected a{64}; delete it"):
        fetch_tiny(models_dir, server.url)

    assert server.requests == []
    assert dest.is_file()


def test_unknown_size_is_refused_before_any_request(server, models_dir):
    """An unknown size raises FetchError listing the sizes, without contacting the server."""
    with pytest.raises(FetchError, match="unknown model sam2.1 huge; sizes: tiny, small"):
        fetch("sam2.1", "huge", models_dir, base_url=server.url, progress=False)
    assert server.requests == []


def test_describe_state_dict_and_official_names(tiny_checkpoint):
    """The tiny state dict is recognised as sam2.1 tiny; official names and URLs follow Meta's."""
    import torch

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True, mmap=True)["model"]
    assert describe_state_dict(state) == ("sam2.1", "tiny")

    sam2_state = {k: v for k, v in state.items() if k not in ("no_obj_embed_spatial",)}
    sam2_state.pop("obj_ptr_tpos_proj.weight", None)
    assert describe_state_dict(sam2_state) == ("sam2", "tiny")
    assert describe_state_dict({}) == (None, None)

    assert official_filename("sam2", "large") == "sam2_hiera_large.pt"
    assert (
        official_url("sam2", "large")
        == "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt"
    )
    assert official_url("sam2.1", "tiny") == OFFICIAL_TINY_URL
    assert official_url("sam2.1", "tiny", "http://mirror/x/") == f"http://mirror/x/{TINY_NAME}"


@pytest.fixture(scope="module")
def other_tiny(tiny_checkpoint, tmp_path_factory) -> Path:
    """Another valid sam2.1 tiny checkpoint of the same size (one weight changed): a re-upload."""
    import torch

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    name = "sam_mask_decoder.iou_prediction_head.layers.2.bias"
    state["model"][name] = state["model"][name] + 1.0
    path = tmp_path_factory.mktemp("other") / TINY_NAME
    torch.save(state, path)
    return path


def replace_served(server, source: Path) -> None:
    """The mirror's file is re-uploaded (a new file under the same name)."""
    served = server.root / TINY_NAME
    served.unlink()
    shutil.copyfile(source, served)


def test_a_cut_download_whose_mirror_file_changed_ends_as_the_new_file_whole(
    server, models_dir, tiny_checkpoint, other_tiny
):
    """Cut half-way, the mirror's file replaced, fetched again: the If-Range no longer matches,
    the server sends the whole new file, and the result is the new file byte for byte (never
    the old half plus the new rest), with the new file's sha256 recorded."""
    assert tiny_checkpoint.stat().st_size == other_tiny.stat().st_size, "a same-size re-upload"
    cut = tiny_checkpoint.stat().st_size // 2
    server.cut_after = cut
    with pytest.raises(FetchError, match="resume"):
        fetch_tiny(models_dir, server.url)
    replace_served(server, other_tiny)
    server.cut_after = None

    dest = fetch_tiny(models_dir, server.url)

    assert server.requests[-1] == (f"/{TINY_NAME}", f"bytes={cut}-")
    assert same_bytes(dest, other_tiny)
    digest = hashlib.sha256(other_tiny.read_bytes()).hexdigest()
    assert Path(f"{dest}.sha256").read_text().split()[0] == digest
    assert fetch_tiny(models_dir, server.url) == dest  # the genuine file stays accepted


@pytest.mark.parametrize("bad_range", ["wrong_start", "no_content_range", "whole_as_206"])
def test_a_206_that_does_not_continue_the_partial_file_restarts_from_zero(
    server, models_dir, tiny_checkpoint, bad_range
):
    """A 206 whose Content-Range starts elsewhere, is missing, or covers the whole file is not
    appended: the .part is dropped and the file fetched whole with a plain request."""
    cut = 2_000_000
    server.cut_after = cut
    with pytest.raises(FetchError, match="resume"):
        fetch_tiny(models_dir, server.url)
    server.cut_after = None
    server.bad_range = bad_range

    dest = fetch_tiny(models_dir, server.url)

    assert server.requests[1:] == [(f"/{TINY_NAME}", f"bytes={cut}-"), (f"/{TINY_NAME}", None)]
    assert same_bytes(dest, tiny_checkpoint)
    assert Path(f"{dest}.sha256").exists()  # the final bytes came from one whole download


def test_a_partial_file_without_validators_restarts_from_zero(server, models_dir, tiny_checkpoint):
    """A server that sends neither ETag nor Last-Modified gives no way to check that a resumed
    range belongs to the same file: the next fetch asks for the whole file again."""
    server.validators = False
    server.cut_after = 1_000_000
    with pytest.raises(FetchError, match="resume"):
        fetch_tiny(models_dir, server.url)
    server.cut_after = None

    dest = fetch_tiny(models_dir, server.url)

    assert server.requests == [(f"/{TINY_NAME}", None), (f"/{TINY_NAME}", None)]
    assert same_bytes(dest, tiny_checkpoint)


def test_a_resumed_download_that_matches_the_configured_sha256_is_recorded(
    server, models_dir, tiny_checkpoint, tiny_sha256
):
    """With model.checkpoint_sha256 given, a resumed download that matches it is verified
    whole, and its sha256 is recorded."""
    server.cut_after = 1_500_000
    with pytest.raises(FetchError, match="resume"):
        fetch_tiny(models_dir, server.url, expected_sha256=tiny_sha256)
    server.cut_after = None

    dest = fetch_tiny(models_dir, server.url, expected_sha256=tiny_sha256)

    assert server.requests[-1][1] == "bytes=1500000-"
    assert Path(f"{dest}.sha256").read_text().split()[0] == tiny_sha256


def test_a_redirect_to_ftp_is_refused_and_one_within_the_mirrors_scheme_followed(
    server, models_dir, tiny_checkpoint
):
    """An http mirror redirecting to ftp:// is refused, naming the target; a redirect to
    another http path of the same mirror is followed."""
    server.redirects[f"/{TINY_NAME}"] = "ftp://127.0.0.1/sam2.1_hiera_tiny.pt"
    with pytest.raises(FetchError, match=r"redirected to ftp://127\.0\.0\.1/\S+, refused"):
        fetch_tiny(models_dir, server.url)
    assert not tiny_dest(models_dir).exists()

    place(tiny_checkpoint, server.root / "moved" / TINY_NAME)
    server.redirects[f"/{TINY_NAME}"] = f"{server.url}/moved/{TINY_NAME}"
    assert same_bytes(fetch_tiny(models_dir, server.url), tiny_checkpoint)
    assert server.requests[-1] == (f"/moved/{TINY_NAME}", None)


def test_an_https_mirror_redirecting_to_http_is_refused(server, models_dir, tmp_path, monkeypatch):
    """An https mirror (a real local TLS server, its certificate trusted for this test) that
    redirects to plain http is refused: nothing is fetched from the http server."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    tls = FileServer(tmp_path / "tls-root")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    tls.redirects[f"/{TINY_NAME}"] = f"{server.url}/{TINY_NAME}"
    thread = threading.Thread(target=tls.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        https_url = f"https://127.0.0.1:{tls.server_address[1]}"
        with pytest.raises(
            FetchError, match=rf"redirected to {re.escape(server.url)}/\S+, refused"
        ):
            fetch_tiny(models_dir, https_url)
    finally:
        tls.shutdown()
        tls.server_close()
        thread.join(timeout=10)
    assert tls.requests == [(f"/{TINY_NAME}", None)]  # TLS worked: the redirect was reached
    assert server.requests == []


@pytest.fixture
def cli_env(tmp_path, monkeypatch) -> Path:
    """An environment where the CLI reads no config file and keeps models in a temp folder."""
    for name in list(os.environ):
        if name.startswith("SEGD_"):
            monkeypatch.delenv(name)
    models = tmp_path / "cli-models"
    monkeypatch.setenv("SEGD_PATHS__MODELS", str(models))
    monkeypatch.chdir(tmp_path)
    return models


def test_cli_models_fetch_downloads_and_prints_the_path(server, cli_env, capsys, tiny_checkpoint):
    """`segd models fetch tiny --base-url URL` exits 0, prints the path, and the file is there."""
    from segd.cli import run

    assert run(["models", "fetch", "tiny", "--base-url", server.url]) == 0

    dest = cli_env / "base" / TINY_NAME
    assert capsys.readouterr().out.strip() == str(dest)
    assert same_bytes(dest, tiny_checkpoint)


def test_cli_models_fetch_offline_exits_3_and_names_the_destination(cli_env, capsys, closed_port):
    """Offline, `segd models fetch tiny` exits 3 and prints where to put the file by hand."""
    from segd.cli import run

    assert run(["models", "fetch", "tiny", "--base-url", f"http://127.0.0.1:{closed_port}"]) == 3

    err = capsys.readouterr().err
    assert str((cli_env / "base" / TINY_NAME).resolve()) in err
    assert OFFICIAL_TINY_URL in err
    assert err.startswith("segd: cannot reach")


def test_cli_fetch_after_a_cut_and_a_reupload_ends_with_the_new_file_whole(
    server, cli_env, capsys, tiny_checkpoint, other_tiny
):
    """`segd models fetch tiny`, cut half-way, the mirror's file re-uploaded, the same command
    again: exit 0 and the file on disk is the new one, byte for byte."""
    from segd.cli import run

    server.cut_after = tiny_checkpoint.stat().st_size // 2
    assert run(["models", "fetch", "tiny", "--base-url", server.url]) == 3
    assert "run the same command again to resume" in capsys.readouterr().err
    replace_served(server, other_tiny)
    server.cut_after = None

    assert run(["models", "fetch", "tiny", "--base-url", server.url]) == 0

    assert same_bytes(cli_env / "base" / TINY_NAME, other_tiny)
