"""Two short `trl.GRPOTrainer` runs whose reward is scribe-reward over HTTP (run in the TRL venv).

    trl_grpo.py SCRIBE_URL TOKENIZER_DIR OUT_JSON WORK_DIR

* "text": plain-text prompts, `AsyncScribeReward`, the outcome from a dataset column;
* "chat": conversational prompts, the blocking `ScribeReward`, the outcome from a function.

The policy is a random 2-layer Llama on SmolLM2's tokenizer, so each run is about a second
of training; the time goes to judging. Every /v1/score/batch response body is recorded by an
httpx hook, beside the adapter, so the test can compare what the service answered (each
result's `training_reward`) with what TRL logged.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
from trl import GRPOConfig, GRPOTrainer

from scribe_adapters.trl import AsyncScribeReward, ScribeReward

url, tokenizer_dir, out_path, work_dir = sys.argv[1:5]
QUESTIONS = ["What is 2 + 2?", "Name a primary colour.", "Spell the word cat.", "What is 3 * 5?"]
ANSWERS = ["4", "red", "cat", "15"]


def policy(tokenizer: Any) -> Any:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


def train(
    name: str, reward: Any, rows: list[dict[str, Any]], tokenizer: Any
) -> list[dict[str, Any]]:
    args = GRPOConfig(
        output_dir=f"{work_dir}/{name}", use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=2, num_generations=2, gradient_accumulation_steps=1,
        max_completion_length=12, temperature=1.0, max_steps=2, learning_rate=1e-5,
        logging_steps=1, report_to="none", save_strategy="no", seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=policy(tokenizer),
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    return [dict(row) for row in trainer.state.log_history]


def rewards_of(body: bytes) -> list[float | None]:
    # What the adapter hands TRL: the trainer-facing reward, failed steps counted.
    return [result["training_reward"] for result in json.loads(body)["results"]]


def exact_match(prompts: Any, completions: Any, answer: list[str], **kwargs: Any) -> list[float]:
    """An outcome function with TRL's reward-function signature."""
    return [float(a in c[-1]["content"]) for c, a in zip(completions, answer, strict=True)]


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    report: dict[str, Any] = {}

    answered_text: list[list[float | None]] = []

    async def record_async(response: httpx.Response) -> None:
        await response.aread()
        if response.url.path == "/v1/score/batch":
            answered_text.append(rewards_of(response.content))

    text_reward = AsyncScribeReward(
        url, http_client=httpx.AsyncClient(event_hooks={"response": [record_async]})
    )
    rows = [{"prompt": q, "outcome": float(i % 2)} for i, q in enumerate(QUESTIONS)]
    logged = train("text", text_reward, rows, tokenizer)
    report["text"] = {"name": text_reward.__name__, "answered": answered_text, "logged": logged}

    answered_chat: list[list[float | None]] = []

    def record(response: httpx.Response) -> None:
        response.read()
        if response.url.path == "/v1/score/batch":
            answered_chat.append(rewards_of(response.content))

    chat_reward = ScribeReward(
        url,
        name="scribe_chat",
        outcome_fn=exact_match,
        http_client=httpx.Client(event_hooks={"response": [record]}),
    )
    rows = [
        {"prompt": [{"role": "user", "content": q}], "answer": a}
        for q, a in zip(QUESTIONS, ANSWERS, strict=True)
    ]
    logged = train("chat", chat_reward, rows, tokenizer)
    report["chat"] = {"name": chat_reward.__name__, "answered": answered_chat, "logged": logged}

    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
