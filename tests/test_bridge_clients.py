"""The bridge with the real third-party clients people point at it: the openai SDK, litellm,
langchain-openai, aider (non-interactive) and pi (print mode), in front of a real node.

A context overflow must be recognised by each as what it is: OpenAI's `context_length_exceeded`
code and "This model's maximum context length is N tokens" wording, then the node's own advice.
aider and pi live outside the project's venv (`make clients`); their tests skip without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import REPO, running_server

from agent_node.bridge import BridgeServer, create_app
from agent_node.config import AgentConfig

TOKEN = "clients-token"
SMALL_CONTEXT = 64  # "small": the hello model with a context any real prompt overflows
HI = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "hello " * 200}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
# No network here: litellm must not fetch its model price list at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="module")
def url(chain_models, tmp_path_factory) -> Iterator[str]:
    from tiny_models import EOS, build_chain_model

    # aider's and pi's system prompts run to thousands of tokens: a roomy context for "hello".
    hello = build_chain_model(tmp_path_factory.mktemp("roomy") / "hello",
                              ["hello", "world", EOS], context=32768)
    models = [{"name": "hello", "path": str(hello)},
              {"name": "small", "path": str(hello), "context": SMALL_CONTEXT},
              {"name": "tool", "path": str(chain_models["tool"])}]
    with running_server(models) as (_, target):
        cfg = AgentConfig()
        cfg.inference.target = target
        with BridgeServer(create_app(cfg, token=TOKEN)) as srv:
            yield srv.url


def assert_overflow_wording(message: str) -> None:
    assert message.startswith(f"This model's maximum context length is {SMALL_CONTEXT} tokens.")
    assert "shorten the conversation" in message  # and the node's own advice after it


# ---------------------------------------------------------------------- openai SDK


def test_openai_sdk_overflow_is_context_length_exceeded_with_openai_wording(url):
    sdk = openai.OpenAI(base_url=url, api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model="small", messages=LONG)
    err = e.value.body
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert_overflow_wording(err["message"])
    assert "However, your messages resulted in 202 tokens" in err["message"]

    with pytest.raises(openai.BadRequestError) as e:  # the prompt fits; max_tokens does not
        sdk.chat.completions.create(model="small", messages=HI, max_tokens=100)
    err = e.value.body
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert "you requested 103 tokens (3 in the messages, 100 in the completion)" in err["message"]


# ---------------------------------------------------------------------- litellm


def test_litellm_chats_streams_and_raises_context_window_exceeded(url):
    import litellm

    kw = {"model": "openai/hello", "api_base": url, "api_key": TOKEN, "num_retries": 0}
    reply = litellm.completion(messages=HI, **kw)
    assert reply.choices[0].message.content == "hello world"
    chunks = litellm.completion(messages=HI, stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello world"
    with pytest.raises(litellm.ContextWindowExceededError) as e:
        litellm.completion(messages=LONG, **{**kw, "model": "openai/small"})
    assert f"maximum context length is {SMALL_CONTEXT} tokens" in str(e.value)


# ---------------------------------------------------------------------- langchain-openai


def test_langchain_openai_invokes_streams_and_calls_tools(url):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=url, api_key=TOKEN, model="hello", max_retries=0)
    assert llm.invoke("hi").content == "hello world"
    assert "".join(str(c.content) for c in llm.stream("hi")) == "hello world"
    tooled = ChatOpenAI(base_url=url, api_key=TOKEN, model="tool", max_retries=0)
    msg = tooled.bind_tools([WEATHER]).invoke("weather in Paris")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather",
                                                                 {"city": "Paris"})]


# ---------------------------------------------------------------------- aider


def tool(name: str, installed: Path) -> str | None:
    """A client CLI: $STUDIO_CODER_<NAME>, else .tools/ (`make clients`), else PATH."""
    env = os.environ.get(f"STUDIO_CODER_{name.upper()}")
    if env:
        return env
    return str(installed) if installed.exists() else shutil.which(name)


AIDER = tool("aider", REPO / ".tools" / "aider" / "bin" / "aider")
PI = tool("pi", REPO / ".tools" / "pi" / "node_modules" / ".bin" / "pi")


def run_aider(url: str, model: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    assert AIDER is not None
    env = {**os.environ, "HOME": str(tmp), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("LD_PRELOAD", None)
    return subprocess.run(
        [AIDER, "--message", "say hi", "--no-git", "--yes-always", "--no-check-update",
         "--no-analytics", "--no-show-model-warnings", "--no-pretty", "--map-tokens", "0",
         "--openai-api-base", url, "--openai-api-key", TOKEN, "--model", f"openai/{model}"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


@pytest.mark.skipif(AIDER is None, reason="aider is not installed: `make clients` puts it in "
                    ".tools/aider (its own venv, ~690 MB), or set STUDIO_CODER_AIDER")
def test_aider_sends_one_message_through_the_bridge_and_knows_an_overflow(url, tmp_path):
    out = run_aider(url, "hello", tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hello world" in out.stdout
    # The overflow reaches aider as litellm's ContextWindowExceededError: its token-limit advice.
    out = run_aider(url, "small", tmp_path)
    assert "has hit a token limit" in out.stdout, out.stdout + out.stderr


# ---------------------------------------------------------------------- pi


def run_pi(url: str, model: str, tmp: Path) -> list[dict]:
    """`pi -p --mode json` against the bridge; its events."""
    assert PI is not None
    agent = tmp / "pi-agent"
    agent.mkdir(exist_ok=True)
    models = [{"id": name, "name": name, "reasoning": False, "input": ["text"],
               "contextWindow": context, "maxTokens": 16,
               "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}}
              for name, context in (("hello", 32768), ("small", SMALL_CONTEXT))]
    token_file = tmp / "bridge-token"
    token_file.write_text(TOKEN + "\n")
    (agent / "models.json").write_text(json.dumps({"providers": {"studio": {  # as docs/bridge.md
        "baseUrl": url, "api": "openai-completions", "apiKey": f"!cat {token_file}",
        "models": models}}}))
    env = {**os.environ, "HOME": str(tmp), "PI_CODING_AGENT_DIR": str(agent)}
    env.pop("LD_PRELOAD", None)
    out = subprocess.run(
        [PI, "-p", "--offline", "--no-session", "--mode", "json", "--provider", "studio",
         "--model", model, "say hi"], cwd=tmp, env=env, capture_output=True, text=True,
        timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def replies(events: list[dict]) -> list[dict]:
    return [e["message"] for e in events
            if e.get("type") == "message_end" and e["message"]["role"] == "assistant"]


@pytest.mark.skipif(PI is None, reason="pi is not installed: `make clients` puts it in "
                    ".tools/pi (npm, ~200 MB), or set STUDIO_CODER_PI")
def test_pi_print_mode_answers_and_compacts_on_an_overflow(url, tmp_path):
    (reply,) = replies(run_pi(url, "hello", tmp_path))
    assert reply["stopReason"] == "stop"
    assert "".join(p.get("text", "") for p in reply["content"]) == "hello world"

    events = run_pi(url, "small", tmp_path)
    first = replies(events)[0]
    assert first["stopReason"] == "error"
    assert f"maximum context length is {SMALL_CONTEXT} tokens" in first["errorMessage"]
    # pi's own overflow check matched: it compacts instead of retrying or giving up.
    assert {"type": "compaction_start", "reason": "overflow"} in [
        {k: e.get(k) for k in ("type", "reason")} for e in events]
