"""Resumable SAPO checkpoints in an fsspec folder, with nothing pickled.

Layout: `{url}/step-{step:08d}/`
    policy.safetensors, ema.safetensors      model weights
    reference.safetensors                    only when the DPO reference is a separate copy (policy / ema every K>1)
    optimizer.safetensors + optimizer.json   the optimiser's state_dict flattened: tensors by "state.<param>.<name>",
                                             param_groups and non-tensor state as JSON
    scheduler.json                           the LR scheduler's state_dict (plain numbers)
    buffer-{k:03d}.parquet                   replay buffer k with use counts (see buffer.SCHEMA), written by
                                             the process that holds it; its push count in the schema metadata
    rng.json + rng.safetensors               python `random`, numpy, torch CPU (and CUDA) generator states
    state.json                               step, counters, timings, run identity
    complete.json                            written LAST: step, the number of buffers and the size of every file above

Several processes write one checkpoint together: the main process clears the folder, every process
writes its own buffers, and after a barrier the main process writes the models, optimiser and the
marker. A folder without complete.json (a run killed while writing) is never read and is overwritten or
pruned later. A run resumes with any number of processes: each reads the buffers it holds. torch.save / pickle is not used anywhere: the optimiser state goes through
safetensors + JSON, so loading a checkpoint cannot run code.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import Any

import fsspec

MARKER = "complete.json"
PREFIX = "step-"


@dataclass
class LoadedCheckpoint:
    folder: str
    step: int
    policy: dict  # state dicts (tensors)
    ema: dict
    reference: dict | None
    optimizer: dict
    scheduler: dict
    buffer_tables: dict[int, Any]  # buffer index -> pyarrow.Table (the buffers asked for)
    rng: dict
    state: dict

    @property
    def buffer_table(self) -> Any:
        """The loaded buffers as one table, in buffer order."""
        import pyarrow as pa

        return pa.concat_tables([self.buffer_tables[k] for k in sorted(self.buffer_tables)])


def buffer_file(k: int) -> str:
    return f"buffer-{k:03d}.parquet"


def _noop() -> None:
    return None


def _fs(url: str, storage_options: dict | None):
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def _tensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    # clone: tied weights share storage, which safetensors refuses; contiguous CPU copies are safe
    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def _tensors_load(data: bytes) -> dict:
    from safetensors.torch import load

    return load(data)


# --------------------------------------------------------------------------- optimizer / rng


def flatten_optimizer_state(state_dict: dict) -> tuple[dict, dict]:
    """torch optimizer state_dict -> (tensors for safetensors, JSON-able rest)."""
    import torch

    tensors: dict = {}
    scalars: dict = {}
    for pid, pstate in state_dict["state"].items():
        for name, value in pstate.items():
            key = f"state.{pid}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value
            else:
                scalars[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in state_dict["param_groups"]
    ]
    tuples = sorted(
        {k for g in state_dict["param_groups"] for k, v in g.items() if isinstance(v, tuple)}
    )
    return tensors, {"param_groups": groups, "scalars": scalars, "tuple_keys": tuples}


def unflatten_optimizer_state(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    groups = [
        {k: (tuple(v) if k in meta["tuple_keys"] else v) for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def capture_rng() -> tuple[dict, dict]:
    """(JSON part, tensor part) of every generator a run touches."""
    import numpy as np
    import torch

    version, pystate, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    meta = {
        "python": [version, list(pystate), gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "cuda_devices": 0,
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states = torch.cuda.get_rng_state_all()
        meta["cuda_devices"] = len(states)
        tensors.update({f"torch_cuda_{i}": s for i, s in enumerate(states)})
    return meta, tensors


def restore_rng(meta: dict, tensors: dict) -> None:
    import numpy as np
    import torch

    version, pystate, gauss = meta["python"]
    random.setstate((version, tuple(pystate), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if meta.get("cuda_devices") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [tensors[f"torch_cuda_{i}"] for i in range(meta["cuda_devices"])]
        )


# --------------------------------------------------------------------------- folders


def step_folder(url: str, step: int) -> str:
    return f"{url.rstrip('/')}/{PREFIX}{step:08d}"


def complete_steps(url: str, storage_options: dict | None = None) -> list[int]:
    """Steps that have a complete checkpoint under `url`, ascending."""
    fs, root = _fs(url, storage_options)
    if not fs.exists(root):
        return []
    steps = []
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(PREFIX) and fs.exists(f"{path.rstrip('/')}/{MARKER}"):
            try:
                steps.append(int(name[len(PREFIX) :]))
            except ValueError:
                continue
    return sorted(steps)


def latest_checkpoint(url: str, storage_options: dict | None = None) -> str | None:
    steps = complete_steps(url, storage_options)
    return step_folder(url, steps[-1]) if steps else None


def save_checkpoint(
    url: str,
    step: int,
    *,
    policy,
    ema,
    reference,
    optimizer,
    scheduler,
    buffers: dict[int, Any],
    n_buffers: int,
    state: dict,
    keep: int = 2,
    storage_options: dict | None = None,
    main: bool = True,
    barrier=_noop,
) -> str:
    """Write one checkpoint folder, marker last; then prune to the newest `keep` complete ones.

    Every process calls it with the buffers it holds (`buffers`: index -> ReplayBuffer); only the
    main process (`main`) writes the rest; `barrier` synchronises the processes."""
    import pyarrow.parquet as pq

    folder = step_folder(url, step)
    fs, path = _fs(folder, storage_options)
    if main:
        if fs.exists(path):
            fs.rm(path, recursive=True)  # a half-written folder of an earlier, killed attempt
        fs.makedirs(path, exist_ok=True)
    barrier()
    for k, buffer in buffers.items():
        table_buf = io.BytesIO()
        pq.write_table(buffer.to_table(), table_buf, compression="zstd")
        fs.pipe_file(f"{path}/{buffer_file(k)}", table_buf.getvalue())
    barrier()
    if not main:
        barrier()
        return folder
    files: dict[str, bytes] = {}
    files["policy.safetensors"] = _tensors_bytes(policy.state_dict())
    files["ema.safetensors"] = _tensors_bytes(ema.state_dict())
    if reference is not None:
        files["reference.safetensors"] = _tensors_bytes(reference.state_dict())
    opt_tensors, opt_meta = flatten_optimizer_state(optimizer.state_dict())
    files["optimizer.safetensors"] = _tensors_bytes(opt_tensors)
    files["optimizer.json"] = json.dumps(opt_meta).encode()
    files["scheduler.json"] = json.dumps(scheduler.state_dict()).encode()
    rng_meta, rng_tensors = capture_rng()
    files["rng.json"] = json.dumps(rng_meta).encode()
    files["rng.safetensors"] = _tensors_bytes(rng_tensors)
    files["state.json"] = json.dumps({**state, "step": step}, indent=2).encode()
    for name, data in files.items():
        fs.pipe_file(f"{path}/{name}", data)
    sizes = {name: len(data) for name, data in files.items()}
    for k in range(n_buffers):  # every process's buffers, written before the barrier
        sizes[buffer_file(k)] = fs.size(f"{path}/{buffer_file(k)}")
    marker = {"step": step, "buffers": n_buffers, "files": sizes}
    fs.pipe_file(f"{path}/{MARKER}", json.dumps(marker, indent=2).encode())
    prune_checkpoints(url, keep, storage_options)
    barrier()
    return folder


def prune_checkpoints(url: str, keep: int, storage_options: dict | None = None) -> None:
    """Keep the newest `keep` complete checkpoints; drop older and unfinished folders below the newest."""
    fs, root = _fs(url, storage_options)
    steps = complete_steps(url, storage_options)
    if not steps:
        return
    kept = set(steps[-keep:])
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith(PREFIX):
            continue
        try:
            step = int(name[len(PREFIX) :])
        except ValueError:
            continue
        if step not in kept and step < steps[-1]:
            fs.rm(path, recursive=True)


def load_checkpoint(
    folder: str, storage_options: dict | None = None, buffer_ids: Any = None
) -> LoadedCheckpoint:
    """A complete checkpoint; `buffer_ids`: the buffers to read (None: all of them)."""
    import pyarrow.parquet as pq

    fs, path = _fs(folder, storage_options)
    marker = json.loads(fs.cat_file(f"{path}/{MARKER}"))
    n_buffers = int(marker.get("buffers", 0))
    wanted = range(n_buffers) if buffer_ids is None else list(buffer_ids)
    if missing := [k for k in wanted if not 0 <= k < n_buffers]:
        raise RuntimeError(
            f"checkpoint {folder} holds {n_buffers} replay buffers; buffers {missing} are not among them"
        )
    for name, size in marker["files"].items():
        actual = fs.size(f"{path}/{name}")
        if actual != size:
            raise RuntimeError(
                f"checkpoint {folder}: {name} has {actual} bytes, the marker says {size}"
            )

    def read(name: str) -> bytes:
        return fs.cat_file(f"{path}/{name}")

    opt_meta = json.loads(read("optimizer.json"))
    return LoadedCheckpoint(
        folder=folder,
        step=int(marker["step"]),
        policy=_tensors_load(read("policy.safetensors")),
        ema=_tensors_load(read("ema.safetensors")),
        reference=_tensors_load(read("reference.safetensors"))
        if "reference.safetensors" in marker["files"]
        else None,
        optimizer=unflatten_optimizer_state(_tensors_load(read("optimizer.safetensors")), opt_meta),
        scheduler=json.loads(read("scheduler.json")),
        buffer_tables={k: pq.read_table(io.BytesIO(read(buffer_file(k)))) for k in wanted},
        rng={
            "meta": json.loads(read("rng.json")),
            "tensors": _tensors_load(read("rng.safetensors")),
        },
        state=json.loads(read("state.json")),
    )


def read_buffers(folder: str, storage_options: dict | None = None):
    """Every replay buffer of a complete checkpoint as one table with a `buffer` column (its index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = _fs(folder, storage_options)
    n_buffers = int(json.loads(fs.cat_file(f"{path}/{MARKER}")).get("buffers", 0))
    tables = []
    for k in range(n_buffers):
        t = pq.read_table(io.BytesIO(fs.cat_file(f"{path}/{buffer_file(k)}")))
        tables.append(
            t.replace_schema_metadata(None).add_column(
                0, "buffer", pa.array([k] * len(t), pa.int64())
            )
        )
    return pa.concat_tables(tables)
