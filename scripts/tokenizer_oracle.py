#!/usr/bin/env python3
"""Reference token ids for a corpus, from Hugging Face `tokenizers` (test tooling only).

  tokenizer_oracle.py --model GGUF --corpus DIR --out FILE
  tokenizer_oracle.py --model GGUF --compare EXPECTED ACTUAL
  tokenizer_oracle.py --pieces PRE --corpus DIR --out FILE

The tokenizer is rebuilt from the GGUF's vocabulary and merges with the pre-tokenizer the model
was trained with (DESIGN.md §3, "Tokenizer trap"): for tokenizer.ggml.pre = "smollm",
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)].
Control tokens (GGUF type 3) are special added tokens. Each file's bytes are decoded with
errors='replace' and encoded; files under special/ with special-token parsing (chat prompts),
all others without it (document text).

Output: one line per file, sorted by path: "relative/path<TAB>id id id ...".
--pieces writes, per file, the byte lengths of the pre-tokenizer's pieces for PRE = gpt2,
llama-bpe or qwen2 (the reference regexes as Hugging Face Split / ByteLevel pre-tokenizers), to
check the pre-tokenizers of models other than the default one.
--compare prints the first differing file and position with the tokens around it, exit 1.
"""
import argparse
import os
import sys

from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers



def read_spec(path):
    r = GGUFReader(path)

    def get(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    return {
        "model": get("tokenizer.ggml.model"),
        "pre": get("tokenizer.ggml.pre", "default"),
        "tokens": get("tokenizer.ggml.tokens"),
        "types": get("tokenizer.ggml.token_type"),
        "merges": get("tokenizer.ggml.merges"),
    }


def pre_tokenizer_for(pre):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        byte_level])
    if pre in ("gpt2", "default"):
        return byte_level
    raise SystemExit("oracle: no reference pre-tokenizer for tokenizer.ggml.pre = %r" % pre)


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")


def write_pieces(pre, root, out_path):
    if pre == "llama-bpe":
        split = pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated")
    elif pre == "qwen2":
        split = pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated")
    elif pre == "gpt2":
        split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise SystemExit("oracle: --pieces knows gpt2, llama-bpe, qwen2, not %r" % pre)
    with open(out_path, "w") as out:
        for rel in corpus_files(root):
            with open(os.path.join(root, rel), "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            lens = [len(text[a:b].encode("utf-8")) for _, (a, b) in split.pre_tokenize_str(text)]
            out.write("%s\t%s\n" % (rel, " ".join(map(str, lens))))


def build_tokenizer(spec):
    if spec["model"] != "gpt2":
        raise SystemExit("oracle: tokenizer.ggml.model %r is not byte-level BPE" % spec["model"])
    vocab = {t: i for i, t in enumerate(spec["tokens"])}
    merges = [tuple(m.split(" ")) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False,
                               byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizer_for(spec["pre"])
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(spec["tokens"], spec["types"]) if ty == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


def byte_to_unicode():
    """GPT-2's byte -> printable character map, as a list indexed by byte."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 256
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(extra))
            extra += 1
    return out


def corpus_files(root):
    paths = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            paths.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(paths, key=lambda p: p.encode("utf-8"))


def encode_corpus(tok, root, out_path):
    with open(out_path, "w") as out:
        for rel in corpus_files(root):
            with open(os.path.join(root, rel), "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            # encode_special_tokens=True: control tokens in the text stay plain text.
            tok.encode_special_tokens = not rel.startswith("special" + os.sep)
            ids = tok.encode(text, add_special_tokens=False).ids
            out.write("%s\t%s\n" % (rel, " ".join(map(str, ids))))


def load_ids(path):
    result = {}
    with open(path) as f:
        for line in f:
            rel, _, ids = line.rstrip("\n").partition("\t")
            result[rel] = [int(x) for x in ids.split()]
    return result


def compare(spec, expected_path, actual_path):
    expected = load_ids(expected_path)
    actual = load_ids(actual_path)
    tokens = spec["tokens"]
    char_to_byte = {c: b for b, c in enumerate(byte_to_unicode())}

    def token_bytes(i):
        if not 0 <= i < len(tokens):
            return b"?"
        if spec["types"][i] != 1:
            return tokens[i].encode("utf-8")
        return bytes(char_to_byte.get(c, 0x3F) for c in tokens[i])

    def show(ids):
        return " ".join("%d:%r" % (i, token_bytes(i)) for i in ids)

    if sorted(expected) != sorted(actual):
        print("file lists differ: only expected %s, only actual %s" %
              (sorted(set(expected) - set(actual))[:5], sorted(set(actual) - set(expected))[:5]))
        return 1
    total = 0
    for rel in sorted(expected):
        e, a = expected[rel], actual[rel]
        total += len(e)
        if e == a:
            continue
        k = next((i for i in range(min(len(e), len(a))) if e[i] != a[i]), min(len(e), len(a)))
        print("MISMATCH in %s at token %d (expected %d tokens, got %d)" % (rel, k, len(e), len(a)))
        print("  context : %s" % show(e[max(0, k - 5):k]))
        print("  expected: %s" % show(e[k:k + 8]))
        print("  actual  : %s" % show(a[k:k + 8]))
        return 1
    print("token ids identical: %d files, %d tokens" % (len(expected), total))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--pieces", metavar="PRE")
    ap.add_argument("--corpus")
    ap.add_argument("--out")
    ap.add_argument("--compare", nargs=2, metavar=("EXPECTED", "ACTUAL"))
    args = ap.parse_args()
    if args.pieces:
        if not args.corpus or not args.out:
            ap.error("--pieces needs --corpus and --out")
        write_pieces(args.pieces, args.corpus, args.out)
        return 0
    if not args.model:
        ap.error("--model is required")
    spec = read_spec(args.model)
    if args.compare:
        return compare(spec, *args.compare)
    if not args.corpus or not args.out:
        ap.error("--corpus and --out are required unless --compare is given")
    encode_corpus(build_tokenizer(spec), args.corpus, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
