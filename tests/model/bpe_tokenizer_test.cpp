// model/tokenizer.hpp on tokenizer.json byte-level BPE: ids, decodes and the template's special tokens equal those of
// Hugging Face `tokenizers` (tests/data/tokenizer/make_bpe_vectors.py: two small tokenizers trained by the library in
// GPT-2's and Llama 3's layouts, plus the Qwen 2 and add_prefix_space variants, on llama.cpp's 47 test strings, hand
// written hard cases and random strings); decode(encode(x)) == x on random Unicode text; BOS/EOS from
// tokenizer_config.json; and the errors for malformed or unsupported files.
#include "../src/model/bpe_tokenizer.hpp"  // private: the hand-written regex matchers, tested on their own

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/model/tokenizer.hpp"
#include "model/model_test_util.hpp"

namespace lowbit::model {
namespace {

using nlohmann::json;
using test::error_message;
using test::kStories15M;
using test::TempDir;
using test::write_text;

const std::filesystem::path kDataDir = std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "tokenizer";

json read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return json::parse(s.str());
}

const json& vectors() {
  static const json v = read_json(kDataDir / "bpe_vectors.json");
  return v;
}

// The base file with a variant's edits applied (json pointer -> new value), as make_bpe_vectors.py applies them.
json variant_json(const json& variant) {
  json j = read_json(kDataDir / variant["base"].get<std::string>() / "tokenizer.json");
  for (const auto& [pointer, value] : variant["edits"].items()) j[json::json_pointer(pointer)] = value;
  return j;
}

// A variant without edits loads from its committed folder; one with edits from a copy in `dir`.
Tokenizer load_variant(const json& variant, const TempDir& dir) {
  if (variant["edits"].empty()) return Tokenizer::load(kDataDir / variant["base"].get<std::string>());
  const auto folder = dir.path() / variant["name"].get<std::string>();
  std::filesystem::create_directories(folder);
  write_text(folder / "tokenizer.json", variant_json(variant).dump());
  return Tokenizer::load(folder);
}

const json& variant_named(const std::string& name) {
  for (const json& v : vectors()["variants"])
    if (v["name"] == name) return v;
  throw std::runtime_error("no variant " + name + " in bpe_vectors.json");
}

std::vector<std::int32_t> ids_of(const json& j) { return j.get<std::vector<std::int32_t>>(); }

TEST(BpeTokenizerVectors, MatchHuggingFaceTokenizers) {
  const json& v = vectors();
  const auto& texts = v["texts"];
  ASSERT_GE(texts.size(), 47u + 27u + 300u);
  TempDir dir;
  for (const json& variant : v["variants"]) {
    const std::string name = variant["name"];
    SCOPED_TRACE("variant " + name);
    const Tokenizer tokenizer = load_variant(variant, dir);
    EXPECT_EQ(tokenizer.vocab_size(), variant["vocab_size"].get<std::int32_t>());
    const std::vector<std::int32_t> prefix = ids_of(variant["prefix"]);
    const std::vector<std::int32_t> suffix = ids_of(variant["suffix"]);
    EXPECT_EQ(tokenizer.add_bos(), !prefix.empty());
    EXPECT_EQ(tokenizer.add_eos(), !suffix.empty());
    std::size_t matched = 0;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const std::string text = texts[i];
      const std::vector<std::int32_t> want = ids_of(variant["ids"][i]);
      const std::vector<std::int32_t> got = tokenizer.encode(text, /*add_special=*/false);
      EXPECT_EQ(got, want) << "text " << i << ": '" << text << "'";
      matched += got == want;
      std::vector<std::int32_t> with_special = prefix;
      with_special.insert(with_special.end(), want.begin(), want.end());
      with_special.insert(with_special.end(), suffix.begin(), suffix.end());
      EXPECT_EQ(tokenizer.encode(text), with_special) << "text " << i;
      // decode skips special tokens; where that (or a prefix space) changes the text, the library's output is stored.
      const std::string key = std::to_string(i);
      const std::string decoded = variant["decoded"].contains(key) ? variant["decoded"][key].get<std::string>() : text;
      EXPECT_EQ(tokenizer.decode(want), decoded) << "text " << i;
      EXPECT_EQ(tokenizer.decode(with_special), decoded) << "text " << i;
    }
    EXPECT_EQ(matched, texts.size());
    for (const json& d : variant["decodes"]) {
      EXPECT_EQ(tokenizer.decode(ids_of(d[0])), d[1].get<std::string>()) << "ids " << d[0].dump();
    }
    if (variant.contains("decoded_each")) {
      const auto& each = variant["decoded_each"];
      ASSERT_EQ(each.size(), static_cast<std::size_t>(tokenizer.vocab_size()));
      for (std::int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
        const std::int32_t one[] = {id};
        EXPECT_EQ(tokenizer.decode(one), each[static_cast<std::size_t>(id)].get<std::string>()) << "id " << id;
      }
    }
  }
}

