"""Training: TRL glue (SFT, DPO, reference log-probs), checkpoints, LoRA, throughput, and SAPO's loop."""
