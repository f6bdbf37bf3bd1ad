"""A local stand-in for an OpenAI-compatible chat-completions server (vLLM, hosted APIs), on 127.0.0.1.

It answers like a captioning model would, from what it is sent: an image's mean colour decides
its caption ("a red square ...", blurrier words for a darker image), a mostly blue image gets a
refusal, and a text-only request (the residual prompt) gets a short answer. It can fail the
first requests with a given status to exercise retries, checks the API key, and records how many
requests were in flight at once.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, ImageStat

API_KEY = "test-key-never-logged"
REFUSAL = "I'm sorry, but I can't help with identifying this image."


def describe(image: Image.Image) -> str:
    r, g, b = ImageStat.Stat(image.convert("RGB")).mean
    if b > r + 40 and b > g + 40:
        return REFUSAL
    colour = "red" if r >= max(g, b) else "green" if g >= b else "blue"
    shade = "bright" if max(r, g, b) > 150 else "dark"
    return f"Sure! Here is a description: A {shade} {colour} square with a small white lighthouse."


class ChatServer:
    def __init__(self, fail_first: int = 0, fail_status: int = 503, delay: float = 0.0) -> None:
        self.fail_first, self.fail_status, self.delay = fail_first, fail_status, delay
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                self.counted_out = False  # one handler serves each request of a kept-alive connection
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    n = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    if self.path != "/v1/chat/completions":
                        return self._send(404, {"error": "not found"})
                    if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                        return self._send(401, {"error": "bad key"})
                    if n <= server.fail_first:
                        return self._send(server.fail_status, {"error": "busy"}, {"Retry-After": "0"})
                    content = body["messages"][0]["content"]
                    images = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
                    if images:
                        data = base64.b64decode(images[0].split(",", 1)[1])
                        answer = describe(Image.open(io.BytesIO(data)))
                    else:
                        answer = "lighthouse"
                    self._send(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})
                finally:
                    self._done()

            def _done(self) -> None:
                """Out of flight before the answer goes out: once the client has it, it may send its
                next request, which another thread would otherwise count beside this one."""
                if not self.counted_out:
                    self.counted_out = True
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                self._done()
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
