#include "lowbit/model/tokenizer.hpp"

#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "bpe_tokenizer.hpp"
#include "lowbit/core/error.hpp"
#include "lowbit/io/atomic_file.hpp"

namespace lowbit::model {

// One of the two: a SentencePiece model, or (when `bpe` holds one) a tokenizer.json byte-level BPE.
struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::optional<detail::BpeTokenizer> bpe;
  std::string source;  // the model file, for messages
  bool add_bos = true;
  bool add_eos = false;
};

namespace {

std::string read_text(const std::filesystem::path& path) { return io::read_text_file(path, "tokenizer"); }

bool json_bool(const nlohmann::json& j, const char* key, bool fallback, const std::filesystem::path& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  LOWBIT_CHECK(j[key].is_boolean(), ErrorCode::Corrupt, "tokenizer: '{}': '{}' is {}, not true or false", path.string(),
               key, j[key].dump());
  return j[key].get<bool>();
}

}  // namespace

Tokenizer Tokenizer::from_sentencepiece(const std::filesystem::path& model_file, bool add_bos, bool add_eos) {
  LOWBIT_CHECK(std::filesystem::is_regular_file(model_file), ErrorCode::IO, "tokenizer: '{}' does not exist",
               model_file.string());
  auto impl = std::make_shared<Impl>();
  // Loaded from bytes we read, so that a failure to read is an IO error and a bad model a Corrupt one.
  const std::string bytes = read_text(model_file);
  const auto status = impl->sp.LoadFromSerializedProto(bytes);
  LOWBIT_CHECK(status.ok(), ErrorCode::Corrupt, "tokenizer: '{}' is not a SentencePiece model: {}", model_file.string(),
               status.ToString());
  impl->source = model_file.string();
  impl->add_bos = add_bos;
  impl->add_eos = add_eos;
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::load(const std::filesystem::path& folder) {
  const auto model_file = folder / "tokenizer.model";
  const auto config_file = folder / "tokenizer_config.json";
  if (!std::filesystem::exists(model_file)) {
    const auto json_file = folder / "tokenizer.json";
    LOWBIT_CHECK(std::filesystem::exists(json_file), ErrorCode::IO,
                 "tokenizer: '{}' has no tokenizer.model or tokenizer.json", folder.string());
    auto impl = std::make_shared<Impl>();
    impl->bpe.emplace(detail::BpeTokenizer::load(json_file, config_file));
    impl->source = json_file.string();
    impl->add_bos = impl->bpe->add_bos();
    impl->add_eos = impl->bpe->add_eos();
    return Tokenizer(std::move(impl));
  }
  bool add_bos = true;  // LlamaTokenizer's defaults
  bool add_eos = false;
  if (std::filesystem::exists(config_file)) {
    const auto j = nlohmann::json::parse(read_text(config_file), nullptr, /*allow_exceptions=*/false);
    LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt, "tokenizer: '{}' is not a JSON object", config_file.string());
    add_bos = json_bool(j, "add_bos_token", add_bos, config_file);
    add_eos = json_bool(j, "add_eos_token", add_eos, config_file);
  }
  return from_sentencepiece(model_file, add_bos, add_eos);
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  if (impl_->bpe) return impl_->bpe->encode(text, add_special);
  std::vector<int> ids;
  const auto status = impl_->sp.Encode(absl::string_view(text.data(), text.size()), &ids);
  LOWBIT_CHECK(status.ok(), ErrorCode::InvalidArgument, "tokenizer: cannot encode {} bytes of text with '{}': {}",
               text.size(), impl_->source, status.ToString());
  std::vector<std::int32_t> out;
  out.reserve(ids.size() + 2);
  if (add_special && impl_->add_bos && bos_id() >= 0) out.push_back(bos_id());
  out.insert(out.end(), ids.begin(), ids.end());
  if (add_special && impl_->add_eos && eos_id() >= 0) out.push_back(eos_id());
  return out;
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids) const {
  if (impl_->bpe) return impl_->bpe->decode(ids);
  std::vector<int> v(ids.begin(), ids.end());
  for (const int id : v) {
    LOWBIT_CHECK(id >= 0 && id < vocab_size(), ErrorCode::InvalidArgument,
                 "tokenizer: id {} is outside the vocabulary of '{}' (size {})", id, impl_->source, vocab_size());
  }
  std::string text;
  const auto status = impl_->sp.Decode(v, &text);
  LOWBIT_CHECK(status.ok(), ErrorCode::InvalidArgument, "tokenizer: cannot decode {} ids with '{}': {}", v.size(),
               impl_->source, status.ToString());
  return text;
}

std::string Tokenizer::piece(std::int32_t id) const {
  if (impl_->bpe) return impl_->bpe->piece(id);
  LOWBIT_CHECK(id >= 0 && id < vocab_size(), ErrorCode::InvalidArgument,
               "tokenizer: id {} is outside the vocabulary of '{}' (size {})", id, impl_->source, vocab_size());
  return impl_->sp.IdToPiece(id);
}

std::int32_t Tokenizer::vocab_size() const noexcept {
  return impl_->bpe ? impl_->bpe->vocab_size() : impl_->sp.GetPieceSize();
}
std::int32_t Tokenizer::bos_id() const noexcept { return impl_->bpe ? impl_->bpe->bos_id() : impl_->sp.bos_id(); }
std::int32_t Tokenizer::eos_id() const noexcept { return impl_->bpe ? impl_->bpe->eos_id() : impl_->sp.eos_id(); }
bool Tokenizer::add_bos() const noexcept { return impl_->add_bos; }
bool Tokenizer::add_eos() const noexcept { return impl_->add_eos; }

}  // namespace lowbit::model
