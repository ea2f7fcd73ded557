"""Seeded, structure-aware generation of hostile HTTP requests for the
channel's routes, and a raw-socket client that sends them exactly as built.

Every case knows what a correct server answers: the status codes allowed for
it, whether the server may close the connection without an answer (only for a
request that is incomplete or that Sanic itself cannot parse), and whether
the answer is a stream that never ends. Request bodies are JSON written by
hand (``dump``) so they can hold what ``json.dumps`` refuses to write: huge
integers, ``NaN``, lone surrogate escapes, nesting thousands deep.
"""

import json
import random
import re
import select
import socket
import time
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

PREFIX = "/webhooks/servicenow"
MAX_BODY = 64 * 1024
MAX_CALLBACK_BODY = 512 * 1024
MAX_DEPTH = 32
MAX_MESSAGE_LENGTH = 4000
SECRET_HEADER = "X-Webhook-Secret"

#: ``dump`` escapes each surrogate on its own; a JSON decoder joins a high one followed by a low one.
LONE_SURROGATE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is; ``valid`` is False for what no JSON parser should accept."""

    text: str
    valid: bool
    #: Levels of nesting the token holds (for ``json_valid``'s depth count).
    depth: int = 0


@dataclass
class Case:
    kind: str
    request: bytes
    #: Statuses a correct server may answer; ``None`` means any below 500.
    allowed: Optional[FrozenSet[int]] = None
    #: True when closing without an answer is correct (an incomplete request, one Sanic cannot parse).
    may_close: bool = False
    #: The answer is an event stream: only its head is read.
    stream: bool = False
    #: Our routes answer these refusals with the channel's JSON error envelope.
    envelope: bool = False
    #: Half-close after sending (for a request whose declared body never fully comes).
    half_close: bool = False


@dataclass
class Outcome:
    case: Case
    status: Optional[int]
    closed: bool
    timed_out: bool
    seconds: float
    body: bytes = b""


# -- JSON by hand --------------------------------------------------------------


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{dump(str(key))}:{dump(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(item) for item in value) + "]"
    # ensure_ascii writes a lone surrogate as its \\udXXX escape.
    return json.dumps(value)


def json_valid(value: Any) -> bool:
    """What the channel's parser accepts: depth, text without lone surrogates, no invalid tokens."""
    pending: List[Tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, Raw):
            if not item.valid or depth - 1 + item.depth > MAX_DEPTH:
                return False
        elif isinstance(item, str):
            if LONE_SURROGATE.search(item):
                return False
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return False
            if isinstance(item, dict):
                for key, child in item.items():
                    if LONE_SURROGATE.search(str(key)):
                        return False
                    pending.append((child, depth + 1))
            else:
                pending.extend((child, depth + 1) for child in item)
    return True


def nested(depth: int) -> Raw:
    """``depth`` levels of alternating objects and arrays, as one token (too deep to build recursively)."""
    opening = "".join('{"n":' if level % 2 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 else "]" for level in reversed(range(depth)))
    return Raw(opening + "1" + closing, valid=True, depth=depth)


