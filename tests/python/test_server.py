#!/usr/bin/env python3
"""`dsv3 serve` (I2) on loopback, driven by the official OpenAI Python client and curl.

- completions and chat, plain and streamed (the streamed text equals the plain greedy text),
  /v1/models, /health, /metrics;
- 400 (malformed JSON, wrong types, max_tokens < 1, a prompt longer than the context), 401
  without the API key, 404 for another model, 413 for an oversized body, 429 when the queue is
  full -- and the server keeps serving afterwards;
- a client that disconnects (streaming, and non-streaming via curl --max-time) frees its
  sequence at once;
- SIGTERM: new requests are refused, the one in flight finishes completely, the process exits 0.

The models are trained here for one step on the built-in corpus (byte-level ids): `tiny` for the
server under load (so that a 1000-token request runs for seconds and the queue and disconnect
checks do not race the generation), `debug` for the SIGTERM check.
Runs under /usr/bin/python3 (ctest); the openai package comes from scripts/install_deps.sh. A
missing client is a failure, not a skip.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

try:
    import openai
except ImportError:
    print("FAIL: the openai Python client is missing for %s; run scripts/install_deps.sh" % sys.executable)
    sys.exit(1)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DSV3 = os.environ.get("DSV3_BIN", os.path.join(REPO, "build", "dsv3"))
KEY = "test-key-123"


def train_model(out, preset="debug"):
    subprocess.run([DSV3, "train", "--preset", preset, "--batch", "1", "--seq_len", "32", "--steps", "1",
                    "--eval_every", "0", "--sample_tokens", "0", "--peak_gflops", "100", "--out", out],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Server:
    def __init__(self, model, *args):
        self.proc = subprocess.Popen([DSV3, "serve", "--model", model, "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log = []
        deadline = time.time() + 60
        self.port = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("dsv3 serve did not start:\n" + "".join(self.log) + self.proc.stderr.read())
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.port

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def curl(self, path, data=None, key=KEY, extra=()):
        cmd = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", self.url + path]
        if key:
            cmd += ["-H", "Authorization: Bearer " + key]
        if data is not None:
            cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        cmd += list(extra)
        r = subprocess.run(cmd, input=data if isinstance(data, (bytes, type(None))) else data.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        body, _, code = r.stdout.decode("utf-8", "replace").rpartition("\n")
        return int(code or 0), body

    def metric(self, name):
        code, text = self.curl("/metrics")
        assert code == 200, text
        m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
        return float(m.group(1)) if m else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_until(pred, seconds=10.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="dsv3_serve_")
        cls.model = os.path.join(cls.tmp.name, "run")
        train_model(cls.model, "tiny")
        cls.srv = Server(cls.model, "--api_key", KEY, "--max_running", "2", "--max_queue", "1",
                         "--context", "1024", "--kv_cache_mb", "16", "--max_body_kb", "64",
                         "--max_tokens_limit", "1000")

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.tmp.cleanup()

    def test_completion_and_streaming(self):
        c = self.srv.client()
        r = c.completions.create(model="dsv3", prompt="Once upon a time", max_tokens=12, temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 12)
        self.assertEqual(r.usage.prompt_tokens, len("Once upon a time"))  # byte-level ids
        self.assertIsInstance(r.choices[0].text, str)
        chunks = list(c.completions.create(model="dsv3", prompt="Once upon a time", max_tokens=12,
                                           temperature=0, stream=True,
                                           stream_options={"include_usage": True}))
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        self.assertEqual(text, r.choices[0].text)
        self.assertEqual([ch.choices[0].finish_reason for ch in chunks if ch.choices][-1], "length")
        self.assertEqual(chunks[-1].usage.completion_tokens, 12)
        # a prompt as token ids, and a stop string cuts the text before it
        r2 = c.completions.create(model="dsv3", prompt=[[79, 110, 99, 101]], max_tokens=5, temperature=0)
        self.assertEqual(r2.usage.prompt_tokens, 4)
        if len(r.choices[0].text) > 3:
            stop = r.choices[0].text[2:4]
            r3 = c.completions.create(model="dsv3", prompt="Once upon a time", max_tokens=12,
                                      temperature=0, stop=[stop])
            self.assertEqual(r3.choices[0].finish_reason, "stop")
            self.assertEqual(r3.choices[0].text, r.choices[0].text[:r.choices[0].text.find(stop)])
        # seeded sampling is reproducible
        a = c.completions.create(model="dsv3", prompt="Hi", max_tokens=10, temperature=0.9, seed=5, top_p=0.9)
        b = c.completions.create(model="dsv3", prompt="Hi", max_tokens=10, temperature=0.9, seed=5, top_p=0.9)
        self.assertEqual(a.choices[0].text, b.choices[0].text)

    def test_chat(self):
        c = self.srv.client()
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell a story."}]
        r = c.chat.completions.create(model="dsv3", messages=msgs, max_tokens=10, temperature=0)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertIn(r.choices[0].finish_reason, ("length", "stop"))
        # the plain template: "Be brief.\n\nUser: Tell a story.\n\nAssistant:"
        self.assertEqual(r.usage.prompt_tokens, len("Be brief.\n\nUser: Tell a story.\n\nAssistant:"))
        chunks = list(c.chat.completions.create(model="dsv3", messages=msgs, max_tokens=10, temperature=0,
                                                stream=True))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
        self.assertEqual(text, r.choices[0].message.content)

    def test_models_health_metrics(self):
        models = self.srv.client().models.list()
        self.assertEqual([m.id for m in models.data], ["dsv3"])
        self.assertEqual(self.srv.curl("/health", key=None)[0], 200)
        code, text = self.srv.curl("/metrics", key=None)
        self.assertEqual(code, 200)
        for name in ("dsv3_queue_length", "dsv3_running_sequences", "dsv3_generation_tokens_per_second",
                     'dsv3_request_latency_seconds{quantile="0.99"}', "dsv3_time_to_first_token_seconds_count",
                     "dsv3_kv_cache_pages_total"):
            self.assertIn(name, text)

    def test_errors(self):
        c = self.srv.client()
        for kwargs, param in [({"max_tokens": 0}, "max_tokens"), ({"temperature": "hot"}, "temperature"),
                              ({"max_tokens": 1001}, "max_tokens"), ({"top_p": 0}, "top_p"),
                              ({"prompt": [[1] * 1100]}, "prompt"), ({"n": 2}, "n"),
                              ({"max_tokens": 1000, "prompt": "x" * 300}, "max_tokens")]:
            args = {"model": "dsv3", "prompt": "Hello", "max_tokens": 4}
            args.update(kwargs)
            with self.assertRaises(openai.BadRequestError, msg=str(kwargs)) as e:
                c.completions.create(**args)
            self.assertEqual(e.exception.status_code, 400)
            self.assertEqual(e.exception.body["param"], param, str(kwargs))
            self.assertEqual(e.exception.body["type"], "invalid_request_error")
        with self.assertRaises(openai.BadRequestError):
            c.chat.completions.create(model="dsv3", messages=[{"role": "wizard", "content": "x"}])
        with self.assertRaises(openai.NotFoundError):
            c.completions.create(model="gpt-4", prompt="Hello", max_tokens=2)
        with self.assertRaises(openai.AuthenticationError):
            self.srv.client(key="wrong").completions.create(model="dsv3", prompt="Hello", max_tokens=2)
        code, body = self.srv.curl("/v1/completions", "{not json", key=None)
        self.assertEqual(code, 401, body)
        code, body = self.srv.curl("/v1/completions", "{not json")
        self.assertEqual(code, 400, body)
        self.assertIn("not valid JSON", json.loads(body)["error"]["message"])
        # a wrong JSON type deep in a message is a 400 naming the field, never a 500
        code, body = self.srv.curl("/v1/chat/completions", json.dumps(
            {"messages": [{"role": "user", "content": [{"type": 5, "text": "x"}]}]}))
        self.assertEqual(code, 400, body)
        self.assertEqual(json.loads(body)["error"]["param"], "messages")
        code, body = self.srv.curl("/v1/completions", json.dumps({"prompt": "x" * 100000}))
        self.assertEqual(code, 413, body)
        code, body = self.srv.curl("/v1/nothing", "{}")
        self.assertEqual(code, 404, body)
        self.assertIn("error", json.loads(body))
        # and it still serves
        r = c.completions.create(model="dsv3", prompt="Hello", max_tokens=3, temperature=0)
        self.assertEqual(r.usage.completion_tokens, 3)

    def test_queue_full_and_disconnect(self):
        # 2 running + 1 queued: long streams fill the server, the next request gets 429
        c = self.srv.client()
        streams = []
        for i in range(3):
            s = c.completions.create(model="dsv3", prompt="Once", max_tokens=1000, temperature=0, stream=True)
            if i < 2:
                next(iter(s))  # running before the next one is sent
            streams.append(s)
        self.assertTrue(wait_until(lambda: self.srv.metric("dsv3_queue_length") == 1))
        with self.assertRaises(openai.RateLimitError) as e:
            c.completions.create(model="dsv3", prompt="Once", max_tokens=5)
        self.assertEqual(e.exception.status_code, 429)
        self.assertIn("capacity", e.exception.body["message"])
        # closing the streams frees their sequences: nothing keeps running
        before = self.srv.metric("dsv3_generation_tokens_total")
        for s in streams:
            s.close()
        self.assertTrue(wait_until(lambda: self.srv.metric("dsv3_running_sequences") == 0
                                   and self.srv.metric("dsv3_queue_length") == 0),
                        "sequences of disconnected clients are still running")
        self.assertLess(self.srv.metric("dsv3_generation_tokens_total") - before, 3 * 1000,
                        "the cancelled streams ran to their end")
        # a non-streaming client that gives up (curl --max-time) frees its sequence too
        t0 = self.srv.metric("dsv3_generation_tokens_total")
        self.srv.curl("/v1/completions", json.dumps({"prompt": "Once", "max_tokens": 1000, "temperature": 0}),
                      extra=["--max-time", "0.5"])
        self.assertTrue(wait_until(lambda: self.srv.metric("dsv3_running_sequences") == 0, 10))
        self.assertLess(self.srv.metric("dsv3_generation_tokens_total") - t0, 1000)
        r = c.completions.create(model="dsv3", prompt="Hello", max_tokens=3, temperature=0)
        self.assertEqual(r.usage.completion_tokens, 3)


class SigtermTest(unittest.TestCase):
    def test_sigterm_drains(self):
        with tempfile.TemporaryDirectory(prefix="dsv3_serve_term_") as tmp:
            model = os.path.join(tmp, "run")
            train_model(model)
            srv = Server(model, "--context", "512")
            self.addCleanup(srv.stop)
            c = srv.client()
            stream = c.completions.create(model="dsv3", prompt="Once", max_tokens=300, temperature=0,
                                          stream=True)
            first = next(iter(stream))
            srv.proc.send_signal(signal.SIGTERM)
            # refused while draining (503) or no longer listening
            self.assertTrue(wait_until(lambda: srv.curl("/health", key=None)[0] in (0, 503), 10))
            rest = list(stream)
            finishes = [ch.choices[0].finish_reason for ch in rest if ch.choices]
            self.assertEqual(finishes[-1], "length", "the in-flight request did not finish")
            text = first.choices[0].text + "".join(ch.choices[0].text for ch in rest)
            self.assertGreater(len(text), 0)
            self.assertEqual(srv.proc.wait(30), 0, "".join(srv.log))


if __name__ == "__main__":
    unittest.main(verbosity=2)
