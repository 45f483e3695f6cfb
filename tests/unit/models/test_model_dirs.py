"""A name that is no local path goes to the hub's loader and fails with the hub's error, not 'no
model found'. Local folders that are not models: tests/integration/models/test_model_dirs.py."""

from __future__ import annotations

import pytest

from sgpo.models.tinykit import ModelNotFoundError, load_tokenizer


def test_a_hub_id_still_goes_to_the_hub_loader():
    # no such local path: the hub code decides (offline in tests, so it fails, but with ITS error)
    with pytest.raises(Exception) as e:
        load_tokenizer("sgpo-tests-no-such-org/no-such-model")
    assert not isinstance(e.value, ModelNotFoundError)
    assert "no model found at" not in str(e.value)
