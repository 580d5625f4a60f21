"""`darknetpy serve`, started for real (`python -m darknetpy serve` on a free port) and used by real
clients: the official `openai` package, raw HTTP (httpx) for the errors, threads for concurrency,
headless Chromium (selenium) for the playground.

The reference for every text is `darknetpy generate` (a subprocess) or Network.generate, which
runs the same request alone on its own one-request stepper; the server runs it batched beside
others, so equality checks the batch invariance and the continuous batching, not a copy of them.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import darknetpy
from conftest import peaked_model, run_cli

CFG = """[net]
inputs=256
batch=1
time_steps=1

[lstm]
output=32

[connected]
output=256
activation=linear

[softmax]
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(cfg, weights, net) of a small random LSTM byte model with peaked distributions."""
    cfg, weights = peaked_model(tmp_path_factory.mktemp("serve"), CFG, "tiny", seed=11, wide="layer1", scale=0.9)
    return cfg, weights, darknetpy.load_network(cfg, weights, batch=1, time_steps=1)


class Server:
    """`darknetpy serve` in a subprocess, from its `serving on` line to stop()."""

    def __init__(self, cfg, weights, *args, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "darknetpy", "serve", str(cfg), str(weights),
                                      "--port", "0", *map(str, args)], stderr=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env={**os.environ, **(env or {})})
        self.lines, self.client = [], httpx.Client()
        for line in self.proc.stderr:
            self.lines.append(line.decode())
            if line.startswith(b"serving on "):
                self.url = line.decode().split()[-1]
                break
        else:
            raise AssertionError("the server exited before serving: " + "".join(self.lines))
        self.reader = threading.Thread(target=lambda: self.lines.extend(l.decode() for l in self.proc.stderr))
        self.reader.start()

    def health(self):
        return self.client.get(self.url + "/health").json()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait()
        self.reader.join()
        self.client.close()
        return code


LONG = 1_000_000  # symbols: a request that runs until its client leaves (a tiny model makes 4000 in 0.1 s)


@pytest.fixture(scope="module")
def server(model):
    cfg, weights, _ = model
    s = Server(cfg, weights, "--max-streams", 32, "--max-samples", 4, "--max-prompt", 64, "--max-length", LONG)
    yield s
    assert s.stop() == -signal.SIGTERM
    log = "".join(s.lines)
    assert "Traceback" not in log and "Exception" not in log, log


def completion_bytes(net, prompt, length, temperature=1.0, n=1, seed=None, stop=None):
    """What /v1/completions's choices hold: each sample's bytes after the echo, without the final
    newline (nor the stop text), from Network.generate alone."""
    texts = net.generate(seed=prompt, length=length, temperature=temperature, samples=n, srand=seed, stop=stop)
    texts = [texts] if n == 1 else texts
    out = [t[len(prompt.encode()):-1] for t in texts]
    return [t[:-len(stop)] if stop and t.endswith(stop.encode()) else t for t in out]


# ---- the OpenAI client -------------------------------------------------------------------------------

def test_openai_client_completions_streamed_and_not(server, model):
    from openai import OpenAI
    net = model[2]
    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["tiny"]
    done = client.completions.create(model="tiny", prompt="Hello", max_tokens=12, n=2, seed=7)
    want = completion_bytes(net, "Hello", 12, n=2, seed=7)
    assert [c.text for c in done.choices] == [w.decode("utf-8", "replace") for w in want]
    assert [c.finish_reason for c in done.choices] == ["length", "length"]
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (5, 24, 29)
    chunks = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=12, n=2, seed=7, stream=True,
                                            stream_options={"include_usage": True}))
    for i in range(2):
        assert "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) \
            == done.choices[i].text
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason == "length") == 2
    assert chunks[-1].usage.completion_tokens == 24


def test_openai_client_stop_ends_a_choice_and_is_left_out(server, model):
    from openai import OpenAI
    net = model[2]
    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    full = completion_bytes(net, "ab", 60, seed=3)[0]
    stop = next(chr(b) for b in full[5:] if 32 < b < 127)  # an ASCII byte the text reaches past its start
    want = full[:full.index(stop.encode())]
    for stream in (False, True):
        got = client.completions.create(model="tiny", prompt="ab", max_tokens=60, seed=3, stop=[stop, "\x01\x02"],
                                        stream=stream)
        chunks = list(got) if stream else [got]
        assert "".join(c.choices[0].text for c in chunks) == want.decode("utf-8", "replace")
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_thirty_two_concurrent_seeded_requests_get_what_they_get_alone(server, model):
    """32 requests at once, each its own options, byte for byte `darknetpy generate` run alone."""
    cfg, weights, net = model
    asks = [dict(seed="To be"[:1 + i % 5], length=20 + 7 * (i % 6), temperature=0.5 + 0.1 * (i % 9), srand=100 + i)
            for i in range(32)]
    for i in range(0, 32, 4):
        asks[i]["top_k"] = 3 + i % 5
    asks[5].update(samples=3, top_p=0.8)
    asks[6].update(beam=3)
    asks[7].update(greedy=True)
    asks[9].update(stop="e")

    def post(ask):
        r = httpx.post(server.url + "/v1/generate", json=ask, timeout=None)
        assert r.status_code == 200, r.text
        return r.json()["texts"]
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(post, asks))
    for ask, texts in zip(asks, got):
        alone = net.generate(**ask)
        assert texts == [t.decode("utf-8", "replace") for t in (alone if ask.get("samples", 1) > 1 else [alone])]
    for i in (0, 6):  # and the command itself
        ask = asks[i]
        cli = run_cli("generate", cfg, weights, "--seed", ask["seed"], "--len", ask["length"], "--temp",
                      ask["temperature"], "--srand", ask["srand"], *(["--top-k", ask["top_k"]] if "top_k" in ask else []),
                      *(["--beam", ask["beam"]] if "beam" in ask else []))
        assert cli.returncode == 0 and cli.stdout.decode("utf-8", "replace") == got[i][0]


def test_generate_streams_the_pieces_of_the_same_text(server, model):
    ask = dict(seed="xy", length=40, temperature=0.9, srand=5)
    whole = httpx.post(server.url + "/v1/generate", json=ask).json()["texts"][0]
    with httpx.stream("POST", server.url + "/v1/generate", json={**ask, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and len(lines) > 2
    assert "".join(json.loads(line[6:])["text"] for line in lines[:-1]) == whole


# ---- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", b'{"prompt": "a",', 400, None),
    ("/v1/completions", {"prompt": "a", "max_tokens": "ten"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": "a", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "a", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "a", "n": 5}, 400, "n"),
    ("/v1/completions", {"prompt": "a", "max_tokens": LONG + 1}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "a" * 65}, 413, "prompt"),
    ("/v1/completions", {"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, 400, "stop"),
    ("/v1/completions", {"prompt": "a", "logprobs": 3}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "a", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"prompt": "a", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ("/v1/completions", {"prompt": "a", "logit_bias": {"5": 10}}, 400, "logit_bias"),
    ("/v1/generate", {"seed": "a", "beam": 2, "samples": 2}, 400, "beam"),
    ("/v1/generate", {"seed": "a", "top_k": -1}, 400, "top_k"),
    ("/v1/generate", {"seed": "a", "length": 3, "stop": "abcdefghijklmnop"}, 400, "stop"),
    ("/v1/generate", {"seed": "a", "greedy": "yes"}, 400, "greedy"),
    ("/v1/completions", {"prompt": "a", "model": "gpt-4"}, 404, "model"),
    ("/v1/nothing", {}, 404, None),
])
def test_bad_requests_get_one_json_error_naming_the_field(server, path, body, status, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


@pytest.mark.parametrize("args, message", [
    (["--len", "-1"], "--len -1: give a number of symbols >= 0"),
    (["--temp", "0"], "--temp 0: give a temperature > 0"),
    (["--top-k", "-3"], "--top-k -3: give K >= 1, or 0 for every symbol"),
    (["--top-p", "1.5"], "--top-p 1.5: give P in (0, 1] (1 keeps every symbol)"),
    (["--beam", "-1"], "--beam -1: give a width K >= 1, or 0 for no search"),
    (["--samples", "0"], "--samples 0: give N >= 1"),
    (["--beam", "2", "--samples", "2"], "--beam finds one continuation: leave out --samples 2"),
    (["--beam", "2", "--top-k", "5"], "--beam searches, it does not sample: leave out --top-k"),
    (["--beam", "2", "--top-k", "5", "--top-p", "0.5"],
     "--beam searches, it does not sample: leave out --top-k and --top-p"),
    (["--stop", ""], "--stop: give a non-empty text"),
    (["--len", "3", "--stop", "abcdefghijklmnop"],
     "--stop: the text is 16 bytes, but --len 3 symbols print at most 3: raise --len or shorten the stop text"),
])
def test_the_command_the_library_and_the_server_refuse_the_same_options_with_the_same_line(server, model, args,
                                                                                          message):
    """options.GenerationOptions is the one check: `darknetpy generate` prints its line, Network.generate
    raises it, /v1/generate answers it as a 400 whose param is the option the line begins with."""
    cfg, weights, net = model
    flags = {"--len": "length", "--temp": "temperature"}
    field = lambda flag: flags.get(flag, flag[2:].replace("-", "_"))  # noqa: E731
    asked = {field(flag): value for flag, value in zip(args[::2], args[1::2])}
    asked = {k: v if k == "stop" else float(v) if "." in v or k == "temperature" else int(v) for k, v in asked.items()}
    r = run_cli("generate", cfg, weights, *args)
    assert (r.returncode, r.stderr.decode(), r.stdout) == (2, f"darknetpy: {message}\n", b"")
    with pytest.raises(darknetpy.errors.DarknetpyError) as e:
        net.generate(**asked)
    assert str(e.value) == message
    r = httpx.post(server.url + "/v1/generate", json=asked)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"message": message, "type": "invalid_request_error",
                                 "param": field(message.split()[0].rstrip(":"))}


# ---- faults: disconnects, byte models, keys, a full queue, SIGTERM -------------------------------------

def test_a_client_that_goes_away_frees_its_stream(server):
    with httpx.stream("POST", server.url + "/v1/generate", json={"seed": "a", "length": LONG, "stream": True}) as r:
        lines = r.iter_lines()
        next(lines)
        assert server.health()["active_streams"] == 1
    for _ in range(500):  # a million symbols take far longer than the few steps the server needs to notice
        if server.health()["active_streams"] == 0:
            break
        time.sleep(0.01)
    assert server.health() == {"status": "ok", "active_streams": 0, "queued": 0}


def test_a_byte_model_streams_whole_characters_and_u_fffd(tmp_path):
    """A byte model that writes 0xFF (not UTF-8) after 'a', then é (0xC3 0xA9) over and over, one
    byte a step: the stream holds 0xC3 until its 0xA9 comes, and 0xFF becomes U+FFFD."""
    cfg = tmp_path / "bytes.cfg"
    cfg.write_text("[net]\ninputs=256\nbatch=1\ntime_steps=1\n\n[connected]\noutput=256\nactivation=linear\n\n[softmax]\n")
    net = darknetpy.load_network(cfg)
    W, b = net.params()["layer0.weights"], net.params()["layer0.biases"]  # (outputs, inputs)
    W[...], b[...] = 0, 0
    W[0xFF, ord("a")] = W[0xC3, 0xFF] = W[0xA9, 0xC3] = W[0xC3, 0xA9] = 60
    net.save_weights(tmp_path / "bytes.weights")
    s = Server(cfg, tmp_path / "bytes.weights")
    try:
        with httpx.stream("POST", s.url + "/v1/completions", json={"prompt": "a", "max_tokens": 9, "stream": True}) as r:
            pieces = [json.loads(line[6:])["choices"][0]["text"] for line in r.iter_lines()
                      if line.startswith("data: {")]
    finally:
        assert s.stop() == -signal.SIGTERM
    assert "".join(pieces) == "\ufffd" + "é" * 4  # a split é would be two more U+FFFD


def test_an_api_key_guards_every_endpoint_but_health(model):
    from openai import AuthenticationError, OpenAI
    cfg, weights, _ = model
    s = Server(cfg, weights, env={"DARKNETPY_API_KEY": "sesame"})
    try:
        assert httpx.get(s.url + "/health").status_code == 200
        for path in ("/v1/models", "/"):
            assert httpx.get(s.url + path).status_code == 401
            assert httpx.get(s.url + path, headers={"Authorization": "Bearer wrong"}).json()["error"]["type"] \
                == "authentication_error"
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "a"}).status_code == 401
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer sesame"}).status_code == 200
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=s.url + "/v1", api_key="wrong").completions.create(model="tiny", prompt="a")
        ok = OpenAI(base_url=s.url + "/v1", api_key="sesame").completions.create(model="tiny", prompt="a", max_tokens=3)
        assert ok.usage.completion_tokens == 3
    finally:
        assert s.stop() == -signal.SIGTERM


def test_past_the_queue_a_request_gets_503_with_retry_after(model):
    cfg, weights, _ = model
    s = Server(cfg, weights, "--max-streams", 1, "--max-queue", 1, "--max-length", LONG)
    long = {"seed": "a", "length": LONG, "stream": True}
    try:
        with httpx.stream("POST", s.url + "/v1/generate", json=long) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            waiting = threading.Thread(target=lambda: httpx.post(s.url + "/v1/generate", json={"seed": "b", "length": 3}))
            waiting.start()
            for _ in range(1000):
                if s.health()["queued"]:
                    break
                time.sleep(0.01)
            assert s.health() == {"status": "ok", "active_streams": 1, "queued": 1}
            r = httpx.post(s.url + "/v1/generate", json={"seed": "c", "length": 3})
            assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "server_busy"
        waiting.join()
    finally:
        assert s.stop() == -signal.SIGTERM


def test_sigterm_lets_running_requests_finish_then_exits(model):
    cfg, weights, net = model
    s = Server(cfg, weights)
    ask = {"seed": "q", "length": 300, "temperature": 0.9, "srand": 9, "stream": True}
    with httpx.stream("POST", s.url + "/v1/generate", json=ask) as r:
        lines = r.iter_lines()
        first = next(lines)
        s.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    text = "".join(json.loads(line[6:])["text"] for line in [first] + rest[:-1])
    assert text == net.generate(seed="q", length=300, temperature=0.9, srand=9).decode("utf-8", "replace")
    assert s.proc.wait() == -signal.SIGTERM  # after a graceful stop uvicorn dies of the signal it got (143 in a shell)
    s.reader.join()
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/health")


def test_serve_without_the_extra_says_what_to_install(model, tmp_path):
    """A Python where fastapi cannot be imported: one line naming the extra, exit 2."""
    cfg, weights, _ = model
    (tmp_path / "fastapi.py").write_text("raise ImportError('no fastapi here', name='fastapi')\n")
    r = subprocess.run([sys.executable, "-m", "darknetpy", "serve", str(cfg), str(weights)], capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2 and r.stderr.decode().strip().count("\n") == 0
    assert 'pip install "darknetpy[serve]"' in r.stderr.decode()


# ---- the playground in a real browser ------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Debian's chromium and chromium-driver are not "
                    "installed (.ci/run installs them)")
def test_the_playground_streams_text_in_headless_chromium(server, model, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        browser.get(server.url + "/")
        starts = {key: browser.find_element("id", key).get_attribute("value") for key in ("temperature", "top_p")}
        for key, value in (("seed", "To be"), ("temperature", "0.8"), ("top_p", "1"), ("length", "300"),
                           ("srand", "42")):
            field = browser.find_element("id", key)
            field.clear()
            field.send_keys(value)
        browser.find_element("id", "generate").click()
        WebDriverWait(browser, 600).until(lambda b: b.find_element("id", "status").text == "done")
        shown = browser.execute_script("return document.getElementById('output').textContent")
        browser.save_screenshot(str(tmp_path / "playground.png"))
    finally:
        browser.quit()
    want = model[2].generate(seed="To be", length=300, temperature=0.8, srand=42).decode("utf-8", "replace")
    assert shown == want
    from darknetpy.options import GenerationOptions  # the form starts at generate's defaults
    assert starts == {"temperature": str(GenerationOptions.temperature), "top_p": str(GenerationOptions.top_p)}
