"""Where a run's data and base model come from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sgpo.config.sections import Section, optional_field


class DatasetSpec(Section):
    """Where a dataset comes from and which columns hold the prompt and the reference response.

    `path` is a hub id (loaded with `datasets.load_dataset`), a local .json/.jsonl/.parquet file,
    or `bundled:NAME` for files shipped in `sgpo/data/bundled`. With no column given, the loader looks for
    a chat `messages` column, then `chosen` (preference sets), then `prompt` + `response`.
    """

    path: str = Field(description="Hub id, local file, or bundled:NAME")
    name: str | None = Field(None, description="Dataset configuration name on the hub")
    split: str = Field("train", description="Split to load, e.g. train_sft")
    revision: str | None = Field(
        None, description="Hub revision (commit or tag) for reproducibility"
    )
    prompt_column: str | None = Field(None, description="Column with the instruction")
    response_column: str | None = Field(None, description="Column with the reference response")
    messages_column: str | None = Field(
        None, description="Column with a chat (list of {role, content})"
    )
    max_rows: int | None = Field(
        None, ge=1, description="Keep only the first N rows (after shuffling)"
    )
    shuffle_seed: int | None = Field(None, description="Shuffle with this seed before max_rows")
    turns: Literal["last", "all"] = Field(
        "last",
        description="Chats: 'last' = one row per chat, the conversation up to its final assistant answer (the "
        "reference); 'all' = one row per assistant turn (SFT on every turn of a dialogue, as on UltraChat)",
    )
    preference_pairs: bool = Field(
        False,
        description="Read chosen/rejected preference pairs (the DPO baseline's data, e.g. UltraFeedback train_prefs): "
        "columns chosen_column / rejected_column, chats or strings",
    )
    chosen_column: str = Field(
        "chosen", description="preference_pairs: column with the chosen answer (chat or string)"
    )
    rejected_column: str = Field(
        "rejected", description="preference_pairs: column with the rejected answer"
    )


class TinyModelConfig(Section):
    """The locally built tiny model (used when model.name_or_path == 'tiny')."""

    vocab_size: int = Field(1024, ge=300, description="BPE vocabulary size")
    hidden_size: int = Field(
        128, ge=1, description="Hidden size; hidden/heads = 64 so vLLM can serve it"
    )
    num_attention_heads: int = Field(2, ge=1, description="Attention heads")
    num_hidden_layers: int = Field(2, ge=1, description="Transformer layers")
    intermediate_size: int = Field(256, ge=1, description="MLP hidden size")
    max_position_embeddings: int = Field(1024, ge=1, description="Longest sequence in tokens")
    seed: int = Field(0, description="Seed of the tiny model's initial weights")


class ModelSpec(Section):
    name_or_path: str = Field(
        "tiny",
        description="The base model: a hub id, a local checkpoint dir, a GGUF file (*.gguf) or a "
        "packaged model (packaged:SmolLM2-135M-Instruct), both converted once into the store; 'tiny' "
        "builds one locally",
    )
    revision: str | None = Field(None, description="Hub revision")
    trust_remote_code: bool = Field(
        False, description="Run model code from the hub (off unless you trust it)"
    )
    chat_template: str | None = optional_field(
        "Chat template given to the base model's tokenizer (a named one: chatml, zephyr; or a Jinja "
        "string): a raw base that training starts from directly (`start: base`, the SAPO paper's "
        "ORPO-based methods) needs one. When set, base_model stores a copy of the model with it"
    )
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig,
        description="The tiny model's shape (name_or_path=tiny only)",
    )


class DataConfig(Section):
    sft: DatasetSpec = Field(description="D_sft: SFT data (UltraChat-200k train_sft in the paper)")
    improver: DatasetSpec = Field(
        description="D_imp: prompts + SFT responses for improver data (dpo-mix-7k)"
    )
    po: DatasetSpec = Field(
        description="D_po: prompts + SFT references for preference optimisation"
    )
    eval: DatasetSpec = Field(description="Judging prompts with baseline answers")
    prefs: DatasetSpec | None = Field(
        None,
        description="Preference pairs for the DPO baseline (UltraFeedback train_prefs; preference_pairs: true)",
    )
    sapo: DatasetSpec | None = Field(
        None,
        description="(x, y+) rows for SAPO (Distilabel-Capybara: the dialogue up to the final user turn, "
        "and the chosen final answer)",
    )
