"""The stock rasa-webchat widget (npm package ``rasa-webchat``), fetched from
the npm registry as published, and a page that embeds it.

    python scripts/rasa_webchat.py fetch
    python scripts/rasa_webchat.py serve --rasa-url http://127.0.0.1:5005 --socketio-path /socket.io

``fetch`` downloads the package tarball with plain urllib (npm is not needed),
checks it against the integrity the registry publishes (and, for the pinned
version, against the integrity recorded here), and keeps its browser bundle
``lib/index.js`` (the UMD build that defines ``window.WebChat``) under
``build/rasa-webchat/<version>/``. Once cached, nothing goes to the network.

``serve`` serves that page on its own origin, as a team's website would: the
widget talks socket.io to Rasa, which is another origin (``make run`` passes
``--cors``). Nothing in the page knows about ServiceNow.

The one change to the bundle as served: its stylesheets ``@import`` the
"Inter" web font from fonts.googleapis.com, a request to the outside world
on every page load that fails offline. ``serve`` drops those rules (the
widget then uses the browser's sans-serif), so the page asks nothing of any
host but its own and Rasa's. The cached file stays as published."""

import argparse
import base64
import hashlib
import io
import json
import os
import re
import signal
import sys
import tarfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Optional

ROOT = Path(__file__).resolve().parents[1]
# npm's own setting, so a registry mirror configured for npm is used here too.
REGISTRY = (os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY") or "https://registry.npmjs.org").rstrip("/")
PACKAGE = "rasa-webchat"
VERSION = "1.0.1"
# What registry.npmjs.org published for rasa-webchat@1.0.1; a published
# version cannot change, so a different tarball is not the one we tested.
PINNED_INTEGRITY = {
    "1.0.1": "sha512-Ld1zVJvTAaTrs6A5p8t70agNNrKYRyXlvqXZRgBoDvKKUXbA0jhJKECi5bdPGlaR6jsmqWtVylHS+YqIqo0x8w==",
}
BUNDLE_MEMBER = "package/lib/index.js"
LICENSE_MEMBER = "package/LICENSE"
CACHE_DIR = ROOT / "build" / PACKAGE
PAGE = Path(__file__).with_name("rasa_webchat.html")
#: A stylesheet rule that loads CSS from another host (the widget's web font).
REMOTE_IMPORT = re.compile(rb"@import url\(\s*[\"']?(?:https?:)?//[^)]*\);?")
TIMEOUT = 30


class FetchError(RuntimeError):
    """The bundle is neither cached nor obtainable (offline, or a bad download)."""


@dataclass(frozen=True)
class Bundle:
    version: str
    path: Path
    integrity: str


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json, application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as error:
        raise FetchError(f"cannot download {url}: {error}") from error


def _sri(algorithm: str, data: bytes) -> str:
    return f"{algorithm}-" + base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def _cached(directory: Path, version: str) -> Optional[Bundle]:
    stamp = directory / "integrity.json"
    bundle = directory / "index.js"
    if not (stamp.is_file() and bundle.is_file()):
        return None
    recorded = json.loads(stamp.read_text())
    # The stamp holds the bundle's own digest, so a truncated or edited file is fetched again.
    if recorded.get("bundle_sha256") != hashlib.sha256(bundle.read_bytes()).hexdigest():
        return None
    return Bundle(version, bundle, recorded["tarball_integrity"])


def fetch(version: str = VERSION, cache_dir: Path = CACHE_DIR, registry: str = REGISTRY) -> Bundle:
    """The widget's browser bundle, from the cache or else from the registry."""
    directory = cache_dir / version
    cached = _cached(directory, version)
    if cached:
        return cached

    metadata: Dict[str, Any] = json.loads(_get(f"{registry}/{PACKAGE}/{version}"))
    dist = metadata.get("dist") or {}
    integrity, shasum, tarball_url = dist.get("integrity"), dist.get("shasum"), dist.get("tarball")
    if not (integrity and tarball_url):
        raise FetchError(f"the registry gives no tarball or integrity for {PACKAGE}@{version}")
    pinned = PINNED_INTEGRITY.get(version)
    if pinned and integrity != pinned:
        raise FetchError(f"the registry's integrity for {PACKAGE}@{version} is {integrity}, expected {pinned}")

    tarball = _get(tarball_url)
    algorithm = integrity.split("-", 1)[0]
    if _sri(algorithm, tarball) != integrity:
        raise FetchError(f"{tarball_url} does not match its integrity {integrity}")
    if shasum and hashlib.sha1(tarball).hexdigest() != shasum:
        raise FetchError(f"{tarball_url} does not match its shasum {shasum}")

    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        try:
            bundle = archive.extractfile(BUNDLE_MEMBER).read()
            license_text = archive.extractfile(LICENSE_MEMBER).read()
        except (KeyError, AttributeError) as error:
            raise FetchError(f"{PACKAGE}@{version} has no {BUNDLE_MEMBER}") from error

    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "LICENSE", license_text)
    _write(directory / "index.js", bundle)
    # Written last: its presence says the bundle beside it is complete.
    _write(directory / "integrity.json", (json.dumps({
        "package": f"{PACKAGE}@{version}",
        "tarball": tarball_url,
        "tarball_integrity": integrity,
        "bundle_sha256": hashlib.sha256(bundle).hexdigest(),
    }, indent=2) + "\n").encode())
    return Bundle(version, directory / "index.js", integrity)


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: another process (a test worker, a second make run)
    may be serving the cached file, or fetching it too, at the same time."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def offline_bundle(script: bytes) -> bytes:
    """The widget's bundle without the stylesheet rules that fetch from other hosts."""
    return REMOTE_IMPORT.sub(b"", script)


