"""verl's own reward path calls scribe_adapters.verl (run in the verl venv).

    verl_reward_loop.py SCRIBE_URL DOWN_URL TOKENIZER_DIR OUT_JSON

The real `RewardLoopWorker` (the class verl's Ray workers wrap) loads the adapter from
``reward.custom_reward_function.path = pkg://scribe_adapters.verl`` exactly as a training run
configures it, scores a hand-built `DataProto` batch, and `assemble_rm_scores` places the
scores on the response tokens. Three configurations: `compute_score_async` and
`compute_score` against the live service, and `compute_score_async` against a service that
does not answer (the failure policy).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import torch
import verl
from omegaconf import OmegaConf, open_dict
from transformers import AutoTokenizer
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls

url, down_url, tokenizer_dir, out_path = sys.argv[1:5]

ROWS = [
    # (question, response, ground truth): gsm8k's rule scorer reads "#### <answer>".
    ("What is 2 + 2?", "Step 1: Add 2 and 2.\nStep 2: The total is 4.\n#### 4", "4"),
    ("What is 3 * 5?", "Step 1: Multiply 3 by 5.\nStep 2: That gives 16.\n#### 16", "15"),
    ("Name a colour.", "Red is a colour.", "red"),
]


def batch(tokenizer: Any) -> DataProto:
    prompts = [tokenizer(q, add_special_tokens=False)["input_ids"] for q, _, _ in ROWS]
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] for _, r, _ in ROWS]
    width_p, width_r = max(map(len, prompts)), max(map(len, responses)) + 2
    pad = tokenizer.pad_token_id
    # verl's layout: prompts left-padded, responses right-padded.
    p = torch.tensor([[pad] * (width_p - len(x)) + x for x in prompts])
    r = torch.tensor([x + [pad] * (width_r - len(x)) for x in responses])
    p_mask = torch.tensor([[0] * (width_p - len(x)) + [1] * len(x) for x in prompts])
    r_mask = torch.tensor([[1] * len(x) + [0] * (width_r - len(x)) for x in responses])
    attention = torch.cat([p_mask, r_mask], 1)
    return DataProto.from_dict(
        tensors={
            "prompts": p, "responses": r, "input_ids": torch.cat([p, r], 1),
            "attention_mask": attention, "position_ids": (attention.cumsum(1) - 1).clamp(min=0),
        },
        non_tensors={
            "data_source": np.array(["openai/gsm8k"] * len(ROWS), dtype=object),
            "reward_model": np.array(
                [{"style": "rule", "ground_truth": g} for _, _, g in ROWS], dtype=object
            ),
            "extra_info": np.array(
                [{"index": i, "question": q} for i, (q, _, _) in enumerate(ROWS)], dtype=object
            ),
        },
    )  # fmt: skip


def run(name: str, service: str, data: DataProto) -> dict[str, Any]:
    config_path = os.path.join(
        os.path.dirname(verl.__file__), "trainer/config/_generated_ppo_trainer.yaml"
    )
    cfg = OmegaConf.load(config_path)
    cfg.actor_rollout_ref.model.path = tokenizer_dir
    cfg.reward.custom_reward_function.path = "pkg://scribe_adapters.verl"
    cfg.reward.custom_reward_function.name = name
    with open_dict(cfg):
        cfg.reward.custom_reward_function.reward_kwargs = {
            "scribe_url": service,
            "outcome_fn": "verl.utils.reward_score.default_compute_score",
            "failure_reward": 0.0,
        }
    worker = RewardLoopWorker(cfg)
    outs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    scores = [o["reward_score"] for o in outs]
    rm_scores = get_reward_manager_cls("naive").assemble_rm_scores(data, scores)
    valid = data.batch["attention_mask"][:, data.batch["prompts"].size(1) :].sum(1)
    return {
        "outs": outs,
        "rm_scores": rm_scores.tolist(),
        "last_valid": (valid - 1).tolist(),
    }


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = batch(tokenizer)
    report = {
        "async": run("compute_score_async", url, data),
        "sync": run("compute_score", url, data),
        "down": run("compute_score_async", down_url, data),
    }
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, default=str)


if __name__ == "__main__":
    main()