// The pre-tokenizer regexes alone: ids show a pre-token boundary only where some merge would cross it, so the
// boundaries themselves are compared with the library's Split(Regex(...), "isolated") on every text.
TEST(BpeTokenizerVectors, SplitsMatchHuggingFaceRegexes) {
  const json& v = vectors();
  const auto& texts = v["texts"];
  const std::pair<const char*, detail::SplitPattern> patterns[] = {{"gpt2", detail::SplitPattern::Gpt2},
                                                                   {"llama3", detail::SplitPattern::Llama3},
                                                                   {"qwen2", detail::SplitPattern::Qwen2}};
  for (const auto& [name, pattern] : patterns) {
    SCOPED_TRACE(std::string("regex of ") + name);
    const auto& splits = v["splits"][name];
    ASSERT_EQ(splits.size(), texts.size());
    std::size_t matched = 0;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const std::string text = texts[i];
      std::vector<std::size_t> lengths;
      for (const std::string& piece : detail::split_pretokens(text, pattern)) lengths.push_back(piece.size());
      const auto want = splits[i].get<std::vector<std::size_t>>();
      EXPECT_EQ(lengths, want) << "text " << i << ": '" << text << "'";
      matched += lengths == want;
    }
    EXPECT_EQ(matched, texts.size());
  }
}

// Encodes a code point as UTF-8.
void put_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Text mixing ASCII, white space of every kind, letters of several scripts, digits, marks, emoji and code points
// drawn from the whole Unicode range.
std::string random_text(std::mt19937_64& rng, int length) {
  static const char32_t kSpaces[] = {' ',  ' ',  '\t',   '\n',   '\r',   0x0B,  0x0C,
                                     0x85, 0xA0, 0x1680, 0x2003, 0x2028, 0x3000};
  static const char32_t kOthers[] = {'\'',   '\'',    's',     'S',     't',    'l',    'L',    'e',
                                     0x17F,  '0',     '7',     0x663,   0xBD,   0x301,  0x308,  0x200D,
                                     0xFE0F, 0x1F999, 0x1F44D, 0x1F3FD, 0x4E2D, 0x6587, 0x3042, 0xAC00};
  // [first, first + count) per kind: printable ASCII (three times as likely), Latin letters, Cyrillic, CJK, emoji,
  // and anything but the surrogates.
  struct Range {
    char32_t first, count;
  };
  static const Range kRanges[] = {{0x20, 0x5F},   {0x20, 0x5F},     {0x20, 0x5F},     {0xC0, 0x1C0},
                                  {0x400, 0x100}, {0x4E00, 0x5000}, {0x1F300, 0x300}, {0, 0x110000 - 0x800}};
  std::string out;
  for (int i = 0; i < length; ++i) {
    const std::size_t kind = rng() % (std::size(kRanges) + 2);
    char32_t c;
    if (kind == std::size(kRanges)) {
      c = kSpaces[rng() % std::size(kSpaces)];
    } else if (kind == std::size(kRanges) + 1) {
      c = kOthers[rng() % std::size(kOthers)];
    } else {
      c = kRanges[kind].first + static_cast<char32_t>(rng() % kRanges[kind].count);
      if (kRanges[kind].first == 0 && c >= 0xD800) c += 0x800;  // skip the surrogates
    }
    put_utf8(out, c);
  }
  return out;
}

