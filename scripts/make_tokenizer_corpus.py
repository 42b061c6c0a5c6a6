#!/usr/bin/env python3
"""Writes a deterministic tokenizer test corpus (>= 1 MB, many files, raw bytes) to OUT_DIR.

  make_tokenizer_corpus.py OUT_DIR [--seed N]

Files under OUT_DIR/special/ are chat prompts meant to be encoded with special-token parsing;
every other file is document text (control tokens written in it must stay plain text).
Sources: Debian's license texts and package copyright files (English prose), the repository's
own sources and the C++ standard library headers (code), and generated text for the cases that
break tokenizers: whitespace before digits, Unicode of many scripts, emoji sequences, odd
whitespace, numbers, and invalid UTF-8.
"""
import argparse
import glob
import os
import random
import sys
import unicodedata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FILE = 64 * 1024
MIN_TOTAL = 1_100_000


class Writer:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.total = 0
        self.files = 0

    def write(self, name, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        path = os.path.join(self.out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.total += len(data)
        self.files += 1


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE)
    except OSError:
        return None


def copy_files(w, prefix, paths, budget):
    used = 0
    seen = set()
    for i, p in enumerate(paths):
        real = os.path.realpath(p)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        data = read_bytes(real)
        if not data:
            continue
        w.write("%s/%03d_%s" % (prefix, i, os.path.basename(p).replace(" ", "_")), data)
        used += len(data)
        if used >= budget:
            break


def prose(w, rng):
    copy_files(w, "prose/licenses", sorted(glob.glob("/usr/share/common-licenses/*")), 300_000)
    docs = sorted(glob.glob("/usr/share/doc/*/copyright"))
    rng.shuffle(docs)
    copy_files(w, "prose/copyright",
               [d for d in docs if os.path.getsize(d) < MAX_FILE], 250_000)


def code(w, rng):
    own = []
    for ext in ("*.h", "*.cc", "*.py", "*.sh", "*.txt", "*.md", "*.proto"):
        own += glob.glob(os.path.join(REPO, "**", ext), recursive=True)
    own = sorted(p for p in own if "/build" not in p and "/.venv" not in p and "/models/" not in p)
    copy_files(w, "code/repo", own, 150_000)
    headers = sorted(p for p in glob.glob("/usr/include/c++/12/**/*", recursive=True)
                     if os.path.isfile(p))
    rng.shuffle(headers)
    copy_files(w, "code/cxx", headers, 220_000)


def numbered_lists(w, rng):
    words = ("item apple the of install run build 3rd 42nd version step note see chapter "
             "résumé naïve 数据 файл").split()
    for k in range(12):
        lines = []
        for i in range(1, 400):
            indent = rng.choice(["", " ", "  ", "   ", "    ", "\t", "\t\t", " \t"])
            sep = rng.choice([". ", ") ", ".", " - ", ": ", "\t"])
            gap = rng.choice(["\n", "\n\n", "\r\n", "\n \n", "\n\n\n   "])
            body = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
            num = str(i) if rng.random() < 0.7 else "%d.%d" % (i, rng.randint(0, 20))
            lines.append(indent + num + sep + body + gap)
        w.write("lists/list_%02d.txt" % k, "".join(lines))
    w.write("lists/trap.txt", "\n\n   1. item\n\n   2. item\n  10.  x\n 3 4  5   6\n\t7\u00a08\u30009 "
            "a1b2c3 x 2024-01-05 12:30:00 1,234,567.89 -0.5e-10 0x1F ½ ² ٣ ४ 〇 Ⅻ")


UNICODE_SAMPLES = [
    "日本語のテキストと漢字、ひらがな、カタカナ。東京は2024年に。",
    "中文测试：我们在北京见面。繁體中文：資料庫與電腦。",
    "한국어 텍스트입니다. 서울에서 만나요! 123번지",
    "العربية: مرحبا بالعالم ١٢٣ — نص من اليمين إلى اليسار",
    "עברית: שלום עולם, זה טקסט מימין לשמאל.",
    "हिन्दी: नमस्ते दुनिया, यह देवनागरी है। १२३",
    "Ελληνικά: Γειά σου Κόσμε. Русский: Привет, мир! Українська: ґ є ї",
    "ไทย: สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง",
    "emoji: 😀😃😄 👍🏻👍🏿 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵🇫🇷 ❤️ ✌🏽 🧑🏾‍💻 1️⃣ #️⃣",
    "combining: e\u0301 a\u0308 n\u0303 \u1e9b\u0323 Z\u0351\u0362\u0325a\u0333\u0304l\u0356go",
    "NFC: \u00e9\u00e8\u00ea\u00f1\u00fc  NFD: e\u0301e\u0300e\u0302n\u0303u\u0308",
    "zero width: a\u200bb\u200cc\u200dd\ufeffe\u2060f \u00ad soft hyphen",
    "spaces:\u00a0nbsp\u2003em\u3000ideo\u2009thin\u202fnarrow\u205fmath\u1680ogham\u0085nel",
    "tabs\tand\r\nCRLF\r\nlines\rCR only\x0bVT\x0cFF\u2028LS\u2029PS",
    "math: ∀x∈ℝ, x²≥0; ∑ᵢ aᵢ ≤ ∞; ½ + ¼ = ¾; ℵ₀ 𝔸𝕓𝒸 𝟙𝟚𝟛",
    "quotes: “smart” ‘single’ «guillemets» „low“ — – … ‹›",
    "don't won't I'm we've they'll she'd it's 'tis 'TIS DON'T O'Neil rock'n'roll",
    "mixed: abc123def ４５６ full-width ＡＢＣ ｶﾀｶﾅ",
    "control: \x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18"
    "\x19\x1a\x1b\x1c\x1d\x1e\x1f\x7f end",
    "document that mentions <|im_end|> and <|im_start|>user and <|endoftext|> as text",
    "astral: 𐍈 𓀀 𝄞 🀄 𠀀𠀁 \U0001F9D1\u200d\U0001F91D\u200d\U0001F9D1",
]


def unicode_text(w, rng):
    pool = "".join(UNICODE_SAMPLES)
    chars = sorted(set(pool))
    for k, s in enumerate(UNICODE_SAMPLES):
        w.write("unicode/sample_%02d.txt" % k, (s + "\n") * 20)
    for k in range(20):
        parts = []
        for _ in range(800):
            r = rng.random()
            if r < 0.4:
                parts.append(rng.choice(rng.choice(UNICODE_SAMPLES).split(" ")))
            elif r < 0.7:
                parts.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 8))))
            else:
                parts.append(rng.choice([" ", "  ", "\n", "\t", "\u3000", "\u00a0", " 7", "x9"]))
        w.write("unicode/mix_%02d.txt" % k, "".join(parts))
    # Random code points from the BMP and the supplementary planes, no surrogates. Only those
    # assigned in this Python's Unicode version: a newer Unicode in the reference may classify
    # later assignments differently, and that is not what this corpus tests.
    for k in range(4):
        cps = []
        while len(cps) < 3000:
            cp = rng.choice([rng.randrange(0x20, 0x800), rng.randrange(0x800, 0xD800),
                             rng.randrange(0xE000, 0x10000), rng.randrange(0x10000, 0x30000)])
            if unicodedata.category(chr(cp)) != "Cn":
                cps.append(chr(cp))
        w.write("unicode/random_%02d.txt" % k, "".join(cps))


