"""GGUF files written in the tests themselves: a tiny llama model transformers loads (needs the
`gguf` package), and minimal headers written with the standard library (for the bad inputs).

`write_tiny_gguf`: a seeded random LlamaForCausalLM (hidden 32, 2 layers, 4 heads / 2 KV heads as
in SmolLM2's GQA) and a byte-level BPE trained in-process (3 ChatML specials at ids 0-2 as in
SmolLM2 + 256 byte symbols + 40 merges), about 120 KB, written in ~15 ms. What transformers'
legacy GGUF loader needs for `general.architecture == "llama"` (read from 5.24's
modeling_gguf_pytorch_utils and integrations/gguf): the llama.* config keys below; the
tokenizer.ggml.* keys (model "gpt2" = byte-level BPE, token_type 3 = CONTROL -> special token);
gguf tensor names, with attn_q / attn_k rows permuted the llama.cpp way (the loader un-permutes
them). A `general.name` containing "mistral" would turn the model into a Mistral one.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Answer the question in one short sentence.",
    "user assistant system: what is 12 + 30? The answer is 42.",
    "Hello, world! Hello there, how are you today?",
] * 4


def train_tokenizer(extra_merges: int = 40):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIALS) + 256 + extra_merges,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def permute_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf LlamaModel.permute (rotary halves -> interleaved pairs)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def tiny_llama(vocab_size: int, tie: bool = True, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # large random weights: attention (and a wrong Q/K permutation) matters
        for p in model.parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if p.ndim == 1 else 0.3 * torch.randn_like(p))
    return model


def write_tiny_gguf(path: str | Path, tie: bool = True, seed: int = 0, name: str = "tiny-llama"):
    """Write the tiny llama GGUF at `path`; returns (path, the HF model, the tokenizers.Tokenizer)."""
    import json

    import gguf

    path = Path(path)
    tok = train_tokenizer()
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[s] for s in SPECIALS] == [0, 1, 2]
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    model = tiny_llama(len(tokens), tie=tie, seed=seed)
    c = model.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}

    arch = "llama"
    w = gguf.GGUFWriter(str(path), arch)  # writes general.architecture
    w.add_name(name)
    w.add_uint32(f"{arch}.context_length", c.max_position_embeddings)
    w.add_uint32(f"{arch}.embedding_length", c.hidden_size)
    w.add_uint32(f"{arch}.block_count", c.num_hidden_layers)
    w.add_uint32(f"{arch}.feed_forward_length", c.intermediate_size)
    w.add_uint32(f"{arch}.attention.head_count", c.num_attention_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", c.num_key_value_heads)
    w.add_uint32(f"{arch}.rope.dimension_count", c.head_dim)
    w.add_float32(f"{arch}.rope.freq_base", float(c.rope_parameters["rope_theta"]))
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    w.add_uint32(f"{arch}.vocab_size", c.vocab_size)
    w.add_uint32("general.file_type", 0)  # ALL_F32
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3 CONTROL, 1 NORMAL
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)

    layer = "model.layers.{}."
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        p = layer.format(i)
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute_for_gguf(q, c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute_for_gguf(k, c.num_key_value_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not tie:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, model, tok


def write_minimal_gguf(path: str | Path, arch: str = "llama", n_floats: int = 8) -> Path:
    """A GGUF v3 file written with the standard library: general.architecture and one F32 tensor
    of `n_floats` values. Not a loadable model; enough for the header checks."""

    def string(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)  # version, tensors, metadata keys
    header += string("general.architecture") + struct.pack("<I", 8) + string(arch)
    header += string("token_embd.weight") + struct.pack("<I", 1) + struct.pack("<Q", n_floats)
    header += struct.pack("<IQ", 0, 0)  # type F32, offset 0 in the data section
    header += b"\0" * (-len(header) % 32)  # data starts at the default alignment
    path = Path(path)
    path.write_bytes(header + np.arange(n_floats, dtype="<f4").tobytes())
    return path
