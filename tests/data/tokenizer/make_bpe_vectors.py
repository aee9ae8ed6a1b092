#!/usr/bin/env python3
"""Ground truth for lowbit's tokenizer.json (byte-level BPE) tokenizer, made by Hugging Face `tokenizers` itself.

    .venv/bin/python tests/data/tokenizer/make_bpe_vectors.py    (needs `tokenizers`; pip install tokenizers)

Trains two small byte-level BPE tokenizers (vocabulary 2000) on ../shared/data/text/tinystories-calib.txt plus
the multilingual sentences below, and writes into tests/data/tokenizer/:

  gpt2-bpe/tokenizer.json    GPT-2's layout: pre_tokenizer ByteLevel (GPT-2 regex), ByteLevel post-processor (no
                             BOS), merges in the old "a b" string form, <|endoftext|> special with normalized true
                             (as GPT-2's file has it), plus added tokens with lstrip / rstrip / single_word.
  llama3-bpe/tokenizer.json  Llama 3's layout: Sequence[Split(Llama 3 regex, Isolated), ByteLevel(use_regex false)],
                             ignore_merges true (with 6 whole words added to the vocabulary that no merge makes,
                             as Llama 3's vocabulary has them), merges as [a, b] pairs, Sequence[ByteLevel,
                             TemplateProcessing] post-processor adding <|begin_of_text|>, special and non-special
                             added tokens.
  bpe_vectors.json           the input texts; their splits by each Split regex alone (byte lengths of the pieces
                             that pre_tokenizers.Split(Regex(r), "isolated") makes: the boundaries that the ids
                             below show only where a merge crosses them); per tokenizer variant: the JSON edits
                             that make it from its base file (json pointer -> new value; the C++ test applies the
                             same edits), the ids of encode(text, add_special_tokens=False) per text, the
                             template's ids before and after them (checked here against encode(text,
                             add_special_tokens=True) for every text), decode(ids, skip_special_tokens=True) where it
                             differs from the text, decodes of random id sequences, and (base files) of every id
                             alone (partial UTF-8 gives U+FFFD).

Variants: "qwen2" is the Llama 3 file with Qwen 2's regex (\\p{N} instead of \\p{N}{1,3}), an NFC normalizer,
ignore_merges false and a ByteLevel-only post-processor (no BOS), as Qwen 2's tokenizer.json has them;
"gpt2-prefix" is the GPT-2 file with add_prefix_space true and a template adding BOS and EOS.

Inputs: llama.cpp's 47 tokenizer test strings (../shared/data/tokenizer-tests/ggml-vocab-llama-spm.gguf.inp), hand
written hard cases (special tokens inside text, contractions in both cases, Unicode whitespace, combining marks,
digits runs) and 300 random strings drawn with a fixed seed from fragments of those. The script is deterministic:
rerunning it rewrites the same files.
"""
import copy
import json
import os
import random
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SHARED = os.path.abspath(os.path.join(ROOT, "..", "shared", "data"))

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Written for this file: a little of many scripts, so that the vocabulary holds multi-byte merges.
MULTILINGUAL = """\
Der kleine Hund läuft über die Straße. Äpfel, Öl und Übermut sind schön. Grüße aus München!
Le petit chat est très content. Où est la bibliothèque ? C'est l'été, et l'hôtel est fermé à Noël.
El niño comió una manzana. ¿Dónde está la estación? ¡Qué día tan bonito! Mañana será mejor.
O menino está feliz. A situação não é fácil, mas a coração é grande. Obrigado, até logo.
Маленькая собака бежит по улице. Привет, как дела? Сегодня хорошая погода, и мы идём гулять.
Το μικρό σκυλί τρέχει στον δρόμο. Καλημέρα, τι κάνεις; Η θάλασσα είναι γαλάζια.
小狗在街上跑。今天天气很好，我们去公园玩吧。我喜欢吃苹果和香蕉。你好，世界！
小さな犬が道を走っています。今日はいい天気ですね。りんごとバナナが好きです。こんにちは、世界！
작은 개가 길을 달리고 있습니다. 오늘 날씨가 좋네요. 안녕하세요, 세계!
الكلب الصغير يركض في الشارع. الطقس جميل اليوم. مرحبا بالعالم!
छोटा कुत्ता सड़क पर दौड़ रहा है। आज मौसम अच्छा है। नमस्ते दुनिया!
Küçük köpek sokakta koşuyor. Bugün hava çok güzel. Merhaba dünya!
Mały pies biegnie ulicą. Dziś jest piękna pogoda. Cześć, świecie! Żółw i źrebię.
🦙 llamas are great 🦙🦙 and so are 👍🏽 thumbs, 🎉 parties and ❤️ hearts. ✨ sparkle ✨
Numbers: 1234567890, 3.14159, 2,718, 100%, $42.50, 7th, 1st, 2nd, 3rd, 42nd, 1000000 and ٣٤٥ and ½ and ⅔.
Code: def f(x): return x ** 2  # comment\n\tif (a && b) { c++; } else { d--; }\r\n<html><body></body></html>
I'm sure you'll see we've done what they'd said. It's John's. DON'T SHOUT, I'LL LISTEN. We're here.
"""