TEST(BpeTokenizer, DecodeInvertsEncodeOnRandomText) {
  // The byte-level base files: every byte has a piece, no normalizer, no prefix space, so decode(encode(x)) == x
  // for any text without added tokens in it.
  const std::pair<const char*, std::uint64_t> cases[] = {{"gpt2-bpe", 1001}, {"llama3-bpe", 1002}};
  for (const auto& [name, seed] : cases) {
    const Tokenizer tokenizer = Tokenizer::load(kDataDir / name);
    SCOPED_TRACE(std::string(name) + ", seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    for (int round = 0; round < 300; ++round) {
      const std::string text = random_text(rng, 1 + static_cast<int>(rng() % 60));
      const std::vector<std::int32_t> ids = tokenizer.encode(text, /*add_special=*/false);
      ASSERT_FALSE(ids.empty()) << text;
      for (const std::int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tokenizer.vocab_size()) << id;
      EXPECT_EQ(tokenizer.decode(ids), text) << "round " << round;
    }
  }
}

TEST(BpeTokenizer, PiecesAndSpecialTokenPolicy) {
  const Tokenizer gpt2 = Tokenizer::load(kDataDir / "gpt2-bpe");
  const std::vector<std::int32_t> the = gpt2.encode(" the", false);
  ASSERT_EQ(the.size(), 1u);
  EXPECT_EQ(gpt2.piece(the[0]), "\xC4\xA0the");  // "Ġthe": the space is U+0120 in the byte-level alphabet
  const std::vector<std::int32_t> mask = gpt2.encode("<mask>", false);
  ASSERT_EQ(mask.size(), 1u);
  EXPECT_EQ(gpt2.piece(mask[0]), "<mask>");
  // GPT-2's layout: no template, no tokenizer_config.json -> no BOS or EOS.
  EXPECT_EQ(gpt2.bos_id(), -1);
  EXPECT_EQ(gpt2.eos_id(), -1);
  EXPECT_FALSE(gpt2.add_bos());
  EXPECT_EQ(gpt2.encode("Once upon a time"), gpt2.encode("Once upon a time", false));

  // Llama 3's layout: the template adds <|begin_of_text|> (id 0), which is then the BOS.
  const Tokenizer llama3 = Tokenizer::load(kDataDir / "llama3-bpe");
  EXPECT_EQ(llama3.bos_id(), 0);
  EXPECT_EQ(llama3.eos_id(), -1);
  EXPECT_TRUE(llama3.add_bos());
  EXPECT_FALSE(llama3.add_eos());
  const std::string text = "Once upon a time, there was a little llama.";
  const std::vector<std::int32_t> body = llama3.encode(text, false);
  std::vector<std::int32_t> want = {0};
  want.insert(want.end(), body.begin(), body.end());
  EXPECT_EQ(llama3.encode(text), want);
  EXPECT_EQ(llama3.piece(0), "<|begin_of_text|>");

  // tokenizer_config.json names BOS and EOS; add_bos_token / add_eos_token, when given, replace the template.
  TempDir dir;
  std::filesystem::copy_file(kDataDir / "llama3-bpe" / "tokenizer.json", dir.path() / "tokenizer.json");
  write_text(dir.path() / "tokenizer_config.json", R"({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})");
  Tokenizer t = Tokenizer::load(dir.path());
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.encode(text), want);
  write_text(dir.path() / "tokenizer_config.json",
             R"({"bos_token": {"content": "<|begin_of_text|>", "__type": "AddedToken"}, "eos_token": "<|end_of_text|>",
                 "add_bos_token": false, "add_eos_token": true})");
  t = Tokenizer::load(dir.path());
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_FALSE(t.add_bos());
  EXPECT_TRUE(t.add_eos());
  std::vector<std::int32_t> eos_only = body;
  eos_only.push_back(1);
  EXPECT_EQ(t.encode(text), eos_only);
  EXPECT_EQ(t.decode(eos_only), text);  // special tokens decode to nothing

  // GPT-2's folder with transformers' usual config: BOS named, added only when asked.
  std::filesystem::copy_file(kDataDir / "gpt2-bpe" / "tokenizer.json", dir.path() / "tokenizer.json",
                             std::filesystem::copy_options::overwrite_existing);
  write_text(dir.path() / "tokenizer_config.json", R"({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})");
  t = Tokenizer::load(dir.path());
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 0);
  EXPECT_FALSE(t.add_bos());
  write_text(dir.path() / "tokenizer_config.json", R"({"bos_token": "<|endoftext|>", "add_bos_token": true})");
  t = Tokenizer::load(dir.path());
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.encode("hi").front(), 0);

  // The qwen2 variant normalizes (NFC) before matching normalized added tokens: "café" in either form is the
  // added token, shown in its composed form.
  const Tokenizer qwen2 = load_variant(variant_named("qwen2"), dir);
  const std::vector<std::int32_t> composed = qwen2.encode("caf\xC3\xA9", false);
  ASSERT_EQ(composed.size(), 1u);
  EXPECT_EQ(qwen2.encode("cafe\xCC\x81", false), composed);
  EXPECT_EQ(qwen2.piece(composed[0]), "caf\xC3\xA9");
  EXPECT_EQ(qwen2.bos_id(), -1);
  EXPECT_FALSE(qwen2.add_bos());
}

