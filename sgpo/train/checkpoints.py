"""Checkpoints on disk: a safetensors checkpoint saved with nothing pickled, and any model artifact
loaded back, a LoRA adapter artifact (lora.keep_adapter) merged onto its base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sgpo.models.tinykit import check_model_dir

BASE_FILE = "sgpo_base.json"  # beside an adapter artifact: the base checkpoint it was trained on


def save_checkpoint(model, tokenizer, out_dir: str | Path) -> Path:
    """safetensors weights + config + tokenizer, and nothing pickled."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for p in out.glob("*.bin"):  # e.g. training_args.bin is a pickle: never stored
        p.unlink()
    return out


def load_model(model_dir: str, *, trust_remote_code: bool = False, quantization: str = "none"):
    """A causal LM from a checkpoint folder; a LoRA adapter artifact (lora.keep_adapter) is loaded onto
    its base and merged, so every downstream stage reads either kind."""
    import torch
    from transformers import AutoModelForCausalLM

    if (Path(model_dir) / "adapter_config.json").is_file():
        return load_adapter_model(model_dir, trust_remote_code=trust_remote_code)
    check_model_dir(model_dir)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    kw: dict[str, Any] = {}
    if quantization == "4bit":
        kw["quantization_config"] = bnb_4bit_config()
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, trust_remote_code=trust_remote_code, **kw
    )


def bnb_4bit_config() -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def merge_adapter(
    base_dir: str, adapter_dir: str | Path, *, trust_remote_code: bool = False
) -> Any:
    """The base at full precision (never the 4-bit copy QLoRA trained on) with the adapter merged in."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=dtype, trust_remote_code=trust_remote_code
    )
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def load_adapter_model(adapter_dir: str, *, trust_remote_code: bool = False) -> Any:
    """A `keep_adapter` artifact as a plain model: its base (recorded in sgpo_base.json) + the adapter, merged."""
    info_path = Path(adapter_dir) / BASE_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    base = info.get("base_model_dir") or json.loads(
        (Path(adapter_dir) / "adapter_config.json").read_text()
    ).get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_dir} is a LoRA adapter whose base checkpoint {base!r} is not on this machine; "
            "publish merged checkpoints (lora.keep_adapter=false) for stages on other machines"
        )
    return merge_adapter(base, adapter_dir, trust_remote_code=trust_remote_code)
