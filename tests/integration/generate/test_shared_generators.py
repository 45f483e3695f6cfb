"""Outside the evaluation flow (`python -m tasks.<stage>`) each generation loads and closes its own
model; inside `shared_generators()` one load serves every call of a checkpoint, keyed by what
changes the generation. The flow's one load per checkpoint: tests/e2e/test_eval_shared_generator.py.
"""

from __future__ import annotations


def test_outside_the_flow_each_call_loads_and_closes_its_own(tiny_model_dir, monkeypatch):
    from sgpo.config import SamplingConfig
    from sgpo.generate import active_shared_generators, answer_each, hf, shared_generators

    made = []
    real_init = hf.TransformersGenerator.__init__
    monkeypatch.setattr(
        hf.TransformersGenerator,
        "__init__",
        lambda self, *a, **k: (made.append(1), real_init(self, *a, **k))[1],
    )
    params = SamplingConfig(max_new_tokens=4, temperature=0.0, backend="transformers")
    alone = [answer_each(str(tiny_model_dir), ["Hi."], params) for _ in range(2)]
    assert len(made) == 2 and active_shared_generators() is None
    with shared_generators() as pool:
        with shared_generators() as inner:  # nested: the same pool
            assert inner is pool
        together = [answer_each(str(tiny_model_dir), ["Hi."], params) for _ in range(2)]
        vllm_like = params.model_copy(update={"backend": "vllm", "seed": 1})
        assert pool.key(str(tiny_model_dir), vllm_like, False) != pool.key(
            str(tiny_model_dir), vllm_like.model_copy(update={"seed": 2}), False
        )
        assert pool.key(str(tiny_model_dir), params, False) == pool.key(
            str(tiny_model_dir), params.model_copy(update={"temperature": 0.7}), False
        )
    assert len(made) == 3 and pool.loads == 1 and active_shared_generators() is None
    assert together == alone
