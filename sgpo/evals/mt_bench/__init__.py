"""MT-Bench, as lm-sys/FastChat's `llm_judge` runs it: `generation` (the questions, each category's
temperature, both turns in one conversation), `judge` (single-answer grading: official prompts,
reference answers, the rating regexes) and `scores` (turn 1, turn 2, overall, per category).
What is reproduced: docs/evaluation.md#mt-bench."""