IGNORE_MERGES_WORDS = [" llama", " Llamas", " über", "Straßenbahn", " 🦙", "'LL"]
SPECIAL_LLAMA3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]


def training_lines():
    with open(os.path.join(SHARED, "text", "tinystories-calib.txt"), encoding="utf-8") as f:
        stories = f.read()
    lines = [line for line in stories.splitlines(keepends=True) if line.strip() != "<|endoftext|>"]
    return lines + MULTILINGUAL.splitlines(keepends=True) * 3


def train(pre_tokenizer, special_tokens):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=special_tokens)
    tok.train_from_iterator(training_lines(), trainer)
    return tok


def make_gpt2():
    tok = train(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                [AddedToken("<|endoftext|>", special=True, normalized=True)])
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.add_special_tokens([AddedToken("<mask>", special=True, lstrip=True, normalized=False)])
    tok.add_tokens([AddedToken("[WORD]", single_word=True, normalized=False),
                    AddedToken("<|rstrip|>", rstrip=True, normalized=False, special=True),
                    AddedToken(" line break", normalized=True)])
    j = json.loads(tok.to_str())
    # GPT-2's own file predates the [a, b] pair form; byte-level tokens never hold a space, so "a b" is exact.
    j["model"]["merges"] = [f"{a} {b}" for a, b in j["model"]["merges"]]
    j["model"]["ignore_merges"] = False
    return j


def make_llama3():
    split = pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
    tok = train(pre_tokenizers.Sequence([split, byte_level]),
                [AddedToken(t, special=True, normalized=False) for t in SPECIAL_LLAMA3])
    # Whole words in the vocabulary that no merge makes, as Llama 3's vocabulary has: only ignore_merges emits them.
    j = json.loads(tok.to_str())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for word in IGNORE_MERGES_WORDS:
        piece = byte_level.pre_tokenize_str(word)[0][0]
        assert piece not in j["model"]["vocab"], word
        j["model"]["vocab"][piece] = len(j["model"]["vocab"])
    tok = Tokenizer.from_str(json.dumps(j))
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    tok.add_special_tokens([AddedToken("<|start_header_id|>", special=True, normalized=False),
                            AddedToken("<|end_header_id|>", special=True, normalized=False)])
    # Qwen 2.5 writes its tool tokens as added, not special; "cafe\u0301" matches after the normalizer (NFC in the
    # qwen2 variant: then it is "café" that matches).
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("cafe\u0301", special=False, normalized=True)])
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    return j


def variants(gpt2, llama3):
    qwen2 = {
        "/pre_tokenizer/pretokenizers/0/pattern/Regex": QWEN2_REGEX,
        "/normalizer": {"type": "NFC"},
        "/model/ignore_merges": False,
        "/post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    }
    eot = next(t["id"] for t in gpt2["added_tokens"] if t["content"] == "<|endoftext|>")
    gpt2_prefix = {
        "/pre_tokenizer/add_prefix_space": True,
        "/post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [eot], "tokens": ["<|endoftext|>"]}},
        },
    }
    return [("gpt2", "gpt2-bpe", {}), ("gpt2-prefix", "gpt2-bpe", gpt2_prefix), ("llama3", "llama3-bpe", {}),
            ("qwen2", "llama3-bpe", qwen2)]


