"""The refining prompt as chat messages, shared by the stages that refine a policy answer: `pairs`
(the improver's y+) and `refine` (the initial policy refining the same answers, Fig. 8/10)."""

from __future__ import annotations

from sgpo.config import PairsStageConfig
from sgpo.data.sources import after_turns
from sgpo.prompts import load_prompt


def refine_prompt_name(cfg: PairsStageConfig) -> str:
    return cfg.prompt if cfg.refine_with_reference else cfg.no_reference_prompt


def refine_messages(
    cfg: PairsStageConfig,
    instruction: str,
    response: str,
    reference: str,
    turns: list[dict[str, str]] | tuple = (),
) -> list[dict[str, str]]:
    """The refining request for `response` to `instruction` (with the SFT reference unless the
    No-Ref ablation turns it off), asked after `turns`, the conversation before the instruction."""
    prompt = load_prompt(refine_prompt_name(cfg))
    fields = {"instruction": instruction, "response": response}
    if cfg.refine_with_reference:
        fields["reference"] = reference
    return after_turns(list(turns), prompt.render(**fields))
