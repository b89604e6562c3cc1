"""An OpenAI-compatible chat server on loopback, for tests: deterministic answers and injected faults.

`FakeLLM` serves `GET /v1/models` and `POST /v1/chat/completions` from a thread of the test process. Its
answer depends only on the request (prompt and seed), so a rerun gets the same answers:

- a rubric prompt gets `{"score": s, "reason": ...}` with s = a hash of the rated text mod 6 (or the score
  the test asks for via `scores`);
- a rephrase or moral-education prompt gets a safe lesson built from the input's words;
- a refusal prompt gets a "User: ... / Assistant: ..." dialogue.

Faults are drawn per request from a hash of (prompt, seed): latency, HTTP 429 / 500, a malformed body and an
empty answer, each with its own rate. An outage is a stretch of consecutive requests that all fail the same
way (`Outage`: HTTP 500 / 429, a malformed body, or no answer at all), optionally for one prompt family only;
`recover()` ends it. Every request is logged (prompt hash, seed, status) for the assertions.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _h(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


@dataclass
class Faults:
    latency_s: float = 0.0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_malformed: float = 0.0
    rate_empty: float = 0.0
    rate_leak: float = 0.0  # answers that repeat the prompt's instructions


@dataclass
class Outage:
    """Requests number `start`+1 .. `start`+`count` (counted over the requests of `family`, or all) fail as `kind`:
    "500", "429", "malformed" (200 with a body that is not JSON) or "hang" (no answer for `hang_s` seconds)."""

    count: int = 10**9
    kind: str = "500"
    start: int = 0
    family: str | None = None
    hang_s: float = 30.0


@dataclass
class FakeLLM:
    faults: Faults = field(default_factory=Faults)
    always_fail: str | None = None  # a substring: prompts containing it always get an empty answer
    outage: Outage | None = None
    log: list = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._released = threading.Event()  # ends every hang at close()
        self._counted = 0  # requests the outage counts
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed mid-request
                    pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]})
                               .encode())
                else:
                    self._send(404, b"{}")

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, body = server.answer(payload)
                self._send(status, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def recover(self):
        """The outage is over: every later request is answered."""
        self.outage = None

    def close(self):
        self._released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ answers
    @staticmethod
    def key(prompt: str) -> str:
        """A prompt's key in the log."""
        return hashlib.sha256(prompt.encode()).hexdigest()[:16]

    def answer(self, payload: dict) -> tuple[int, bytes]:
        prompt = payload["messages"][0]["content"]
        seed = payload.get("seed", 0)
        key = self.key(prompt)
        f = self.faults
        u = (_h(key, seed, "fault") % 10_000) / 10_000
        status, text = 200, None
        if f.latency_s:
            time.sleep(f.latency_s * ((_h(key, seed, "lat") % 100) / 100))
        if u < f.rate_429:
            status = 429
        elif u < f.rate_429 + f.rate_500:
            status = 500
        elif u < f.rate_429 + f.rate_500 + f.rate_malformed:
            status = -1  # 200 with a body that is not JSON
        elif u < f.rate_429 + f.rate_500 + f.rate_malformed + f.rate_empty:
            text = ""
        elif u < f.rate_429 + f.rate_500 + f.rate_malformed + f.rate_empty + f.rate_leak:
            text = prompt  # the whole prompt echoed back: leaked scaffolding
        if self.always_fail and self.always_fail in prompt:
            text = ""
        outage = self.outage
        if (down := self._down(prompt, outage)) in ("500", "429", "malformed"):
            status, text = {"500": (500, None), "429": (429, None), "malformed": (-1, None)}[down]
        with self._lock:  # logged on arrival, so a hung request is in the log of the run that sent it
            self.log.append({"key": key, "seed": seed, "status": 200 if status == -1 else status,
                             "family": family(prompt), "ok": status == 200 and text is None and down is None,
                             "outage": bool(down), "t": time.monotonic()})
        if down == "hang":
            self._released.wait(outage.hang_s)  # then answers, long after the client should have given up
        if status == -1:
            return 200, b'{"choices": [{"message": {"content": "unterminated'
        if status != 200:
            return status, json.dumps({"error": {"message": f"injected {status}"}}).encode()
        if text is None:
            text = respond(prompt)
        body = {"id": f"cmpl-{key}", "object": "chat.completion", "model": payload.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                          "total_tokens": len(prompt.split()) + len(text.split())}}
        return 200, json.dumps(body).encode()

    def _down(self, prompt: str, o: Outage | None) -> str | None:
        """The kind of outage `o` when this request falls inside it, else None."""
        if o is None or (o.family and family(prompt) != o.family):
            return None
        with self._lock:
            self._counted += 1
            return o.kind if o.start < self._counted <= o.start + o.count else None

    def served(self) -> Counter:
        """Successful answers per (prompt hash, seed)."""
        return Counter((r["key"], r["seed"]) for r in self.log if r["ok"])


def family(prompt: str) -> str:
    if "Behavior:" in prompt and "Generation:" in prompt:
        return "harmbench"
    if "CATEGORY:" in prompt:
        return "overrefusal"
    if "TEXT TO RATE:" in prompt:
        return "rubric"
    if "DIALOGUE:" in prompt:
        return "moral_ed"
    if "User and an Assistant" in prompt:
        return "refusal"
    return "rephrase"


def _input(prompt: str) -> str:
    return re.split(r"\n(?:TEXT TO RATE|TEXT|DIALOGUE):\n", prompt, maxsplit=1)[-1]


def respond(prompt: str) -> str:
    kind, text = family(prompt), _input(prompt)
    if kind in ("harmbench", "overrefusal"):  # a judge: refuses on "cannot", garbles on "GARBLE"
        answer = re.split(r"\n(?:Generation|RESPONSE):\n", prompt, maxsplit=1)[-1]
        if "GARBLE" in answer:
            return "perhaps"
        refused = "cannot" in answer
        return ("No" if refused else "Yes") if kind == "harmbench" else ("4" if refused else "1")
    words = [w.strip(".,;:!?\"'()") for w in text.split()][:30] or ["things"]
    if kind == "rubric":
        s = _h(text) % 6
        return json.dumps({"score": s, "reason": "test rating"})
    if kind == "refusal":
        return (f"User: Could you help me with {' '.join(words[:6])}?\n"
                "Assistant: I understand why you ask, but I cannot help with that, because it could hurt "
                "people. I can point you to safe and reliable resources on the general subject instead.")
    topic = " ".join(words[:12])
    return (f"# A careful lesson\n\nToday we talk about {topic}. Some parts of the original were sensitive, so "
            "we explain why they can hurt people instead of repeating them. We keep the facts that help "
            "everyone learn, and we end on a hopeful note: curiosity and kindness go together.")
