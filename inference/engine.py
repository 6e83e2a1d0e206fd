"""One vLLM engine and what a worker needs around it: prompts, limits and sampling."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.exceptions import BadPrompt
from inference.models import CATALOG, resolve
from inference.settings import Settings
from schemas.events import InferenceRequested

if TYPE_CHECKING:
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.async_llm import AsyncLLM


# What a served name may set as its own default sampling.
NAMED_DEFAULTS = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty"}


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def cpu_dtype() -> str:
    """bf16 where the CPU computes it natively; elsewhere (AVX2 only) it is emulated, far
    slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if "avx512_bf16" in flags or "amx_bf16" in flags else "float32"


class Engine:
    """A vLLM AsyncLLM (continuous batching in its own process) behind a small interface."""

    def __init__(self, llm: AsyncLLM, max_model_len: int, capacity: int,
                 name_defaults: dict[str, dict[str, float]] | None = None) -> None:
        self.llm = llm
        self.name_defaults = name_defaults or {}
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.capacity = capacity
        self.task = "embed" if llm.model_config.runner_type == "pooling" else "generate"
        self._defaults: dict[str, Any] = (
            llm.model_config.get_diff_sampling_param() if self.task == "generate" else {})

    @classmethod
    def start(cls, settings: Settings) -> Engine:
        """Load the model; this takes tens of seconds, so callers do it before joining Kafka."""
        on_cpu = _on_cpu()
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings.kv_cache_gib:g}")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        eager = settings.enforce_eager if settings.enforce_eager is not None else on_cpu
        known = CATALOG.get(settings.model)
        embeds = known is not None and known.task == "embed"
        args = AsyncEngineArgs(
            model=resolve(settings.home, settings.model, settings.model_path),
            served_model_name=list(settings.names),
            runner="pooling" if embeds else "auto",
            dtype=cpu_dtype() if on_cpu and settings.dtype == "auto" else settings.dtype,
            max_model_len=settings.max_model_len or (known.max_model_len if known else None),
            max_num_seqs=settings.max_num_seqs,
            enforce_eager=eager,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            # A pooling model's engine decides for itself (an encoder has no prefix cache).
            enable_prefix_caching=None if embeds else True,
            disable_log_stats=not settings.engine_log_stats,
        )
        llm = AsyncLLM.from_engine_args(args)
        return cls(llm, llm.model_config.max_model_len, settings.max_num_seqs,
                   settings.name_defaults)

    def prompt_ids(self, req: InferenceRequested) -> list[int]:
        """Render and tokenize the prompt, refusing what cannot fit the context."""
        if req.kind == "chat":
            rendered = self.tokenizer.apply_chat_template(
                [m.model_dump(exclude_none=True) for m in req.messages],
                add_generation_prompt=True,
                tokenize=True,
            )
            ids = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
            param = "messages"
        elif isinstance(req.prompt, str):
            ids = self.tokenizer.encode(req.prompt)
            param = "prompt"
        else:
            ids = list(req.prompt or ())
            param = "prompt"
            vocab = len(self.tokenizer)
            if any(not 0 <= t < vocab for t in ids):
                raise BadPrompt(f"Token ids must be in [0, {vocab}).", param=param)
        limit = self.max_model_len
        if len(ids) >= limit:
            raise BadPrompt(
                f"This model's maximum context length is {limit} tokens. However, your "
                f"prompt has {len(ids)} tokens. Please shorten it.",
                code="context_length_exceeded",
                param=param,
            )
        asked = req.sampling.max_tokens
        if asked is not None and len(ids) + asked > limit:
            raise BadPrompt(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {len(ids) + asked} tokens ({len(ids)} in the prompt, {asked} for "
                "the completion). Please reduce the prompt or max_tokens.",
                code="context_length_exceeded",
                param="max_tokens",
            )
        return ids

    def input_ids(self, req: InferenceRequested) -> list[list[int]]:
        """Tokenize an embedding's inputs, refusing any that cannot fit the context."""
        out = []
        vocab = len(self.tokenizer)
        for i, item in enumerate(req.inputs):
            param = "input" if len(req.inputs) == 1 else f"input[{i}]"
            if isinstance(item, str):
                ids = self.tokenizer.encode(item)
            else:
                ids = list(item)
                if any(not 0 <= t < vocab for t in ids):
                    raise BadPrompt(f"Token ids must be in [0, {vocab}).", param=param)
            if len(ids) > self.max_model_len:
                raise BadPrompt(
                    f"This model's maximum context length is {self.max_model_len} tokens. "
                    f"However, {param} has {len(ids)} tokens. Please shorten it.",
                    code="context_length_exceeded", param=param)
            out.append(ids)
        return out

    async def embed(self, request_id: str, inputs: list[list[int]], dimensions: int | None
                    ) -> list[bytes]:
        """One vector per input, in order, as little-endian float32 bytes. The engine
        batches the inputs like any concurrent requests."""
        from vllm import PoolingParams
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs.engine import tokens_input

        params = PoolingParams(task="embed", dimensions=dimensions)
        try:  # e.g. `dimensions` on a model not trained to be cut (Matryoshka)
            params.verify(self.llm.model_config)
        except VLLMValidationError as e:
            raise BadPrompt(str(e), param="dimensions") from None

        async def one(i: int, ids: list[int]) -> bytes:
            final = None
            async for out in self.llm.encode(tokens_input(ids), params, f"{request_id}-{i}"):
                final = out
            assert final is not None
            return final.outputs.data.float().numpy().astype("<f4").tobytes()

        return await asyncio.gather(*(one(i, ids) for i, ids in enumerate(inputs)))

    async def warm_up(self) -> None:
        """One small run before serving: an embedding model's first one is slow (seconds on
        a CPU), and the first client should not pay for it."""
        if self.task == "embed":
            await self.embed("warm-up", [self.tokenizer.encode("warm up")], None)

    def sampling_params(self, req: InferenceRequested, prompt_len: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = req.sampling
        given = {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
        }
        named = {k: v for k, v in self.name_defaults.get(req.model, {}).items()
                 if k in NAMED_DEFAULTS}
        params = {**self._defaults, **named,
                  **{k: v for k, v in given.items() if v is not None}}
        return SamplingParams(
            n=s.n,
            max_tokens=s.max_tokens or self.max_model_len - prompt_len,
            stop=list(s.stop),
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            output_kind=RequestOutputKind.DELTA,
            **params,
        )

    def generate(
        self, request_id: str, prompt_ids: list[int], params: Any
    ) -> AsyncIterator[RequestOutput]:
        # A rendered token input takes vLLM's synchronous path; a raw prompt would be
        # handed to a thread pool first, which cost milliseconds of TTFT here.
        from vllm.inputs.engine import tokens_input

        return self.llm.generate(tokens_input(prompt_ids), params, request_id)

    def reserved_cpus(self) -> set[int]:
        """CPUs vLLM's model runners leave free (it binds them to the others on a CPU)."""
        import psutil

        engine: set[int] = set()
        for child in psutil.Process().children(recursive=True):
            try:
                if "Worker" in child.name():
                    engine |= set(child.cpu_affinity())
            except psutil.Error:
                continue
        return set(os.sched_getaffinity(0)) - engine if engine else set()

    async def abort(self, request_id: str) -> None:
        await self.llm.abort(request_id)

    def shutdown(self) -> None:
        self.llm.shutdown()
