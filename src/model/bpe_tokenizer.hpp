// Private to src/model: the byte-level BPE tokenizer of a Hugging Face tokenizer.json (GPT-2, Llama 3, Qwen 2),
// behind Tokenizer (include/lowbit/model/tokenizer.hpp says what is supported and how it matches the
// `tokenizers` library step by step).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lowbit::model::detail {

// The regexes of a Split pre-tokenizer that lowbit matches by hand (bpe_tokenizer.cpp has the exact strings).
enum class SplitPattern : std::uint8_t { Gpt2, Llama3, Qwen2 };

// The pre-tokens of `text` (valid UTF-8) under one of those regexes: its successive matches, which cover the text
// (the library's Split with behavior Isolated). Used by the tokenizer, and by tests against the library's splits.
std::vector<std::string> split_pretokens(std::string_view text, SplitPattern pattern);

class BpeTokenizer {
 public:
  // Parses `json_file`; `config_file` (tokenizer_config.json) is read when it exists. Throws IO, Corrupt (bad JSON,
  // a field of the wrong type, a merge naming an unknown token) or Unsupported (naming the component).
  static BpeTokenizer load(const std::filesystem::path& json_file, const std::filesystem::path& config_file);

  std::vector<std::int32_t> encode(std::string_view text, bool add_special) const;
  std::string decode(std::span<const std::int32_t> ids) const;
  std::string piece(std::int32_t id) const;

  std::int32_t vocab_size() const noexcept { return static_cast<std::int32_t>(pieces_.size()); }
  std::int32_t bos_id() const noexcept { return bos_id_; }
  std::int32_t eos_id() const noexcept { return eos_id_; }
  bool add_bos() const noexcept { return !prefix_.empty(); }
  bool add_eos() const noexcept { return !suffix_.empty(); }

 private:
  struct AddedToken {
    std::string match;  // the text matched: the content, or its normalized form when `normalized`
    std::int32_t id = 0;
    bool single_word = false;
    bool lstrip = false;
    bool rstrip = false;
    bool normalized = true;
  };
  // Leftmost-longest search over a set of added tokens (the Aho-Corasick search `tokenizers` runs).
  struct AddedSet {
    std::vector<std::uint32_t> tokens;                     // indices into added_
    std::array<std::vector<std::uint32_t>, 256> by_first;  // per first byte, longest first
    bool empty() const noexcept { return tokens.empty(); }
  };
  struct PreTokenizerStep {
    bool byte_level = false;  // false: Split(pattern, Isolated)
    SplitPattern pattern = SplitPattern::Gpt2;
    bool add_prefix_space = false;
    bool use_regex = true;
  };
  struct Merge {
    std::int32_t rank = 0;
    std::int32_t id = 0;
  };
  struct Segment {
    std::string text;
    std::int32_t id = -1;  // an added token's id, or -1 for text still to tokenize
  };

  std::vector<Segment> split_added(std::string_view text, const AddedSet& set) const;
  std::vector<std::string> pre_tokenize(std::string piece) const;
  void tokenize_word(const std::string& word, std::vector<std::int32_t>& out) const;
  void index_added();
  void check_id(std::int32_t id) const;  // InvalidArgument for an id outside the vocabulary or unused

  std::string source_;  // the tokenizer.json path, for messages

  // model: ids of pieces by their bytes (the byte-level characters mapped back), merges by id pair
  std::unordered_map<std::string, std::int32_t> vocab_bytes_;
  std::array<std::int32_t, 256> byte_ids_{};  // id of each single byte's piece, -1 if absent
  std::unordered_map<std::uint64_t, Merge> merges_;
  bool ignore_merges_ = false;
  std::int32_t unk_id_ = -1;
  bool fuse_unk_ = false;

  // per id: the piece as stored (empty for an unused id), the bytes it decodes to, whether decode() drops it
  std::vector<std::string> pieces_;
  std::vector<std::string> decoded_;
  std::vector<std::uint8_t> used_;
  std::vector<std::uint8_t> skip_;

  bool nfc_ = false;
  std::vector<AddedToken> added_;
  AddedSet raw_added_;         // normalized = false: matched in the text as given
  AddedSet normalized_added_;  // normalized = true: matched in the normalized text
  std::vector<PreTokenizerStep> pre_;
  std::vector<std::int32_t> prefix_;  // the template's ids before and after the text
  std::vector<std::int32_t> suffix_;
  std::int32_t bos_id_ = -1;
  std::int32_t eos_id_ = -1;
};

}  // namespace lowbit::model::detail
