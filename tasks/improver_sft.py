"""Stage 5, `improver_sft`: train pi_sft to improve its own responses -> pi_imp.

Inputs are the improver prompt (instruction + policy response, WITHOUT the SFT reference,
unless the All-Ref ablation turns `with_reference` on); targets are the filtered y_imp and/or
y_ext. With shared parameters (SGPO) pi_imp is both the policy and the improver. A multi-turn or
system-prompted row: the improver prompt is the final user turn of the row's own conversation (as
the `pairs` stage asks it later), so the improver learns to refine an answer in its context.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import ImproverSFTStageConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import after_turns, earlier_turns
from sgpo.prompts import load_prompt
from sgpo.train.launch import ACCELERATE


def prompt_name(cfg: ImproverSFTStageConfig) -> str:
    return cfg.reference_prompt if cfg.with_reference else cfg.prompt


def prompt_versions(cfg: ImproverSFTStageConfig) -> dict[str, str]:
    return {"improver": load_prompt(prompt_name(cfg)).version}


def improver_examples(
    rows: list[dict], cfg: ImproverSFTStageConfig
) -> list[tuple[list[dict[str, str]], str]]:
    prompt = load_prompt(prompt_name(cfg))
    out = []
    targets = set(cfg.targets)
    for r in rows:
        if not r.get("kept") or r["target_type"] not in targets:
            continue
        fields = {"instruction": r["prompt"], "response": r["policy"]}
        if cfg.with_reference:
            fields["reference"] = r["reference"]
        out.append((after_turns(earlier_turns(r), prompt.render(**fields)), r["target"]))
    return out


@stage(
    "improver_sft",
    section="improver_sft",
    gpu=True,
    launcher=ACCELERATE,
    prompts=prompt_versions,
    # no code_version bump for the conversation: a table that carries `messages` is another input
    description="train pi_sft to improve its own responses on the filtered y_imp / y_ext -> pi_imp",
)
def improver_sft(
    job: Job, start: ArtifactRef, filtered: ArtifactRef, cfg: ImproverSFTStageConfig
) -> ArtifactRef:
    from sgpo.train.trainers import TrainingDataError, sft_and_publish

    examples = improver_examples(job.read_rows(filtered), cfg)
    if not examples:
        raise TrainingDataError(f"{filtered.uri}: no kept rows with target types {cfg.targets}")
    job.log.info("improver SFT on %d examples (targets %s)", len(examples), cfg.targets)
    return sft_and_publish(job, start, examples, cfg)


if __name__ == "__main__":
    raise SystemExit(stage_main(improver_sft))