def apply_edits(base, edits):
    j = copy.deepcopy(base)
    for pointer, value in edits.items():
        keys = pointer.split("/")[1:]
        node = j
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return j


def ggml_cases():
    with open(os.path.join(SHARED, "tokenizer-tests", "ggml-vocab-llama-spm.gguf.inp"), encoding="utf-8") as f:
        text = f.read()
    # 46 separators, the last at the end of the file: 47 inputs, the last one empty (as tokenizer_test.cpp reads them).
    return text.split("\n__ggml_vocab_test__\n")


HAND = [
    "",
    "Hello<|endoftext|>world",
    "<|endoftext|><|endoftext|> <|endoftext|>",
    "<|begin_of_text|>Hello<|eot_id|>\n\n<|start_header_id|>user<|end_header_id|>\n\nHi!",
    "partial <|endof and <|eot_id| and <|begin_of_text|",
    "a <mask> b   <mask>c<mask>",
    "x<|rstrip|>   y<|rstrip|>\n\nz",
    "[WORD] a[WORD] [WORD]b [WORD]. ([WORD]) é[WORD] 1[WORD] _[WORD]",
    "one line break two line breaks",
    "<tool_call>{\"name\": \"f\"}<tool_call>",
    "cafe\u0301 café cafe\u0301s",
    "'s 'S 't 'T 're 'Re 'rE 'RE 've 'VE 'm 'M 'll 'LL 'Ll 'd 'D 'ſ 'x '",
    "'ſt 'ſſ x'ſy 'Ste 'REd 'LLama '1 '\u00e9t\u00e9",
    "\nabc \rdef \r\nghi \u00a0jkl \tmno \u3000pqr !stu 1vwx \u0301yz",
    "I'M HERE, YOU'RE THERE, WE'VE BEEN, THEY'D GO, IT'S OK, DON'T, WE'LL",
    "don't   'twas   rock'n'roll   '''   ''s",
    " \u00a0\u3000\u2000\u2028\u2029\u202f\u205f\u1680\x85\x0b\x0c x",
    "a\x1cb\x1d c\x1e\x1f! \u200b\u200d\ufeff\u180e",
    "a\r\nb\rc\n\rd\r\r\n\n  \r\n  e  \n",
    "   \n\n\n   x   \t\t\n   ",
    "1 12 123 1234 12345 123456 1234567 ١٢٣٤ ½⅔ ²³ 12.5e-3",
    "e\u0301 A\u030a \u212b \u00c5 \u1e9b\u0323 q\u0307\u0323 \ufb01 \u2126",
    "🦙🦙 👍🏽👨‍👩‍👧 🇩🇪 ❤️ \U0001f600x",
    "中文字符测试，日本語のテスト、한국어 테스트。",
    "    leading and trailing    ",
    "tab\tseparated\tvalues\t\t",
    "!!!??? ... --- ___ *** ((( ))) [[[ ]]] {{{ }}}",
    "x" * 200,
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
]

FRAGMENTS = ["a", "b", "Z", "Lily", " the", "é", "e\u0301", "ſ", "'", "'s", "'S", "'ll", "'RE", " ", "  ", "\t",
             "\n", "\r\n", "\r", "\u00a0", "\u3000", "\x85", "\x1f", "1", "23", "4567", "٣", "½", "!", "?", "...",
             "—", "中", "文", "日本", "🦙", "👍🏽", "\u200d", "<|eot_id|>", "<|begin_of_text|>",
             "<|endoftext|>",
             "<mask>", "[WORD]", "<|rstrip|>", "<tool_call>", "café", "<|", "|>", "hello", " world", "Ω", "\u212b",
             "ﬁ", "x", "Ä", "ß", ",", ".", "(", ")"]


def random_cases(rng, count):
    out = []
    for _ in range(count):
        out.append("".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12))))
    return out


def load(j):
    return Tokenizer.from_str(json.dumps(j, ensure_ascii=False))


