"""A tiny model that behaves like SmolLM2-135M-Instruct where the product can tell the difference,
built in the test itself (no 93 MB package): SmolLM2's chat template verbatim (with its default
system turn), its special tokens at its ids (<|endoftext|> 0 = unk, <|im_start|> 1 = bos,
<|im_end|> 2 = eos = pad), no BOS on plain text, a Llama architecture with its module names
(q/k/v/o_proj, gate/up/down_proj), generation_config eos = pad = 2, saved the way the GGUF converter
saves SmolLM2 (tokenizer_class PreTrainedTokenizerFast, chat_template.jinja).

`script` makes generation deterministic without training: the model's blocks add nothing (o_proj
and down_proj are zero), so each position's logits depend on its own token only, and the LM head
maps each scripted token to its successor. {"\\n": "Hi", "Hi": "<|im_end|>"} answers every chat
prompt (which ends "<|im_start|>assistant\\n") with "Hi" and stops; {"\\n": "<|im_end|>"} answers
nothing at all.
"""

from __future__ import annotations

from pathlib import Path

# SmolLM2-135M-Instruct's chat template, verbatim (its tokenizer_config.json / the GGUF's
# tokenizer.chat_template; /work/spike/NOTES.md section 4)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT_SYSTEM_TURN = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "system user assistant Hi Hello there! The capital of France is Paris.",
    "Write a short answer. Rewrite the answer to improve it. Response A Response B",
    "The quick brown fox jumps over the lazy dog. 1, 2, 3, 42.",
] * 4


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIALS) + 256 + 120,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=512,
    )
    fast.chat_template = SMOLLM2_TEMPLATE
    assert [fast.convert_tokens_to_ids(s) for s in SPECIALS] == [0, 1, 2]
    return fast


def token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is {len(ids)} tokens in the test tokenizer"
    return ids[0]


def build_smol_like(
    out_dir: str | Path, *, script: dict[str, str] | None = None, seed: int = 0, hidden: int = 64
) -> Path:
    """Save the SmolLM2-like model and tokenizer in `out_dir` (see the module docstring)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tok = build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=script is None,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    if script is not None:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            emb = model.model.embed_tokens.weight
            emb.copy_(torch.randn_like(emb))
            model.model.norm.weight.fill_(1.0)
            head = model.lm_head.weight
            head.zero_()
            for token, successor in script.items():
                t, s = token_id(tok, token), token_id(tok, successor)
                h = emb[t] / emb[t].pow(2).mean().sqrt()  # the final RMSNorm of token t's embedding
                head[s] += (
                    h  # logit of s at t: |h|^2 = hidden; at any other token about +-3 sqrt(hidden)
                )
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
