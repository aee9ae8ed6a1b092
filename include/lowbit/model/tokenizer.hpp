// The tokenizer of a Hugging Face model folder: text <-> token ids. load(folder) reads tokenizer.model when the
// folder has one, else tokenizer.json.
//
// SentencePiece (tokenizer.model: Llama 1/2, Mistral, TinyLlama, stories15M), through the SentencePiece library, so
// ids are exactly those of SentencePiece and of transformers' slow LlamaTokenizer (legacy mode). Special tokens
// follow tokenizer_config.json: add_bos_token (default true) and add_eos_token (default false); bos/eos ids come from
// the SentencePiece model.
//
// Byte-level BPE (tokenizer.json: GPT-2, Llama 3, Qwen 2), written here (Debian packages no C++ reader of these
// files) to give the ids of Hugging Face `tokenizers`, whose steps encode() runs in its order:
//   1. Added tokens are cut out of the text first, leftmost-longest: those marked normalized false in the text as
//      given, those marked normalized true in the normalized text. lstrip / rstrip give the white space beside a
//      match to the token; single_word skips a match with a word character (\w) beside it. Special or not, an added
//      token in the text is its id whatever add_special says (as in the library).
//   2. Normalizer: none, or NFC (ICU).
//   3. Pre-tokenizer: ByteLevel alone (splitting by GPT-2's regex when use_regex; add_prefix_space puts a space
//      before each piece not starting with one), or Split steps (behavior Isolated) before ByteLevel, as Llama 3
//      and Qwen 2 write it. The regexes are matched by hand code, not a regex engine: GPT-2's, Llama 3's (digits in
//      runs of up to 3) and Qwen 2's (single digits); any other pattern is refused, naming it.
//   4. BPE on the bytes of each pre-token (shown as GPT-2's byte-level characters: ' ' is 'Ġ'): merges in rank
//      order; with ignore_merges (Llama 3) a pre-token that is whole in the vocabulary is that one id.
//   5. Post-processor: the single template of TemplateProcessing (alone or after ByteLevel in a Sequence) gives the
//      ids that encode(text, true) puts before and after the text's.
// decode() turns pieces back into bytes (the ByteLevel decoder) and bytes into text, each invalid UTF-8 sequence
// becoming U+FFFD, as the library does; special added tokens produce nothing (skip_special_tokens=True). From
// tokenizer_config.json: bos_token / eos_token name BOS and EOS (else they are the template's one token before /
// after the text, if it has exactly one); add_bos_token / add_eos_token, when either is given, replace the template
// by [BOS] text [EOS] as transformers does. vocab_size() is the largest id + 1, added tokens included.
// Refused (Unsupported, naming the component): other normalizers, pre-tokenizers and Split patterns, byte_fallback
// (Llama 2's SentencePiece-style BPE: use its tokenizer.model), dropout, subword prefixes / suffixes, decoders
// other than ByteLevel, post-processors other than ByteLevel / TemplateProcessing. Not done: transformers'
// clean_up_tokenization_spaces on decode.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowbit::model {

class Tokenizer {
 public:
  // Reads `folder`/tokenizer.model, or else `folder`/tokenizer.json, and `folder`/tokenizer_config.json when present.
  // Throws IO (neither file, or one unreadable, naming the folder), Corrupt (a model SentencePiece rejects, bad JSON,
  // a tokenizer.json contradicting itself: a merge of unknown pieces, two pieces with one id) or Unsupported (a
  // tokenizer.json component outside the list above).
  static Tokenizer load(const std::filesystem::path& folder);
  // A SentencePiece model file on its own, with the given special-token policy.
  static Tokenizer from_sentencepiece(const std::filesystem::path& model_file, bool add_bos = true,
                                      bool add_eos = false);

  // Token ids of `text`; with add_special, BOS and EOS as the configuration says. tokenizer.json: throws
  // InvalidArgument for text that is not valid UTF-8, naming the byte.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special = true) const;
  // Text of `ids`; control tokens (BOS, EOS, padding; in tokenizer.json the special added tokens) produce nothing.
  // Ids outside the vocabulary throw InvalidArgument naming the id.
  std::string decode(std::span<const std::int32_t> ids) const;
  // The piece of one id as the model stores it ("▁Hello", "<0x0A>", "<s>"; byte-level BPE: "Ġhello", "<|eot_id|>").
  std::string piece(std::int32_t id) const;

  std::int32_t vocab_size() const noexcept;
  std::int32_t bos_id() const noexcept;  // -1 when the model has none
  std::int32_t eos_id() const noexcept;
  bool add_bos() const noexcept;
  bool add_eos() const noexcept;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace lowbit::model
