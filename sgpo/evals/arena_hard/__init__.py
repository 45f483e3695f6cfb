"""Arena-Hard v0.1, re-implemented from lm-sys/arena-hard-auto: `judge` (the judge protocol: official
settings, two games per question, the follow-up turn), `metrics` (verdict parsing, battles,
Bradley-Terry scores, bootstrap CIs) and `judgments` (the judgment records and their score).
What is reproduced, to which tolerance: docs/evaluation.md#arena-hard-v01."""
