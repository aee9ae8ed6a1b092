// model/tokenizer.hpp: llama.cpp's SentencePiece test vectors (shared/data/tokenizer-tests, 47 cases, ids
// without BOS) with stories15M's tokenizer.model, BOS/EOS policy from tokenizer_config.json, decoding, and
// the errors for missing, corrupt and not-yet-supported tokenizers.
#include "lowbit/model/tokenizer.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "model/model_test_util.hpp"

namespace lowbit::model {
namespace {

using test::error_message;
using test::kSharedData;
using test::kStories15M;
using test::TempDir;
using test::write_text;

std::string read_all(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> split(const std::string& text, const std::string& separator) {
  std::vector<std::string> parts;
  std::size_t begin = 0;
  for (std::size_t pos; (pos = text.find(separator, begin)) != std::string::npos; begin = pos + separator.size()) {
    parts.push_back(text.substr(begin, pos - begin));
  }
  parts.push_back(text.substr(begin));
  return parts;
}

TEST(TokenizerVectors, LlamaSpmMatchesLlamaCpp) {
  LOWBIT_REQUIRE_STORIES15M();
  const auto dir = kSharedData / "tokenizer-tests";
  // Inputs are separated by "\n__ggml_vocab_test__\n" (the file ends with one); outputs are one line per
  // input, ids separated by spaces, no BOS (llama.cpp's test-tokenizer-0 reads them the same way).
  const std::vector<std::string> inputs =
      split(read_all(dir / "ggml-vocab-llama-spm.gguf.inp"), "\n__ggml_vocab_test__\n");
  const std::vector<std::string> outputs = split(read_all(dir / "ggml-vocab-llama-spm.gguf.out"), "\n");
  ASSERT_EQ(inputs.size(), 47u);
  ASSERT_EQ(outputs.size(), 47u);
  const Tokenizer tokenizer = Tokenizer::load(kStories15M);
  int matched = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    std::vector<std::int32_t> want;
    std::istringstream ids(outputs[i]);
    for (std::int32_t id; ids >> id;) want.push_back(id);
    EXPECT_EQ(tokenizer.encode(inputs[i], /*add_special=*/false), want) << "case " << i << ": '" << inputs[i] << "'";
    matched += tokenizer.encode(inputs[i], false) == want;
  }
  EXPECT_EQ(matched, 47);
}

TEST(Tokenizer, BosPerTokenizerConfigAndDecodeRoundTrip) {
  LOWBIT_REQUIRE_STORIES15M();
  const Tokenizer tokenizer = Tokenizer::load(kStories15M);
  EXPECT_EQ(tokenizer.vocab_size(), 32000);
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.eos_id(), 2);
  EXPECT_TRUE(tokenizer.add_bos());
  EXPECT_FALSE(tokenizer.add_eos());
  const std::string text = "Once upon a time, there was a little";
  const std::vector<std::int32_t> ids = tokenizer.encode(text);
  const std::vector<std::int32_t> want = {1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217};
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tokenizer.decode(ids), text);  // BOS decodes to nothing
  EXPECT_EQ(tokenizer.piece(9038), "\xE2\x96\x81Once");
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("Äpfel 🦙 \n\n x")), "Äpfel 🦙 \n\n x");

  // tokenizer_config.json decides BOS and EOS.
  TempDir dir;
  std::filesystem::copy_file(kStories15M / "tokenizer.model", dir.path() / "tokenizer.model");
  write_text(dir.path() / "tokenizer_config.json", R"({"add_bos_token": false, "add_eos_token": true})");
  const Tokenizer other = Tokenizer::load(dir.path());
  std::vector<std::int32_t> eos_only(ids.begin() + 1, ids.end());
  eos_only.push_back(2);
  EXPECT_EQ(other.encode(text), eos_only);
  EXPECT_EQ(other.encode(text, /*add_special=*/false), std::vector<std::int32_t>(ids.begin() + 1, ids.end()));
}

TEST(Tokenizer, Errors) {
  TempDir dir;
  std::string m = error_message([&] { Tokenizer::load(dir.path()); }, ErrorCode::IO);
  EXPECT_NE(m.find("has no tokenizer.model"), std::string::npos) << m;
  EXPECT_NE(m.find(dir.path().string()), std::string::npos) << m;

  write_text(dir.path() / "tokenizer.json", R"({"model": {"type": "BPE"}})");
  m = error_message([&] { Tokenizer::load(dir.path()); }, ErrorCode::Unsupported);
  EXPECT_NE(m.find("byte-level BPE"), std::string::npos) << m;

  write_text(dir.path() / "tokenizer.model", "not a protobuf at all");
  m = error_message([&] { Tokenizer::load(dir.path()); }, ErrorCode::Corrupt);
  EXPECT_NE(m.find("is not a SentencePiece model"), std::string::npos) << m;

  if (std::filesystem::exists(kStories15M / "tokenizer.model")) {
    std::filesystem::copy_file(kStories15M / "tokenizer.model", dir.path() / "tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing);
    write_text(dir.path() / "tokenizer_config.json", R"({"add_bos_token": "yes"})");
    m = error_message([&] { Tokenizer::load(dir.path()); }, ErrorCode::Corrupt);
    EXPECT_NE(m.find("'add_bos_token' is \"yes\""), std::string::npos) << m;
    std::filesystem::remove(dir.path() / "tokenizer_config.json");
    const Tokenizer t = Tokenizer::load(dir.path());
    const std::int32_t bad[] = {5, 32000};
    m = error_message([&] { t.decode(bad); }, ErrorCode::InvalidArgument);
    EXPECT_NE(m.find("id 32000 is outside the vocabulary"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace lowbit::model