def ignore_merges_words(tok_json):
    """Pre-tokens whose whole form is in the vocabulary but that merges alone would not reach: the inputs on which
    ignore_merges decides the result."""
    j = copy.deepcopy(tok_json)
    j["model"]["ignore_merges"] = False
    plain = load(j)
    byte_decoder = decoders.ByteLevel()
    words = []
    for token, token_id in sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1]):
        text = byte_decoder.decode([token])
        if not text.strip() or "\ufffd" in text:
            continue
        if len(plain.encode(text, add_special_tokens=False).ids) > 1:
            words.append(text)
    return words


def main():
    rng = random.Random(20260622)
    gpt2 = make_gpt2()
    llama3 = make_llama3()
    files = {"gpt2-bpe": gpt2, "llama3-bpe": llama3}
    for name, j in files.items():
        os.makedirs(os.path.join(HERE, name), exist_ok=True)
        path = os.path.join(HERE, name, "tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"{path}: {os.path.getsize(path)} bytes, vocab {len(j['model']['vocab'])}, "
              f"merges {len(j['model']['merges'])}, added {len(j['added_tokens'])}")

    special_words = ignore_merges_words(llama3)
    print(f"llama3: {len(special_words)} vocabulary words that only ignore_merges reaches, e.g. {special_words[:8]}")
    texts = ggml_cases()
    assert len(texts) == 47, len(texts)
    texts += HAND
    if special_words:
        texts.append(" ".join(special_words[:40]))
    texts += random_cases(rng, 300)

    out = {"generator": "tests/data/tokenizer/make_bpe_vectors.py",
           "tokenizers_version": __import__("tokenizers").__version__, "texts": texts, "splits": {}, "variants": []}
    for name, regex in (("gpt2", GPT2_REGEX), ("llama3", LLAMA3_REGEX), ("qwen2", QWEN2_REGEX)):
        split = pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
        out["splits"][name] = [[len(piece.encode("utf-8")) for piece, _ in split.pre_tokenize_str(t)] for t in texts]
    for name, base, edits in variants(gpt2, llama3):
        tok = load(apply_edits(files[base], edits))
        vocab_size = tok.get_vocab_size(with_added_tokens=True)
        # The template's special tokens around $A, read back from what encode() adds to an empty input.
        around = tok.encode("", add_special_tokens=True).ids
        plain_empty = tok.encode("", add_special_tokens=False).ids
        assert plain_empty == [], plain_empty
        a = tok.encode("a", add_special_tokens=False).ids
        with_a = tok.encode("a", add_special_tokens=True).ids
        start = with_a.index(a[0]) if a else 0
        prefix, suffix = with_a[:start], with_a[start + len(a):]
        assert prefix + suffix == around, (prefix, suffix, around)
        ids, decoded = [], {}
        for index, text in enumerate(texts):
            plain = tok.encode(text, add_special_tokens=False).ids
            assert tok.encode(text, add_special_tokens=True).ids == prefix + plain + suffix, text
            ids.append(plain)
            d = tok.decode(plain, skip_special_tokens=True)
            if d != text:
                decoded[str(index)] = d
        decodes = []
        for _ in range(100):
            seq = [rng.randrange(vocab_size) for _ in range(rng.randint(1, 6))]
            decodes.append([seq, tok.decode(seq, skip_special_tokens=True)])
        variant = {"name": name, "base": base, "edits": edits, "vocab_size": vocab_size, "prefix": prefix,
                   "suffix": suffix, "ids": ids, "decoded": decoded, "decodes": decodes}
        if not edits:  # every id alone (partial UTF-8 becomes U+FFFD, special tokens nothing), base files only
            variant["decoded_each"] = [tok.decode([i], skip_special_tokens=True) for i in range(vocab_size)]
        out["variants"].append(variant)
        differs = 0
        if name == "llama3":
            plain_tok = load(apply_edits(files[base], {"/model/ignore_merges": False}))
            differs = sum(plain_tok.encode(t, add_special_tokens=False).ids != i for t, i in zip(texts, ids))
        print(f"{name}: {len(texts)} texts ({len(decoded)} decode to other text), prefix {prefix}, suffix {suffix}"
              + (f", {differs} texts change without ignore_merges" if name == "llama3" else ""))
    path = os.path.join(HERE, "bpe_vectors.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    sys.exit(main())
