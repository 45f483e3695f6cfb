"""GGUF files as base models: a cheap pre-check, and a one-time conversion into a plain checkpoint.

    check_gguf(path)                 -> the architecture, or one GGUFError (no torch, no tensor data)
    convert_gguf(path, out_dir)      -> out_dir: model.safetensors (fp32) + tokenizer + chat template

The converted folder loads with `AutoModelForCausalLM.from_pretrained(out_dir)` and the project's
`load_tokenizer` without the `gguf` package; converting needs it (transformers' GGUF loader for
llama-architecture files imports it). Quantised blocks (Q4_1, Q8_0, ...) are dequantised to fp32:
the converted model's logits equal the GGUF-loaded model's exactly, and the output is
byte-identical from run to run (the base_model stage's cache relies on both).

This module's code is part of the base_model stage's cache key (artifacts.hashing.code_fingerprint):
a change to how a GGUF is converted is never served from an old conversion.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
# Byte sizes of the fixed-size GGUF metadata value types (gguf's GGUFValueType numbering).
FIXED_VALUE_BYTES = {0: 1, 1: 1, 7: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
# (elements per block, bytes per block) of the unquantised tensor types, for when `gguf` (which
# knows every quantisation) is not installed: F32, F16, BF16.
PLAIN_TENSOR_SIZES = {0: (1, 4), 1: (1, 2), 30: (1, 2)}
MAX_TENSOR_DIMS = 8


class GGUFError(ValueError):
    """A GGUF file that cannot be converted (missing, not GGUF, truncated, unsupported architecture);
    raised before any heavy work."""


def tensor_type_sizes() -> dict[int, tuple[int, int]]:
    """(elements per block, bytes per block) per GGML tensor type: every type when `gguf` is
    installed, else only the unquantised ones (a quantised tensor's extent is then not checked)."""
    try:
        from gguf import GGML_QUANT_SIZES
    except ImportError:
        return dict(PLAIN_TENSOR_SIZES)
    return {int(k): v for k, v in GGML_QUANT_SIZES.items()}


def read_gguf_header(path: str | os.PathLike) -> dict[str, Any]:
    """Walk a GGUF header with the standard library and check that the file is complete.

    Reads the metadata and the tensor table, never tensor data (SmolLM2's 49k-token vocabulary:
    about 0.1 s), and checks that every tensor's bytes lie inside the file, so an interrupted
    download is called truncated here instead of surfacing as an IndexError, a struct.error or a
    reshape ValueError inside the loader. Returns {version, architecture, name, n_tensors,
    file_bytes, data_bytes_needed}; raises GGUFError on anything malformed.
    """
    path = Path(path)
    file_bytes = path.stat().st_size
    sizes = tensor_type_sizes()
    with open(path, "rb") as f:

        def truncated() -> GGUFError:
            return GGUFError(f"{path}: truncated GGUF header (the file has {file_bytes} bytes)")

        def read(n: int) -> bytes:
            if f.tell() + n > file_bytes:
                raise truncated()
            return f.read(n)

        def skip(n: int) -> None:  # seek, never read: a garbled count must not allocate gigabytes
            if f.tell() + n > file_bytes:
                raise truncated()
            f.seek(n, os.SEEK_CUR)

        def read_u64() -> int:
            return struct.unpack("<Q", read(8))[0]

        def read_string() -> str:
            return read(read_u64()).decode("utf-8", errors="replace")

        def skip_value(vtype: int) -> None:
            if vtype in FIXED_VALUE_BYTES:
                skip(FIXED_VALUE_BYTES[vtype])
            elif vtype == STRING:
                skip(read_u64())
            elif vtype == ARRAY:
                etype, count = struct.unpack("<IQ", read(12))
                if etype in FIXED_VALUE_BYTES:
                    skip(FIXED_VALUE_BYTES[etype] * count)
                else:
                    if count > file_bytes:  # every element takes at least one byte
                        raise truncated()
                    for _ in range(count):
                        skip_value(etype)
            else:
                raise GGUFError(
                    f"{path}: unknown GGUF metadata value type {vtype} (garbled header)"
                )

        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        version, n_tensors, n_kv = struct.unpack("<IQQ", read(20))
        if version not in GGUF_VERSIONS:
            raise GGUFError(
                f"{path}: GGUF version {version} is not supported (supported: {GGUF_VERSIONS})"
            )
        if n_tensors > file_bytes or n_kv > file_bytes:
            raise GGUFError(f"{path}: garbled GGUF header ({n_tensors} tensors, {n_kv} keys)")
        meta: dict[str, Any] = {"general.alignment": 32}
        for _ in range(n_kv):
            key = read_string()
            (vtype,) = struct.unpack("<I", read(4))
            if key in ("general.architecture", "general.name") and vtype == STRING:
                meta[key] = read_string()
            elif key == "general.alignment" and vtype == 4:
                meta[key] = struct.unpack("<I", read(4))[0]
            else:
                skip_value(vtype)
        if "general.architecture" not in meta:
            raise GGUFError(f"{path}: the GGUF metadata has no general.architecture")
        tensors = []
        for _ in range(n_tensors):
            read_string()  # the tensor's name
            (ndim,) = struct.unpack("<I", read(4))
            if ndim > MAX_TENSOR_DIMS:
                raise GGUFError(f"{path}: garbled GGUF tensor table (a tensor with {ndim} dims)")
            dims = struct.unpack(f"<{ndim}Q", read(8 * ndim))
            ttype, offset = struct.unpack("<IQ", read(12))
            tensors.append((dims, ttype, offset))
        alignment = meta["general.alignment"] or 32
        data_start = (f.tell() + alignment - 1) // alignment * alignment
    needed = data_start
    for dims, ttype, offset in tensors:
        if ttype in sizes:
            elements = 1
            for d in dims:
                elements *= d
            block_elements, block_bytes = sizes[ttype]
            needed = max(needed, data_start + offset + elements // block_elements * block_bytes)
    if needed > file_bytes:
        raise GGUFError(
            f"{path}: truncated GGUF file ({file_bytes} bytes; its tensor table needs {needed}): "
            "an interrupted download or copy?"
        )
    return {
        "version": version,
        "architecture": meta["general.architecture"],
        "name": meta.get("general.name"),
        "n_tensors": n_tensors,
        "file_bytes": file_bytes,
        "data_bytes_needed": needed,
    }


@functools.lru_cache(maxsize=1)
def supported_gguf_architectures() -> frozenset[str]:
    """The GGUF `general.architecture` values the installed transformers can load.

    transformers (5.24) has two GGUF loaders: the legacy one (needs the `gguf` package; llama goes
    there), whose list `GGUF_SUPPORTED_ARCHITECTURES` also holds the non-architectures "general"
    and "tokenizer" (dropped here) and spells a few names the transformers way (the loader maps
    the file's qwen2moe, qwen3moe, gpt-oss, minimax-m2 itself); and a newer one with its own
    reader (`integrations.gguf.GGUF_ARCHS`; absent in older releases). Imports transformers (and
    torch) once, about 3 s; never gguf.
    """
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    archs = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    archs |= {"qwen2moe", "qwen3moe", "gpt-oss", "minimax-m2"}
    archs |= new_loader_architectures()
    return frozenset(archs)


def new_loader_architectures() -> set[str]:
    """Architectures transformers loads with its own GGUF reader (no `gguf` package needed)."""
    try:
        from transformers.integrations.gguf import GGUF_ARCHS
    except ImportError:
        return set()
    return set(GGUF_ARCHS)


def check_gguf(gguf_path: str | os.PathLike, allowed: set[str] | None = None) -> str:
    """The file's architecture, or one GGUFError if it is not a GGUF the installed transformers
    can load: missing, a directory, not GGUF, truncated, garbled, or an unsupported architecture.

    `allowed` narrows (or replaces) transformers' list. Costs a header walk (0.2 ms on a tiny
    file, about 0.1 s on SmolLM2) plus, once per process, the import of transformers' list.
    """
    path = Path(gguf_path).expanduser()
    if not path.exists():
        raise GGUFError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise GGUFError(f"{path} is not a file (a GGUF model is one *.gguf file)")
    arch = read_gguf_header(path)["architecture"]
    supported = supported_gguf_architectures() if allowed is None else set(allowed)
    if arch not in supported:
        raise GGUFError(
            f"{path}: GGUF architecture {arch!r} cannot be loaded by the installed transformers "
            f"(it loads: {', '.join(sorted(supported))})"
        )
    return arch


def check_gguf_package(gguf_path: str | os.PathLike, arch: str) -> None:
    """Raise ImportError with the install command if converting this file needs the `gguf`
    package and it is not installed (transformers' legacy GGUF loader imports it)."""
    import importlib.util

    if arch in new_loader_architectures() or importlib.util.find_spec("gguf") is not None:
        return
    raise ImportError(
        f"converting {gguf_path} ({arch} GGUF) needs the `gguf` package, which is not installed: "
        "pip install 'gguf>=0.10' (a dependency of sgpo: scripts/setup.sh installs it)"
    )


def convert_gguf(
    gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, max_length: int | None = None
) -> Path:
    """Convert `gguf_path` into a safetensors checkpoint folder `out_dir`; returns `out_dir`.

    fp32 weights (quantised blocks dequantised); config.json without the GGUF loader's
    `quantization_config` and `_model_name_or_path`; generation_config.json as the GGUF says (its
    eos, e.g. <|im_end|>); the tokenizer (tokenizer.json) with its special tokens and chat
    template, `model_max_length` = `max_length` or the config's max_position_embeddings (the GGUF
    tokenizer says 1e30). Writes `out_dir.tmp` and renames it: a crash leaves no half folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = check_gguf(gguf_path)
    check_gguf_package(gguf_path, arch)
    source = Path(gguf_path).expanduser().resolve()
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    folder, name = str(source.parent), source.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    dense: dict[str, Any] = {}
    try:  # transformers >= 5.24: ask for dense weights; its newer GGUF loader can keep blocks
        from transformers import (
            GgufConfig,
        )  # packed (GgufLinear, uint8) when `kernels` is installed

        dense["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, **dense
    )
    not_float = [n for n, p in loaded.state_dict().items() if not p.is_floating_point()]
    if not_float:
        raise RuntimeError(f"{source}: GGUF weights were not dequantised: {not_float[:5]}")

    # The GGUF-loaded model carries a quantization_config and refuses save_pretrained: build a plain
    # model of the same config on the meta device (no second copy, no random init) and hand it the
    # already dequantised tensors.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(
            f"{source}: state dict mismatch: missing={missing[:5]} unexpected={unexpected[:5]}"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: take the loaded model's.
    loaded_buffers = dict(loaded.named_buffers())
    for buffer_name, buf in list(model.named_buffers()):
        if buf.is_meta:
            module_name, _, attr = buffer_name.rpartition(".")
            model.get_submodule(module_name)._buffers[attr] = loaded_buffers[buffer_name].clone()
    left = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if left:
        raise RuntimeError(f"{source}: tensors left on the meta device: {left[:5]}")
    model.generation_config = loaded.generation_config
    del loaded

    model.save_pretrained(tmp)
    edit_json(tmp / "config.json", drop=("quantization_config", "_model_name_or_path"))
    tok.model_max_length = int(max_length or config.max_position_embeddings)
    tok.name_or_path = ""
    tok.save_pretrained(tmp)
    # PreTrainedTokenizerFast (the plain tokenizer.json wrapper, TokenizersBackend's name in
    # transformers 5) is known to every release, and so is a chat template inside
    # tokenizer_config.json: the folder also loads where chat_template.jinja is not read. The
    # loader's own kwargs (is_local, local_files_only) leak into the file: dropped.
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    edit_json(
        tmp / "tokenizer_config.json",
        drop=("is_local", "local_files_only", "name_or_path"),
        set_={"tokenizer_class": "PreTrainedTokenizerFast"}
        | ({"chat_template": template} if template else {}),
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def edit_json(
    path: Path, *, drop: tuple[str, ...] = (), set_: dict[str, Any] | None = None
) -> None:
    """Rewrite a JSON file without `drop` and with `set_`, keys sorted (byte-identical each time)."""
    data = json.loads(path.read_text())
    for key in drop:
        data.pop(key, None)
    data.update(set_ or {})
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
