#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF with random weights, for checking llmbatch against a
real llama.cpp server (scripts/llama-server-check.sh). It answers gibberish, at a steady pace:
that is all a latency check needs, and no model has to be downloaded.

usage: tiny_gguf.py OUT.gguf [--embd N] [--layers N]
"""

import argparse

import numpy as np
from gguf import GGUFWriter, TokenType


def vocab():
    """A SentencePiece-style vocabulary: specials, the 256 byte tokens, then common pieces."""
    tokens = [("<unk>", TokenType.UNKNOWN), ("<s>", TokenType.CONTROL), ("</s>", TokenType.CONTROL)]
    tokens += [(f"<0x{b:02X}>", TokenType.BYTE) for b in range(256)]
    pieces = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["\u2581" + w for w in "the a of and to in is it you that he was for on are with as".split()]
    pieces += [chr(c) for c in range(ord("A"), ord("Z") + 1)] + list(".,!?'-:;0123456789")
    tokens += [(p, TokenType.NORMAL) for p in pieces]
    return tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--embd", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    args = ap.parse_args()
    n_embd, n_layer, n_head = args.embd, args.layers, 6
    n_ff = 4 * n_embd
    toks = vocab()
    n_vocab = len(toks)
    rng = np.random.default_rng(13)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    g = GGUFWriter(args.out, "llama")
    g.add_name("llmbatch-tiny")
    g.add_context_length(2048)
    g.add_embedding_length(n_embd)
    g.add_block_count(n_layer)
    g.add_feed_forward_length(n_ff)
    g.add_head_count(n_head)
    g.add_head_count_kv(n_head)
    g.add_rope_dimension_count(n_embd // n_head)
    g.add_layer_norm_rms_eps(1e-5)
    g.add_file_type(0)  # all F32
    g.add_tokenizer_model("llama")
    g.add_token_list([t for t, _ in toks])
    g.add_token_scores([-float(i) for i in range(n_vocab)])
    g.add_token_types([int(k) for _, k in toks])
    g.add_bos_token_id(1)
    g.add_eos_token_id(2)
    g.add_unk_token_id(0)
    g.add_chat_template(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    g.add_tensor("token_embd.weight", w(n_vocab, n_embd))
    g.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    g.add_tensor("output.weight", w(n_vocab, n_embd))
    for i in range(n_layer):
        b = f"blk.{i}"
        g.add_tensor(f"{b}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            g.add_tensor(f"{b}.{name}.weight", w(n_embd, n_embd))
        g.add_tensor(f"{b}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        g.add_tensor(f"{b}.ffn_gate.weight", w(n_ff, n_embd))
        g.add_tensor(f"{b}.ffn_up.weight", w(n_ff, n_embd))
        g.add_tensor(f"{b}.ffn_down.weight", w(n_embd, n_ff))
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    print(f"wrote {args.out}: llama, {n_layer} layers, {n_embd} wide, {n_vocab} tokens")


if __name__ == "__main__":
    main()