class Junk:
    """Values of every JSON type, and of no JSON type, for any field."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def text(self) -> str:
        rng = self.rng
        return rng.choice([
            "", " ", "hi", "x" * rng.choice([1, 255, 256, 4001]), "\x00", "a\x00b", "line\nbreak", "tab\there",
            "\x1b[31mred", "\u2028", "\ud800", "a\udfffb", "\U0001F600 emoji", "\ud83d\ude00 escaped pair", "\u202eevil", "../../etc/passwd",
            "<script>alert(1)</script>", "%00", " padded ", "\x7f", "\x85", "é" * rng.randint(1, 50),
            "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 40))),
        ])

    def scalar(self) -> Any:
        rng = self.rng
        return rng.choice([
            None, True, False, 0, -1, 2**63, 1.5, -0.0, 1e308,
            # Python refuses integers of more than 4,300 digits.
            Raw("1" * 4300, valid=True), Raw("1" * rng.choice([4301, 10000]), valid=False),
            Raw("1" * 50, valid=True), Raw("NaN", valid=False), Raw("-Infinity", valid=False),
            Raw("1e999", valid=False), Raw("1e300", valid=True), self.text(),
        ])

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if roll < 0.55 or depth > 3:
            return self.scalar()
        if roll < 0.7:
            return [self.value(depth + 1) for _ in range(rng.randint(0, 4))]
        if roll < 0.85:
            return {self.text(): self.value(depth + 1) for _ in range(rng.randint(0, 4))}
        return nested(rng.choice([5, MAX_DEPTH - 1, MAX_DEPTH + 1, 200, 5000]))

    def not_a(self, kind: type) -> Any:
        """Anything but a ``kind`` (``str``, ``list``, ``dict``, ``bool``); never null, which means "absent"."""
        while True:
            value = self.value()
            # A nested token is a list; it only stands in for "not a str" or "not a bool".
            if value is not None and not isinstance(value, kind) and not (isinstance(value, Raw) and value.depth):
                return value


# -- requests ------------------------------------------------------------------


def http_request(
    method: str,
    path: str,
    body: Optional[bytes] = None,
    headers: Sequence[Tuple[str, str]] = (),
    *,
    content_length: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", "Connection: close", *[f"{name}: {value}" for name, value in headers]]
    if body is not None and content_length:
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + (body or b"")


def chunked(body: bytes, size: int) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


class CaseMaker:
    def __init__(self, rng: random.Random, api: str, secret: str) -> None:
        self.rng = rng
        self.junk = Junk(rng)
        self.api = api
        self.secret = secret

    # Senders ------------------------------------------------------------

    def sender(self) -> Tuple[Any, bool]:
        rng = self.rng
        if rng.random() < 0.5:
            return rng.choice([f"fuzz-{rng.getrandbits(40):x}", "fuzz-é-" + str(rng.randint(0, 9**9)), "f" * 255]), True
        return rng.choice([
            "", "   ", " lead", "trail ", "a\nb", "a\x00", "a\x1b", "a\u2028", "a\x85", "s" * 256, "\ud800",
            None, 42, True, ["x"], {"x": 1},
        ]), False

    def query_sender(self) -> Tuple[str, bool]:
        rng = self.rng
        if rng.random() < 0.5:
            return rng.choice([f"sender=fuzz-{rng.getrandbits(40):x}", "sender=fuzz-%C3%A9", "sender=%ff%fe",
                               "sender=ok&sender=%00", "sender=" + "f" * 255]), True
        return rng.choice(["", "sender=", "sender=%00", "sender=a%0Ab", "sender=+", "sender=%20x",
                           "sender=" + "s" * 256, "sender=a%1b%5b31m", "other=1", "sender=%E2%80%A8"]), False

    # Bodies ---------------------------------------------------------------

    def encode(self, document: Any, max_body: int) -> Tuple[bytes, bool]:
        """The body bytes and whether the channel can read them as JSON at all."""
        rng = self.rng
        text = dump(document)
        roll = rng.random()
        if roll < 0.75:
            body, readable = text.encode("utf-8", "surrogatepass"), True
        elif roll < 0.8:
            body, readable = b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass"), True
        elif roll < 0.85:
            body, readable = text.encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]), "surrogatepass"), False
        elif roll < 0.88:
            body, readable = text.encode("latin-1", "replace") + b"\xe9\xff", False
        elif roll < 0.91:
            encoded = text.encode("utf-8", "surrogatepass")
            body, readable = encoded[: rng.randint(0, max(0, len(encoded) - 1))], False
        elif roll < 0.94:
            body, readable = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))), False
        elif roll < 0.96:
            body, readable = b"[" * rng.choice([100, 5000, 60000]) + b"]", False
        elif roll < 0.98:
            body, readable = b"", False
        else:
            body, readable = text.encode("utf-8", "surrogatepass") + b" " * (max_body + 1), False
        readable = readable and json_valid(document) and len(body) <= max_body
        if readable:
            try:
                json.loads(body.decode("utf-8-sig"))
            except (UnicodeDecodeError, ValueError):
                readable = False
        return body, readable

    # Routes ---------------------------------------------------------------

    def webhook(self) -> Case:
        rng = self.rng
        document: Dict[str, Any] = {}
        valid = True
        sender, ok = self.sender()
        if rng.random() < 0.95:
            document["sender"] = sender
            valid &= ok
        else:
            valid = False
        message_roll = rng.random()
        if message_roll < 0.5:
            # Only greetings: they never start a handoff, so a valid case changes no live chat.
            document["message"] = rng.choice(["hi", "hello", " hi "])
        elif message_roll < 0.95:
            message = rng.choice([self.junk.not_a(str), "", "   ", "h\x00i", "bell\x07", "\x1b[2J", "x" * (MAX_MESSAGE_LENGTH + 1), "\ud800"])
            document["message"] = message
            valid = False
        else:
            valid = False
        metadata_roll = rng.random()
        if metadata_roll < 0.4:
            document["metadata"] = rng.choice([{}, {"lang": "en"}, None, {"userId": "u", "email": "a@b.c", "x": [1, {"y": None}]}])
        elif metadata_roll < 0.7:
            document["metadata"] = self.junk.not_a(dict)
            valid = False
        elif metadata_roll < 0.8:
            document["metadata"] = {self.junk.text(): self.junk.value()}
        for _ in range(rng.randint(0, 2)):
            document[self.junk.text()] = self.junk.value()
        if rng.random() < 0.05:
            document = self.junk.value()
            valid = False
        body, readable = self.encode(document, MAX_BODY)
        valid = valid and readable and isinstance(document, dict)
        if valid:
            # Keys the generator added (junk text) may hold lone surrogates; json_valid covered them.
            valid = json_valid(document)
        allowed = frozenset({200}) if valid else frozenset({400, 413})
        return self.post("webhook", body, allowed)

    def typing(self) -> Case:
        rng = self.rng
        document: Dict[str, Any] = {}
        sender, valid = self.sender()
        document["sender"] = sender
        if rng.random() < 0.5:
            document["typing"] = rng.choice([True, False])
        else:
            document["typing"] = rng.choice([self.junk.not_a(bool), "true", 1, 0])
            valid = False
        if rng.random() < 0.2:
            document[self.junk.text()] = self.junk.value()
        body, readable = self.encode(document, MAX_BODY)
        valid = valid and readable and json_valid(document)
        return self.post("typing", body, frozenset({202}) if valid else frozenset({400, 413}))

    def callback_item(self) -> Tuple[Any, bool]:
        rng = self.rng
        junk = self.junk
        if rng.random() < 0.05:
            return junk.not_a(dict), False
        item: Dict[str, Any] = {
            "uiType": rng.choice(["OutputText", "OutputImage", "OutputLink", "OutputHtml", "OutputCard", "Picker",
                                  "ActionMsg", "TopicPickerControl", junk.scalar()]),
        }
        for key in rng.sample(["value", "label", "header", "messageId", "agentInfo", "actionType", "options",
                               "promptMsg", "data", "spinnerType", "waitTime", "message", "group"], rng.randint(0, 6)):
            if key == "agentInfo":
                item[key] = rng.choice([{"agentName": junk.scalar(), "sentFromAgent": junk.scalar()}, junk.value()])
            elif key == "actionType":
                item[key] = rng.choice(["StartTypingIndicator", "EndTypingIndicator", "SwitchToLiveAgent",
                                        "SwitchToVirtualAgent", "System", "StartSpinner", "SystemActionMsg", junk.scalar()])
            elif key == "options":
                item[key] = rng.choice([[{"label": junk.scalar(), "value": junk.scalar()}, junk.scalar()], junk.value()])
            elif key == "data":
                card = {"title": junk.scalar(), "fields": rng.choice([[{"fieldLabel": junk.scalar(), "fieldValue": junk.scalar()}], junk.value()])}
                item[key] = rng.choice([card, dump(card), "{not json", dump(nested(200)), junk.value()])
            elif key == "value":
                item[key] = rng.choice([junk.text(), {"action": junk.scalar()}, "https://example.com/a.png", "javascript:alert(1)", junk.value()])
            else:
                item[key] = junk.value()
        return item, True

    def callback(self) -> Case:
        rng = self.rng
        junk = self.junk
        document: Dict[str, Any] = {}
        valid = True
        if rng.random() < 0.6:
            document["clientSessionId"] = f"{rng.getrandbits(128):032x}"
        else:
            document["clientSessionId"] = rng.choice([junk.not_a(str), "", "../../api/now/table/sys_user", "a/b", "a?b=c", "x" * 129, "id\nwith break"])
            valid = False
        body_roll = rng.random()
        if body_roll < 0.8:
            items = [self.callback_item() for _ in range(rng.randint(0, 4))]
            document["body"] = [item for item, _ in items]
            valid &= all(ok for _, ok in items)
        elif body_roll < 0.9:
            document["body"] = junk.not_a(list)
            valid = False
        for key in ("agentChat", "completed", "takeControl", "requestId", "clientVariables"):
            if rng.random() < 0.3:
                document[key] = rng.choice([True, junk.value(), {"rasa_sender_id": self.sender()[0]}])
        if rng.random() < 0.03:
            document = junk.value()
            valid = False
        body, readable = self.encode(document, MAX_CALLBACK_BODY)
        valid = valid and readable and isinstance(document, dict) and json_valid(document)
        headers, authorized = self.callback_auth()
        if self.api != "virtual_agent":
            allowed = frozenset({404})
        elif not authorized:
            allowed = frozenset({401})
        else:
            allowed = frozenset({200}) if valid else frozenset({400, 413})
        if len(body) > MAX_CALLBACK_BODY:
            allowed |= {413}
        return Case("callback", http_request("POST", f"{PREFIX}/callback", body, [("Content-Type", "application/json"), *headers]),
                    allowed, envelope=True)

    def callback_auth(self) -> Tuple[List[Tuple[str, str]], bool]:
        rng = self.rng
        right = (SECRET_HEADER, self.secret)
        roll = rng.random()
        if roll < 0.4:
            return [right], True
        if roll < 0.5:
            # Sanic reads the first of duplicated headers.
            return [right, (SECRET_HEADER, "wrong")], True
        return rng.choice([
            [], [(SECRET_HEADER, "wrong")], [(SECRET_HEADER, "")], [(SECRET_HEADER, "wrong"), right],
            [(SECRET_HEADER, "\udcff\udcfe")], [(SECRET_HEADER, "é" + self.secret)], [(SECRET_HEADER, self.secret[:-1])], [(SECRET_HEADER, self.secret + " ")],
            [("Authorization", "Basic \udcff\udcfe")], [("Authorization", "Basic !!!")], [("Authorization", "Bearer x")],
            [("Authorization", "Basic " + "QQ==" * 1000)],
        ]), False

    def stream(self) -> Case:
        rng = self.rng
        query, valid = self.query_sender()
        headers = []
        if rng.random() < 0.5:
            headers.append(("Last-Event-ID", rng.choice([
                "", "x", "-", "abc-1", "abc-\u0662\u0663", "abc-" + "9" * 3000, "abc-²", "abc--1", "\udcff-1", "a-b-c",
            ])))
        if rng.random() < 0.3:
            query += rng.choice(["&last_event_id=abc-%D9%A2", "&last_event_id=" + "9" * 2000, "&last_event_id=%ff"])
        path = f"{PREFIX}/stream" + (f"?{query}" if query else "")
        return Case("stream", http_request("GET", path, None, headers), frozenset({200}) if valid else frozenset({400}),
                    stream=valid, envelope=True)

    def pages(self) -> Case:
        rng = self.rng
        path, allowed = rng.choice([
            (f"{PREFIX}/", {200}), (f"{PREFIX}/chat", {200}), (f"{PREFIX}/chat/webchat.js", {200}),
            (f"{PREFIX}/chat/webchat.css", {200}), (f"{PREFIX}/chat/index.html", {200}),
            (f"{PREFIX}/chat/..%2Fchannel.py", {404}), (f"{PREFIX}/chat/%00", {404}), (f"{PREFIX}/chat/%ff", {404}),
            (f"{PREFIX}/chat/" + "a" * 3000, {404}), (f"{PREFIX}/nope", {404}), (f"{PREFIX}/?x=%zz&y", {200}),
            (f"{PREFIX}//", None), (f"{PREFIX}/chat/a/b", {404}),
        ])
        method = "GET" if rng.random() < 0.8 else rng.choice(["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"])
        return Case("pages", http_request(method, path, b"" if method != "GET" else None),
                    frozenset(allowed) if allowed and method == "GET" else None)

    def post(self, route: str, body: bytes, allowed: FrozenSet[int]) -> Case:
        rng = self.rng
        content_type = rng.choice(["application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", "", "\udcff"])
        headers = [("Content-Type", content_type)] if content_type or rng.random() < 0.5 else []
        if len(body) > MAX_BODY:
            allowed = frozenset({413})
        return Case(route, http_request("POST", f"{PREFIX}/{route}", body, headers), allowed, envelope=True)

    # Framing and header oddities --------------------------------------------

    def oddity(self) -> Case:
        rng = self.rng
        route = rng.choice(["webhook", "typing", "callback"])
        good = dump({"sender": f"fuzz-{rng.getrandbits(32):x}", "message": "hi", "typing": True}).encode()
        path = f"{PREFIX}/{route}"
        base = [("Content-Type", "application/json"), (SECRET_HEADER, self.secret)]
        kind = rng.choice([
            "dup-content-length", "dup-transfer-encoding", "te-and-cl", "bad-content-length", "huge-content-length",
            "short-body", "long-body", "chunked", "chunked-over-cap", "chunked-malformed", "te-other", "header-bytes",
            "header-no-colon", "header-nul", "header-too-long", "dup-content-type", "dup-host", "http10", "bad-version",
            "get-with-body", "expect-continue", "expect-junk", "non-ascii-target", "bare-lf",
        ])
        if kind == "dup-content-length":
            return Case(kind, http_request("POST", path, good, [*base, ("Content-Length", str(len(good)))]), frozenset({400}), envelope=True)
        if kind == "dup-transfer-encoding":
            headers = [*base, ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")]
            return Case(kind, http_request("POST", path, chunked(good, 7), headers, content_length=False), frozenset({400}), envelope=True)
        if kind == "te-and-cl":
            headers = [*base, ("Transfer-Encoding", "chunked")]
            return Case(kind, http_request("POST", path, chunked(good, 7), headers), frozenset({400}), envelope=True)
        if kind == "bad-content-length":
            value = rng.choice(["abc", "-1", "\u0661\u0662", "1e3", "+5", "0x10", "1" * 40, "", "1,2", " 5 5"])
            request = http_request("POST", path, good, [*base, ("Content-Length", value)], content_length=False)
            return Case(kind, request, frozenset({400}), envelope=True)
        if kind == "huge-content-length":
            value = rng.choice([str(MAX_CALLBACK_BODY + 1), "99999999999", "999999999999"])
            return Case(kind, http_request("POST", path, good, [*base, ("Content-Length", value)], content_length=False),
                        frozenset({413}), envelope=True)
        if kind == "short-body":
            # More declared than sent: the server waits for the rest, sees the half-close, and may just close.
            request = http_request("POST", path, good, [*base, ("Content-Length", str(len(good) + 50))], content_length=False)
            return Case(kind, request, None, may_close=True, half_close=True)
        if kind == "long-body":
            request = http_request("POST", path, good + b"GARBAGE / HTTP/9\r\n\r\n", [*base, ("Content-Length", str(len(good)))], content_length=False)
            return Case(kind, request, None)
        if kind == "chunked":
            request = http_request("POST", path, chunked(good, rng.randint(1, 16)), [*base, ("Transfer-Encoding", "chunked")], content_length=False)
            return Case(kind, request, None, envelope=False)
        if kind == "chunked-over-cap":
            size = (MAX_CALLBACK_BODY if route == "callback" else MAX_BODY) + rng.choice([1, 10_000, 300_000])
            body = b'{"sender": "' + b"a" * size + b'"}'
            request = http_request("POST", path, chunked(body, 16_384), [*base, ("Transfer-Encoding", "chunked")], content_length=False)
            # Connect has no callback route: it says so before reading the body.
            refused = {404} if route == "callback" and self.api != "virtual_agent" else {413}
            return Case(kind, request, frozenset(refused), envelope=True)
        if kind == "chunked-malformed":
            body = rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"-5\r\nabc\r\n0\r\n\r\n", b"3\r\nabcdef\r\n0\r\n\r\n", b"3;ext=1\r\nabc\r\n0\r\n\r\n"])
            request = http_request("POST", path, body, [*base, ("Transfer-Encoding", "chunked")], content_length=False)
            return Case(kind, request, None, may_close=True, half_close=True)
        if kind == "te-other":
            value = rng.choice(["gzip", "Chunked", "chunked, gzip", "identity", "\udcff"])
            request = http_request("POST", path, good, [*base, ("Transfer-Encoding", value)], content_length=False)
            return Case(kind, request, frozenset({400}), envelope=True)
        if kind == "header-bytes":
            value = rng.choice(["\udcff\udcfe", "\udce9t\udce9", "ok\udc80", "é"])
            name = rng.choice(["X-Anything", SECRET_HEADER, "Content-Type", "Last-Event-ID", "Authorization"])
            return Case(kind, http_request("POST", path, good, [("Content-Type", "application/json"), (name, value)]), None)
        if kind == "header-no-colon":
            return Case(kind, http_request("POST", path, good, [("NoColonHere", "")]).replace(b"NoColonHere: ", b"NoColonHere"), frozenset({400}))
        if kind == "header-nul":
            return Case(kind, http_request("POST", path, good, [("X-Nul", "a\x00b")]), None)
        if kind == "header-too-long":
            return Case(kind, http_request("POST", path, good, [("X-Long", "a" * 9000)]), None)
        if kind == "dup-content-type":
            return Case(kind, http_request("POST", path, good, [("Content-Type", "text/plain"), ("Content-Type", "application/json"), (SECRET_HEADER, self.secret)]), None)
        if kind == "dup-host":
            return Case(kind, http_request("GET", f"{PREFIX}/", None, [("Host", "evil.example")]), frozenset({200}))
        if kind == "http10":
            return Case(kind, http_request("GET", f"{PREFIX}/", None, version="HTTP/1.0"), frozenset({200}))
        if kind == "bad-version":
            return Case(kind, http_request("GET", f"{PREFIX}/", None, version=rng.choice(["HTTP/2.0", "HTTP/1.1 extra", "HTTP"])), frozenset({400}))
        if kind == "get-with-body":
            target = rng.choice(["/", "/stream?sender=fuzz-get", "/chat"])
            return Case(kind, http_request("GET", f"{PREFIX}{target}", b"x" * rng.choice([1, 100, 5000])), frozenset({400, 413}))
        if kind == "expect-continue":
            return Case(kind, http_request("POST", path, good, [*base, ("Expect", "100-continue")]), None)
        if kind == "expect-junk":
            return Case(kind, http_request("POST", path, good, [*base, ("Expect", "tea")]), frozenset({417}))
        if kind == "bare-lf":
            return Case(kind, f"GET {PREFIX}/ HTTP/1.1\nHost: x\n\n".encode(), None, may_close=True, half_close=True)
        # A request target Sanic 21.12 cannot turn back into bytes: it closes the connection.
        return Case(kind, f"GET {PREFIX}/\xe9 HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"), None, may_close=True)

    def make(self) -> Case:
        roll = self.rng.random()
        for share, build in ((0.28, self.webhook), (0.12, self.typing), (0.3, self.callback), (0.08, self.stream), (0.06, self.pages)):
            if roll < share:
                return build()
            roll -= share
        return self.oddity()


def cases(seed: int, count: int, api: str, secret: str) -> List[Case]:
    maker = CaseMaker(random.Random(seed), api, secret)
    return [maker.make() for _ in range(count)]


# -- the raw client ------------------------------------------------------------


def send(port: int, case: Case, timeout: float) -> Outcome:
    """Send the bytes as built, read the answer's head (and body, unless a stream)."""
    started = time.monotonic()
    deadline = started + timeout
    data = case.request
    received = b""
    sent = 0
    half_closed = False

    def outcome(status: Optional[int], closed: bool = False, timed_out: bool = False, body: bytes = b"") -> Outcome:
        return Outcome(case, status, closed, timed_out, time.monotonic() - started, body)

    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        # Not even accepted in time: as much a hang as an unanswered request.
        return outcome(None, timed_out=True)
    with sock:
        sock.setblocking(False)
        while time.monotonic() < deadline:
            writing = [sock] if sent < len(data) else []
            if not writing and case.half_close and not half_closed:
                sock.shutdown(socket.SHUT_WR)
                half_closed = True
            readable, writable, _ = select.select([sock], writing, [], 0.05)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return outcome(_status(received), closed=_status(received) is None, body=_body(received))
                received += chunk
                status = _status(received)
                if status is not None and 100 <= status < 200:
                    # An interim answer (100 Continue): the real one follows.
                    received = received.partition(b"\r\n\r\n")[2]
                    continue
                if status is not None and (case.stream or _complete(received)):
                    return outcome(status, body=_body(received))
            if writable:
                try:
                    sent += sock.send(data[sent : sent + 65536])
                except (BrokenPipeError, ConnectionResetError):
                    sent = len(data)
    return outcome(_status(received), timed_out=True)


