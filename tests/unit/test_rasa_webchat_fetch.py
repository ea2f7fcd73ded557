"""scripts/rasa_webchat.py against a registry on loopback: the bundle is taken
only from a tarball that matches the registry's integrity, and once cached it
needs no network."""

import base64
import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator

import pytest

from scripts.rasa_webchat import PINNED_INTEGRITY, FetchError, fetch, render_page, widget_options

BUNDLE = b"!function(e,t){e.WebChat=t()}(window,function(){return {default: function(){}}});"


def tarball(files: Dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


class Registry:
    """Serves one package version's metadata and tarball, as registry.npmjs.org does."""

    def __init__(self) -> None:
        self.tarball = tarball({"package/lib/index.js": BUNDLE, "package/LICENSE": b"Apache-2.0"})
        self.integrity = sri(self.tarball)
        self.requests = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                registry.requests.append(self.path)
                if self.path.endswith(".tgz"):
                    body = registry.tarball
                else:
                    version = self.path.rsplit("/", 1)[-1]
                    body = json.dumps({"name": "rasa-webchat", "version": version, "dist": {
                        "integrity": registry.integrity,
                        "shasum": hashlib.sha1(registry.tarball).hexdigest(),
                        "tarball": f"{registry.url}/rasa-webchat/-/rasa-webchat-{version}.tgz",
                    }}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def registry() -> Iterator[Registry]:
    running = Registry()
    yield running
    running.stop()


def test_the_bundle_is_extracted_checked_and_then_served_from_the_cache_offline(registry, tmp_path):
    bundle = fetch("9.9.9", tmp_path, registry.url)
    assert bundle.path.read_bytes() == BUNDLE
    assert bundle.integrity == registry.integrity
    assert (tmp_path / "9.9.9" / "LICENSE").read_bytes() == b"Apache-2.0"
    registry.stop()
    again = fetch("9.9.9", tmp_path, registry.url)
    assert again.path.read_bytes() == BUNDLE
    assert len(registry.requests) == 2  # metadata and tarball, once


def test_a_tarball_that_does_not_match_its_integrity_is_refused_and_nothing_is_cached(registry, tmp_path):
    registry.integrity = sri(b"another tarball")
    with pytest.raises(FetchError, match="does not match its integrity"):
        fetch("9.9.9", tmp_path, registry.url)
    assert not (tmp_path / "9.9.9").exists()


def test_the_pinned_version_must_have_the_pinned_integrity(registry, tmp_path):
    version = next(iter(PINNED_INTEGRITY))
    with pytest.raises(FetchError, match="expected"):
        fetch(version, tmp_path, registry.url)


def test_an_edited_cached_bundle_is_fetched_again(registry, tmp_path):
    bundle = fetch("9.9.9", tmp_path, registry.url)
    bundle.path.write_bytes(b"alert('edited')")
    assert fetch("9.9.9", tmp_path, registry.url).path.read_bytes() == BUNDLE
    assert len(registry.requests) == 4


def test_offline_without_a_cache_is_a_named_error(tmp_path):
    with pytest.raises(FetchError, match="cannot download"):
        fetch("9.9.9", tmp_path, "http://127.0.0.1:9")


def test_the_page_embeds_the_options_without_ending_its_script_early():
    options = widget_options("http://rasa.example:5005", "/socket.io")
    options["title"] = "</script><script>alert(1)</script>"
    page = render_page(options).decode()
    assert "</script><script>alert(1)" not in page
    assert '"socketPath": "/socket.io"' in page
    assert '"storage": "local"' in page
