"""OpenRLHF's own reward client calls scribe-reward (run in the OpenRLHF venv).

    openrlhf_remote_rm.py SCRIBE_URL TOKENIZER_DIR REWARD_FILE OUT_JSON

`SingleTurnAgentExecutor` is the class OpenRLHF's rollout uses to fetch rewards. It runs
`execute()` (tokenize, generate, decode prompt + response with special tokens, request the
reward) with a stand-in for the vLLM engine that answers fixed responses, in both reward
modes: the HTTP URL of /get_reward, and the reward file. The batch form of the HTTP request
(several samples per request, as releases before 0.9.2 send) is called directly.
"""

from __future__ import annotations

import asyncio
import json
import sys
from types import SimpleNamespace
from typing import Any

import torch
from openrlhf.utils.agent import SingleTurnAgentExecutor
from transformers import AutoTokenizer

url, tokenizer_dir, reward_file, out_path = sys.argv[1:5]

SAMPLES = [
    ("What is 2 + 2?", "Step 1: Add 2 and 2.\nStep 2: The total is 4.", "1"),
    ("What is 3 * 5?", "3 * 5 = 16.", "0"),
    ("Name a colour.", "Red.", "red"),
]


class Engine:
    """Answers each prompt with a fixed response, ended by the EOS token as vLLM does."""

    def __init__(self, tokenizer: Any, response: str) -> None:
        ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        self.token_ids = [*ids, tokenizer.eos_token_id]

    async def generate(
        self, prompt_token_ids: list[int], sampling_params: Any, multi_modal_data: Any = None
    ) -> Any:
        output = SimpleNamespace(
            token_ids=self.token_ids, text="", finish_reason="stop", logprobs=None
        )
        return SimpleNamespace(outputs=[output])


def plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


async def rollouts(executor: SingleTurnAgentExecutor, tokenizer: Any) -> list[dict[str, Any]]:
    outputs = []
    for question, response, label in SAMPLES:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        out = await executor.execute(
            prompt, label, SimpleNamespace(max_tokens=64, logprobs=None), 512, tokenizer,
            Engine(tokenizer, response),
        )  # fmt: skip
        outputs.append(
            {
                "prompt": prompt,
                "query": tokenizer.decode(out["observation_tokens"], skip_special_tokens=False),
                "reward": plain(out["reward"]),
                "scores": plain(out["scores"]),
                "extra_logs": plain(out["extra_logs"]),
            }
        )
    return outputs


async def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    http = SingleTurnAgentExecutor(f"{url}/get_reward")
    report: dict[str, Any] = {"http": await rollouts(http, tokenizer)}
    report["file"] = await rollouts(SingleTurnAgentExecutor(reward_file), tokenizer)
    queries = [row["query"] for row in report["http"]]
    prompts = [row["prompt"] for row in report["http"]]
    labels = [label for _, _, label in SAMPLES]
    report["batch"] = plain(await http._fetch_rewards_via_http(queries, prompts, labels))
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    asyncio.run(main())
