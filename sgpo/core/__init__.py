"""The stage framework: declaration, cache key, running, Job, the Prefect adapter, the stage CLI,
launching, tracking and progress. It knows no ML: training, LLM and evaluation code reach it as
hooks of a stage's declaration."""
