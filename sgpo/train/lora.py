"""LoRA / QLoRA for the training stages (peft; bitsandbytes 4-bit only where CUDA is present).

A stage with `lora:` set trains adapters on the frozen checkpoint. What it publishes:
* default: a merged checkpoint (the adapter folded into the base weights at full precision, then
  saved as an ordinary safetensors checkpoint), so downstream stages see no difference;
* `lora.keep_adapter: true`: the adapter folder (adapter_config.json, adapter_model.safetensors, the
  tokenizer) plus `sgpo_base.json` naming the base checkpoint; `sgpo.train.checkpoints.load_model` loads the
  base and merges the adapter when it meets such a folder.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sgpo.config import LoRAConfig

from sgpo.train.checkpoints import BASE_FILE, merge_adapter, save_checkpoint


class LoRAConfigError(ValueError):
    """A LoRA setting that cannot work with this model or machine."""


def _module_names(model_dir: str, *, trust_remote_code: bool = False) -> list[str]:
    """Module names of the architecture, built on the meta device (no weights are read)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return [n for n, _ in model.named_modules() if n]


def check_lora_config(model_dir: str, lora: LoRAConfig, *, trust_remote_code: bool = False) -> None:
    if importlib.util.find_spec("peft") is None:
        raise LoRAConfigError(
            "lora is set but the peft package is not installed: `pip install peft`"
        )
    if lora.quantization == "4bit":
        import torch

        if not torch.cuda.is_available():
            raise LoRAConfigError(
                "lora.quantization=4bit (QLoRA) needs a CUDA GPU (bitsandbytes); this machine has none"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise LoRAConfigError(
                "lora.quantization=4bit (QLoRA) needs the bitsandbytes package: `pip install bitsandbytes`"
            )
    targets = [t for t in lora.target_modules if t != "all-linear"]
    if not targets:
        return
    names = _module_names(model_dir, trust_remote_code=trust_remote_code)
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    missing = [t for t in targets if t not in leaves and t not in names]
    if missing:
        linear = (
            sorted({n.rsplit(".", 1)[-1] for n in names if n.rsplit(".", 1)[-1].endswith("proj")})
            or sorted(leaves)[:20]
        )
        raise LoRAConfigError(
            f"lora.target_modules {missing} are not modules of the model in {model_dir}; "
            f"it has e.g. {linear} (or use ['all-linear'])"
        )


def peft_config(lora: LoRAConfig) -> Any:
    from peft import LoraConfig

    targets: Any = (
        "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    )
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def wrap_lora(model: Any, lora: LoRAConfig, *, gradient_checkpointing: bool = False) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    base_dir = getattr(model, "name_or_path", None) or model.config._name_or_path
    if lora.quantization == "4bit":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    model = get_peft_model(model, peft_config(lora))
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    return model


def _base_dir(model: Any) -> str:
    return str(model.peft_config["default"].base_model_name_or_path)


def save_lora(trainer: Any, tokenizer: Any, out_dir: str | Path, lora: LoRAConfig) -> None:
    out = Path(out_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    base_dir = _base_dir(model)
    with tempfile.TemporaryDirectory(prefix="sgpo-adapter-") as tmp:
        trainer.save_model(
            tmp
        )  # the adapter only (gathered under ZeRO-3); written by the main process
        if trainer.accelerator.is_main_process:
            for p in Path(tmp).glob("*.bin"):
                p.unlink()
            if lora.keep_adapter:
                if out.exists():
                    shutil.rmtree(out)
                shutil.copytree(tmp, out)
                tokenizer.save_pretrained(out)
                shutil.copy(
                    Path(base_dir) / "config.json", out / "config.json"
                )  # the architecture, for loaders
                (out / BASE_FILE).write_text(
                    json.dumps({"base_model_dir": base_dir, "lora": lora.model_dump(mode="json")})
                )
            else:
                save_checkpoint(merge_adapter(base_dir, tmp), tokenizer, out)
        trainer.accelerator.wait_for_everyone()