def render_page(widget: Dict[str, Any], title: str = "rasa-webchat with the ServiceNow handoff") -> bytes:
    """The demo page, with the widget's options (rasa-webchat's props) filled in."""
    # "</" inside an inline script would end it early.
    options = json.dumps(widget).replace("</", "<\\/")
    return PAGE.read_text().replace("{{TITLE}}", title).replace("{{WIDGET_OPTIONS}}", options).encode()


def widget_options(rasa_url: str, socketio_path: str, storage: str = "local") -> Dict[str, Any]:
    """rasa-webchat's props for our channel; the same a team already has, with our socketio_path."""
    return {
        "socketUrl": rasa_url,
        "socketPath": socketio_path,
        # The greeting when a new session starts (the widget sends it once per session id).
        "initPayload": "/greet",
        "customData": {"language": "en"},
        "title": "Support",
        "subtitle": "Virtual assistant, or a person when you ask",
        "inputTextFieldHint": "Type a message",
        "embedded": True,
        "showMessageDate": False,
        # local: the session id (and the widget's copy of the conversation) survives reloads and new tabs.
        "params": {"storage": storage},
    }


class PageServer:
    """The page and the bundle on their own origin, in a thread."""

    def __init__(self, bundle: Bundle, widget: Dict[str, Any], host: str = "127.0.0.1", port: int = 0) -> None:
        page = render_page(widget)
        script = offline_bundle(bundle.path.read_bytes())

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(with_body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(with_body=False)

            def _answer(self, with_body: bool) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    status, content_type, body = 200, "text/html; charset=utf-8", page
                elif path == "/rasa-webchat.js":
                    status, content_type, body = 200, "text/javascript; charset=utf-8", script
                else:
                    status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "PageServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download and cache the widget's bundle; print its path")
    fetch_cmd.add_argument("--version", default=VERSION)
    serve_cmd = commands.add_parser("serve", help="serve a page that embeds the widget")
    serve_cmd.add_argument("--version", default=VERSION)
    serve_cmd.add_argument("--rasa-url", required=True, help="where the browser reaches Rasa (socketUrl)")
    serve_cmd.add_argument("--socketio-path", default="/socket.io", help="the channel's socketio_path (socketPath)")
    serve_cmd.add_argument("--storage", choices=("local", "session"), default="local")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8080)
    serve_cmd.add_argument("--quiet", action="store_true", help="do not print the page's address")
    args = parser.parse_args(argv)

    try:
        bundle = fetch(args.version)
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        print(f"       (once fetched, {CACHE_DIR.relative_to(ROOT)}/ keeps it for offline use)", file=sys.stderr)
        return 1
    if args.command == "fetch":
        print(bundle.path)
        return 0
    server = PageServer(bundle, widget_options(args.rasa_url, args.socketio_path, args.storage), args.host, args.port)
    if not args.quiet:
        print(f"rasa-webchat {bundle.version} page listening on {server.url}", flush=True)
    # SIGTERM (how scripts/run.sh stops it) ends the loop as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()
    return 0


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