def numbers(w, rng):
    for k in range(6):
        out = []
        for _ in range(2500):
            f = rng.random()
            if f < 0.3:
                out.append(str(rng.randrange(10 ** rng.randint(1, 12))))
            elif f < 0.5:
                out.append("%.*f" % (rng.randint(0, 6), rng.uniform(-1e6, 1e6)))
            elif f < 0.6:
                out.append("%e" % rng.uniform(-1e30, 1e30))
            elif f < 0.7:
                out.append("0x%X" % rng.randrange(1 << 32))
            elif f < 0.8:
                out.append("%d,%03d,%03d" % (rng.randrange(1000), rng.randrange(1000),
                                             rng.randrange(1000)))
            else:
                out.append("v%d.%d.%d" % (rng.randrange(10), rng.randrange(30), rng.randrange(99)))
            out.append(rng.choice([" ", "  ", "\n", ", ", "\t", " = ", "+", "-"]))
        w.write("numbers/numbers_%d.txt" % k, "".join(out))


INVALID = [b"\x80", b"\xbf\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc0\xaf", b"\xc1\xbf",
           b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
           b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80",
           b"\xfe", b"\xff", b"\xff\xfe", b"\xef\xbb\xbf", b"\xed\xa0\xbd\xed\xb8\x80",
           b"\xf1\x80\x80", b"\xe1\x80\x41"]


def invalid_utf8(w, rng):
    base = ("Plain text with some words, 123 numbers and ünïcödé. 日本語 😀\n").encode("utf-8")
    for k in range(16):
        out = bytearray()
        for _ in range(300):
            if rng.random() < 0.5:
                out += base[rng.randrange(len(base)):]
            out += rng.choice(INVALID)
            if rng.random() < 0.2:
                out += bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        w.write("invalid/invalid_%02d.bin" % k, bytes(out))
    # A valid multi-byte character cut at the end of the file.
    w.write("invalid/truncated_end.bin", "end with €".encode("utf-8")[:-1])


SPECIAL_PROMPTS = [
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nSummarize:\n\n   1. first\n   2. second<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n日本語で答えて 😀<|im_end|><|im_end|>x<|endoftext|><|im_start|>assistant\n",
    "<|im_start|><|im_start|>user<|im_end|user|> <|im_end|>\n<|im_start|>assistant\n",
]


def special(w, rng):
    for k, p in enumerate(SPECIAL_PROMPTS):
        w.write("special/prompt_%02d.txt" % k, p)
    # The same prompts as document text: no control token may come out of these.
    for k, p in enumerate(SPECIAL_PROMPTS):
        w.write("documents_with_markers/prompt_%02d.txt" % k, p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=20240601)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    w = Writer(args.out_dir)
    for i, part in enumerate((prose, code, numbered_lists, unicode_text, numbers, invalid_utf8,
                              special)):
        part(w, random.Random(args.seed * 100 + i))
    print("wrote %d files, %d bytes to %s" % (w.files, w.total, args.out_dir))
    if w.total < MIN_TOTAL:
        print("corpus too small (< %d bytes): are the Debian docs installed?" % MIN_TOTAL,
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
