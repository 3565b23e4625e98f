"""Reference outputs for Qwen2.5-Coder-0.5B from an implementation nobody on the project wrote.

Loads the same GGUF that `inference-node install qwen2.5-coder-0.5b` checks and imports, with
Hugging Face transformers on torch (its GGUF loader dequantizes every tensor to float32 and
builds the tokenizer and chat template from the file's metadata), and writes what the tests
compare our served model against, so CI needs no torch:

- greedy text (token ids too) for a few chat prompts, 32 new tokens each, after the chat
  template, with the prompt token count and each step's top-1 / top-2 logit margin;
- the tokenizer's ids for varied strings: code, unicode, whitespace runs, digits, specials.
  Qwen's own tokenizer composes Unicode (NFC) before splitting, and so does transformers'
  Qwen2Tokenizer when it loads a model folder, but its GGUF loader leaves that normalizer out;
  for a string that NFC changes, `nfc_ids` are the reference's ids of its NFC form.

`--tokenizer-only` rewrites just the tokenizer part of an existing fixture (seconds, not minutes).

Rerun it (torch stays out of the project's environment; 2.13.0 installs from local disk here):

    python3 -m venv /work/wt/refvenv
    /work/wt/refvenv/bin/pip install torch==2.13.0 transformers accelerate gguf sentencepiece
    .venv/bin/inference-node install qwen2.5-coder-0.5b      # puts the checked GGUF in the cache
    /work/wt/refvenv/bin/python scripts/qwen_reference.py \
        ~/.cache/studio-coder/gguf/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        tests/fixtures/qwen2.5-coder-0.5b-reference.json
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

MAX_NEW_TOKENS = 32
TOOL_MAX_NEW_TOKENS = 64

PROMPTS = [
    [{"role": "user", "content": "Write a Python function that checks whether a string is a "
                                 "palindrome."}],
    [{"role": "system", "content": "You are a terse senior engineer. Answer briefly."},
     {"role": "user", "content": "What does `git rebase -i HEAD~3` do?"}],
    [{"role": "user",
      "content": "Fix the bug:\n\n```python\ndef add(a, b):\n    return a - b\n```"}],
    [{"role": "user", "content": "Name three sorting algorithms."},
     {"role": "assistant", "content": "Quicksort, mergesort and heapsort."},
     {"role": "user", "content": "Which of them is stable? Explain in one paragraph."}],
]

TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the repository and return its text.",
    "parameters": {"type": "object", "properties": {
        "path": {"type": "string", "description": "path relative to the repository root"}},
        "required": ["path"]}}}]
TOOL_PROMPT = [{"role": "user", "content": "Open the file src/app.py and tell me what it does."}]

TOKENIZER_STRINGS = [
    "Hello, world!",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }",
    "    four spaces, then\ttab, then\t\t\ttabs",
    "trailing spaces   \n\n\nthree newlines",
    "\r\nwindows\r\nline endings\r\n",
    "1234567890 and 3.14159 and 1e-9 and 0xFF",
    "2024-06-01T12:34:56Z",
    "Grüße aus Köln — ñandú, façade, naïve",
    "東京は日本の首都です。",
    "Привет, мир!",
    "emoji 🙂👍🏽 and 🇫🇷",
    "e\u0301 (decomposed) vs \u00e9 (composed)",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a.py\"}}\n</tool_call>",
    "<|fim_prefix|>def f():\n    <|fim_suffix|>\n<|fim_middle|>",
    "import numpy as np\nx = np.arange(10).reshape(2, 5)\n",
    "SELECT * FROM users WHERE id = 42;",
    "   ",
    "a" * 40,
    "'s 't 're 've 'm 'll 'd don't I'LL",
    "https://example.com/path?q=1&r=two#frag",
    "x" + " " * 17 + "y",
    "",
]


def _margins(scores: list) -> list[float]:
    out = []
    for step in scores:
        top = step[0].float().topk(2)
        out.append(round(float(top.values[0] - top.values[1]), 5))
    return out


def tokenizer_cases(tok: Any) -> list[dict[str, Any]]:
    import unicodedata

    cases = []
    for text in TOKENIZER_STRINGS:
        case: dict[str, Any] = {"text": text, "ids": tok.encode(text, add_special_tokens=False)}
        if (nfc := unicodedata.normalize("NFC", text)) != text:
            case["nfc_ids"] = tok.encode(nfc, add_special_tokens=False)
        cases.append(case)
    return cases


def main(argv: list[str]) -> int:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer_only = "--tokenizer-only" in argv
    argv = [a for a in argv if a != "--tokenizer-only"]
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    gguf, out = Path(argv[0]).expanduser(), Path(argv[1])
    if tokenizer_only:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        doc = json.loads(out.read_text())
        doc["tokenizer"] = tokenizer_cases(tok)
        out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        return 0
    torch.manual_seed(0)
    torch.set_num_threads(2)
    start = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    model.eval()
    print(f"loaded in {time.time() - start:.0f} s", file=sys.stderr)

    def greedy(messages: list[dict], tools: list | None, max_new: int) -> dict:
        ids = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
        prompt = torch.tensor([ids])
        with torch.no_grad():
            result = model.generate(prompt, max_new_tokens=max_new, do_sample=False,
                                    output_scores=True, return_dict_in_generate=True,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        new = result.sequences[0, len(ids):].tolist()
        return {"messages": messages, "prompt_tokens": len(ids), "ids": new,
                "text": tok.decode(new, skip_special_tokens=True),
                "finished": bool(new and new[-1] == tok.eos_token_id),
                "margins": _margins(result.scores)}

    doc = {
        "model": "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        "gguf_sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(),
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                     "float32, greedy",
        "max_new_tokens": MAX_NEW_TOKENS,
        "chats": [],
        "tool_chat": None,
        "tokenizer": [],
    }
    for messages in PROMPTS:
        doc["chats"].append(greedy(messages, None, MAX_NEW_TOKENS))
        print(json.dumps(doc["chats"][-1]["text"]), file=sys.stderr)
    doc["tool_chat"] = {**greedy(TOOL_PROMPT, TOOLS, TOOL_MAX_NEW_TOKENS), "tools": TOOLS}
    print(json.dumps(doc["tool_chat"]["text"]), file=sys.stderr)
    doc["tokenizer"] = tokenizer_cases(tok)
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out} in {time.time() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