def _status(received: bytes) -> Optional[int]:
    if b"\r\n\r\n" not in received:
        return None
    try:
        return int(received.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def _body(received: bytes) -> bytes:
    return received.partition(b"\r\n\r\n")[2]


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    # Chunked answers end with the last-chunk marker.
    return body.endswith(b"0\r\n\r\n")


def summarise(outcomes: Sequence[Outcome]) -> Dict[str, Any]:
    by_status: Dict[str, int] = {}
    for item in outcomes:
        key = "closed" if item.closed else "timeout" if item.timed_out else str(item.status)
        by_status[key] = by_status.get(key, 0) + 1
    return dict(sorted(by_status.items()))


def problem(item: Outcome) -> Optional[str]:
    """Why an outcome is wrong, or None."""
    case = item.case
    if item.timed_out:
        return "no answer in time"
    if item.closed:
        return None if case.may_close else "closed without an answer"
    assert item.status is not None
    if item.status >= 500:
        return f"answered {item.status}"
    if case.allowed is not None and item.status not in case.allowed:
        return f"answered {item.status}, expected one of {sorted(case.allowed)}"
    if case.envelope and 400 <= item.status < 500 and item.status not in (404, 405, 417):
        try:
            body = json.loads(item.body)
        except ValueError:
            return f"a {item.status} without a JSON body"
        if not (isinstance(body, dict) and body.get("status") == "failure" and body.get("reason")):
            return f"a {item.status} without the error envelope"
    return None
