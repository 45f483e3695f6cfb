"""From YAML to a section tree: presets and recipes (package data in sgpo/configs), `key=value`
overrides, and validation errors that name the key."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sgpo.config.sections import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def preset_path(name: str) -> Path:
    """`tiny` -> configs/tiny.yaml; a path is returned as is."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return CONFIG_DIR / f"{name}.yaml"


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(
            f"override {item!r} is not of the form key=value (e.g. sft.learning_rate=1e-5)"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {e}") from None
    return key.split("."), value


def _set_dotted(tree: dict, parts: list[str], value: Any) -> None:
    node = tree
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the section that `loc` points into (for 'did you mean')."""
    cls: Any = model
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def format_validation_error(
    err: ValidationError,
    source: str,
    model: type[BaseModel],
    kind: str = "configuration",
) -> str:
    """One line per problem, each naming its dotted key; unknown keys get a 'did you mean'."""
    lines = [f"invalid {kind} ({source}):"]
    for e in err.errors():
        loc = tuple(str(x) for x in e["loc"])
        key = ".".join(loc) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], _known_keys(model, loc), n=1)
            msg = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def read_yaml_tree(
    source: str | Path | None, *, default: str, glob: str = "*.yaml", kind: str = "config"
) -> tuple[Path, dict]:
    """The mapping in a preset (name) or YAML file, with a clear error for each way it can be wrong."""
    path = preset_path(str(source) if source else default)
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob(glob)))
        raise ConfigError(f"{kind} {str(source)!r} not found (no file {path}); presets: {known}")
    if path.is_dir():
        raise ConfigError(f"{kind} {path} is a directory, not a YAML file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{kind} {path} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{kind} {path} is not a UTF-8 text file (byte {e.start} is {raw[e.start : e.start + 1]!r}); "
            "a config is YAML text"
        ) from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, not {type(tree).__name__}")
    return path, tree


METHOD_DIR = CONFIG_DIR / "methods"


def method_names() -> list[str]:
    return sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))


def method_tree(name: str) -> dict:
    """A recipe's settings (configs/methods/NAME.yaml): which DAG and which ablation flags, never
    hyper-parameters (those belong to the model preset), so a method composes with any preset."""
    path = METHOD_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"method {name!r} is not a recipe; recipes: {', '.join(method_names())}")
    tree = yaml.safe_load(path.read_text()) or {}
    return {**tree, "method": name}


def merge_trees(base: dict, top: dict) -> dict:
    """`top` over `base`, recursively for mappings."""
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            merge_trees(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def apply_overrides(tree: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    for item in overrides:
        parts, value = parse_override(item)
        _set_dotted(tree, parts, value)
    return tree


def format_override(key: str, value: Any) -> str:
    """`key=value` that `parse_override` reads back as `value` (YAML flow style, one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31, sort_keys=False).strip()
    if text.endswith("\n..."):  # a lone scalar ends its document
        text = text[:-4].rstrip()
    elif text.endswith("..."):
        text = text[:-3].rstrip()
    return f"{key}={text}"


def leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a nested mapping's leaves (a list or an empty mapping is a leaf)."""
    if not isinstance(tree, dict) or not tree:
        return [prefix] if prefix else []
    return [k for name, v in tree.items() for k in leaf_keys(v, f"{prefix}.{name}".lstrip("."))]


def changed_keys(new: Any, old: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, new value) of every leaf where `new` differs from `old` (JSON-like trees)."""
    if isinstance(new, dict) and isinstance(old, dict):
        out = []
        for k in new:
            if k in old:
                out += changed_keys(new[k], old[k], f"{prefix}{k}.")
            else:
                out.append((f"{prefix}{k}", new[k]))
        return out
    return [] if new == old else [(prefix.rstrip("."), new)]
