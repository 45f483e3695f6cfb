"""Where the ranks of a launched stage import the stage's code from (sgpo.core.launch._import_root)."""

from __future__ import annotations

import sys

from sgpo.core.launch import _import_root


def test_a_module_run_as_main_is_found_by_its_spec(tmp_path, monkeypatch):
    """`python -m pkg.stage` puts the module in sys.modules as `__main__` only; the launch must still
    find the folder `pkg` lies in (this raised KeyError: 'tasks.sapo' before the fix)."""
    pkg = tmp_path / "root" / "pkgx"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stagey.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "root"))
    monkeypatch.delitem(sys.modules, "pkgx.stagey", raising=False)
    assert _import_root("pkgx.stagey") == str((tmp_path / "root").resolve())
    assert "pkgx.stagey" not in sys.modules  # found without importing the stage itself