TEST(BpeTokenizer, TokenizerModelWinsOverTokenizerJson) {
  LOWBIT_REQUIRE_STORIES15M();
  TempDir dir;
  std::filesystem::copy_file(kStories15M / "tokenizer.model", dir.path() / "tokenizer.model");
  std::filesystem::copy_file(kDataDir / "llama3-bpe" / "tokenizer.json", dir.path() / "tokenizer.json");
  const Tokenizer t = Tokenizer::load(dir.path());
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_EQ(t.bos_id(), 1);
}

// Writes `j` as the folder's tokenizer.json and returns the error message of loading it.
std::string load_error(const TempDir& dir, const json& j, ErrorCode code) {
  write_text(dir.path() / "tokenizer.json", j.dump());
  return error_message([&] { Tokenizer::load(dir.path()); }, code);
}

TEST(BpeTokenizer, Errors) {
  TempDir dir;
  const json good = read_json(kDataDir / "llama3-bpe" / "tokenizer.json");

  write_text(dir.path() / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, )");
  std::string m = error_message([&] { Tokenizer::load(dir.path()); }, ErrorCode::Corrupt);
  EXPECT_NE(m.find("is not valid JSON"), std::string::npos) << m;
  EXPECT_NE(m.find("tokenizer.json"), std::string::npos) << m;

  m = load_error(dir, json::array({1, 2}), ErrorCode::Corrupt);
  EXPECT_NE(m.find("is not a JSON object"), std::string::npos) << m;

  json j = good;
  j["model"]["type"] = "WordPiece";
  m = load_error(dir, j, ErrorCode::Unsupported);
  EXPECT_NE(m.find("model.type is 'WordPiece'"), std::string::npos) << m;

  j = good;
  j["normalizer"] = {{"type", "NFKC"}};
  m = load_error(dir, j, ErrorCode::Unsupported);
  EXPECT_NE(m.find("normalizer NFKC is not supported"), std::string::npos) << m;
  j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "x"},
                                    {"type": "Replace", "pattern": {"String": " "}, "content": "x"}]})");
  m = load_error(dir, j, ErrorCode::Unsupported);
  EXPECT_NE(m.find("normalizer Sequence[Prepend, Replace]"), std::string::npos) << m;

  j = good;
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{L}+|\\s+";
  m = load_error(dir, j, ErrorCode::Unsupported);
  EXPECT_NE(m.find("has the regex '\\p{L}+|\\s+'"), std::string::npos) << m;
  EXPECT_NE(m.find("pre_tokenizer.pretokenizers[0]"), std::string::npos) << m;
  j = good;
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  m = load_error(dir, j, ErrorCode::Unsupported);
  EXPECT_NE(m.find("behavior 'Removed'"), std::string::npos) << m;
  j = good;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}};
  m = load_error(dir, j, ErrorCode::Unsupported);
  EXPECT_NE(m.find("pre_tokenizer Metaspace is not supported"), std::string::npos) << m;
  j = good;
  j["pre_tokenizer"] = good["pre_tokenizer"]["pretokenizers"][0];  // Split alone: no ByteLevel
  m = load_error(dir, j, ErrorCode::Unsupported);
  EXPECT_NE(m.find("has no ByteLevel step"), std::string::npos) << m;

  j = good;
  j["model"]["byte_fallback"] = true;
  m = load_error(dir, j, ErrorCode::Unsupported);
  EXPECT_NE(m.find("model.byte_fallback is true"), std::string::npos) << m;
  j = good;
  j["decoder"] = nullptr;
  m = load_error(dir, j, ErrorCode::Unsupported);
  EXPECT_NE(m.find("decoder null is not supported"), std::string::npos) << m;
  j = good;
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  m = load_error(dir, j, ErrorCode::Unsupported);
  EXPECT_NE(m.find("post_processor RobertaProcessing is not supported"), std::string::npos) << m;
  j = good;
  j["post_processor"]["processors"][1]["single"][0]["SpecialToken"]["id"] = "<|nope|>";
  m = load_error(dir, j, ErrorCode::Corrupt);
  EXPECT_NE(m.find("names '<|nope|>'"), std::string::npos) << m;

  j = good;
  j["model"]["merges"][5] = json::array({"\xC4\xA0t", "no-such-piece"});
  m = load_error(dir, j, ErrorCode::Corrupt);
  EXPECT_NE(m.find("model.merges[5] names 'no-such-piece', which is not in model.vocab"), std::string::npos) << m;
  j = good;
  j["model"]["merges"][7] = "a b c";
  m = load_error(dir, j, ErrorCode::Corrupt);
  EXPECT_NE(m.find("model.merges[7] is 'a b c'"), std::string::npos) << m;
  j = good;
  j["model"]["vocab"]["a"] = -3;
  m = load_error(dir, j, ErrorCode::Corrupt);
  EXPECT_NE(m.find("model.vocab['a'] is id -3"), std::string::npos) << m;
  j = good;
  j["model"]["vocab"]["b"] = "seven";
  m = load_error(dir, j, ErrorCode::Corrupt);
  EXPECT_NE(m.find("model.vocab['b'] is \"seven\", not a token id"), std::string::npos) << m;
  j = good;
  j["model"].erase("vocab");
  m = load_error(dir, j, ErrorCode::Corrupt);
  EXPECT_NE(m.find("model.vocab is missing"), std::string::npos) << m;

  write_text(dir.path() / "tokenizer.json", good.dump());
  write_text(dir.path() / "tokenizer_config.json", R"({"eos_token": "<|not-a-token|>"})");
  m = error_message([&] { Tokenizer::load(dir.path()); }, ErrorCode::Corrupt);
  EXPECT_NE(m.find("eos_token is '<|not-a-token|>'"), std::string::npos) << m;
  std::filesystem::remove(dir.path() / "tokenizer_config.json");

  const Tokenizer t = Tokenizer::load(dir.path());
  const std::int32_t bad[] = {5, t.vocab_size()};
  m = error_message([&] { t.decode(bad); }, ErrorCode::InvalidArgument);
  EXPECT_NE(m.find(fmt::format("id {} is outside the vocabulary", t.vocab_size())), std::string::npos) << m;
  m = error_message([&] { t.piece(-1); }, ErrorCode::InvalidArgument);
  EXPECT_NE(m.find("id -1 is outside the vocabulary"), std::string::npos) << m;
  m = error_message([&] { t.encode("ok \xC3\x28 then"); }, ErrorCode::InvalidArgument);
  EXPECT_NE(m.find("not valid UTF-8 at byte 3 (0xC3)"), std::string::npos) << m;
}

}  // namespace
}  // namespace lowbit::model
