// The tokenizer of a Hugging Face model folder: text <-> token ids.
//
// Supported: SentencePiece models (tokenizer.model: Llama 1/2, Mistral, TinyLlama, stories15M), through
// the SentencePiece library, so ids are exactly those of SentencePiece and of transformers' slow
// LlamaTokenizer (legacy mode). Special tokens follow tokenizer_config.json: add_bos_token (default true)
// and add_eos_token (default false); bos/eos ids come from the SentencePiece model.
//
// Not yet supported: tokenizer.json byte-level BPE (Llama 3, Qwen 2); loading such a folder throws
// Unsupported saying so.
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
  // Reads `folder`/tokenizer.model and, when present, `folder`/tokenizer_config.json. Throws IO (missing or
  // unreadable model, naming the folder), Corrupt (a model SentencePiece rejects, bad JSON) or Unsupported
  // (a folder with only tokenizer.json).
  static Tokenizer load(const std::filesystem::path& folder);
  // A SentencePiece model file on its own, with the given special-token policy.
  static Tokenizer from_sentencepiece(const std::filesystem::path& model_file, bool add_bos = true,
                                      bool add_eos = false);

  // Token ids of `text`; with add_special, BOS and EOS as the configuration says.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special = true) const;
  // Text of `ids`; control tokens (BOS, EOS, padding) produce nothing. Ids outside the vocabulary throw
  // InvalidArgument naming the id.
  std::string decode(std::span<const std::int32_t> ids) const;
  // The piece of one id as the model stores it ("▁Hello", "<0x0A>", "<s>").
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
