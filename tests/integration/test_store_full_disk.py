"""A checkpoint that does not fit leaves no half-written file in the store (issue 24, item 5): after
a full disk, a partial `model.safetensors.tmp-PID` stayed beside the artifact. The disk fills in a
real process: a file-size limit (RLIMIT_FSIZE) makes its writes fail partway, as ENOSPC does. (On
the scratch folder's own filesystem the checkpoint is hard-linked, no byte written: the copy is the
path that can fill a disk.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import errno, os, resource, signal, sys
from pathlib import Path
from artifacts.store import ArtifactStore
def cross_device(*a, **k):  # the store on another filesystem than the checkpoint: bytes are copied
    raise OSError(errno.EXDEV, "Invalid cross-device link")
os.link = cross_device
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), not the process
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    ArtifactStore(sys.argv[1]).publish_model("sft", "k" * 64, sys.argv[2], manifest={})
except OSError as e:
    print("failed:", e)
    sys.exit(3)
"""


def test_a_checkpoint_that_does_not_fit_leaves_no_partial_file(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(os.urandom(400_000))
    store = tmp_path / "store"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(store), str(model)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 3, out.stderr
    assert "File too large" in out.stdout
    left = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    assert not [p for p in left if ".tmp-" in p], left
    assert "sft/kkkkkkkkkkkkkkkk/manifest.json" not in left  # unfinished: nothing will read it
