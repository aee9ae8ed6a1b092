// Byte-level BPE from a Hugging Face tokenizer.json, step for step as the `tokenizers` library (Rust) runs it:
// added tokens -> normalizer -> pre-tokenizer (Split, ByteLevel) -> BPE -> template; decode through ByteLevel.
// The pre-tokenizer regexes are matched by hand (three known patterns, below), with ICU for Unicode properties.
#include "bpe_tokenizer.hpp"

#include <fmt/format.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>
#include <unicode/utypes.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <sstream>
#include <unordered_set>
#include <utility>

#include "lowbit/core/error.hpp"
#include "lowbit/io/atomic_file.hpp"

namespace lowbit::model::detail {
namespace {

using nlohmann::json;

// The Split regexes as tokenizer.json files write them (GPT-2's is also the one ByteLevel uses with use_regex).
// Llama 3 and Qwen 2 differ only in the digit run: at most 3 digits a pre-token, or 1.
constexpr std::string_view kGpt2Regex =
    R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kLlama3Regex =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kQwen2Regex =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

// Ids above this are refused as corrupt: it bounds the per-id tables (real vocabularies stay below 300,000).
constexpr std::int64_t kMaxId = (std::int64_t{1} << 24) - 1;

// ---- UTF-8 ---------------------------------------------------------------------------------------------------

// Length of the well-formed UTF-8 sequence at s[i] (Unicode table 3-7), 0 if there is none; *cp gets its value.
std::size_t utf8_next(std::string_view s, std::size_t i, char32_t* cp) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) {
    *cp = b;
    return 1;
  }
  std::size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  char32_t value;
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1;
    value = b & 0x1Fu;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 2;
    value = b & 0x0Fu;
    if (b == 0xE0) lo = 0xA0;  // no overlong forms
    if (b == 0xED) hi = 0x9F;  // no surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 3;
    value = b & 0x07u;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  for (std::size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return 0;
    const auto c = static_cast<unsigned char>(s[i + k]);
    if (c < lo || c > hi) return 0;
    lo = 0x80;
    hi = 0xBF;
    value = (value << 6) | (c & 0x3Fu);
  }
  *cp = value;
  return need + 1;
}

// Bytes -> text as Rust's String::from_utf8_lossy: each maximal invalid subpart (a bad lead byte alone, or a
// valid lead with the valid continuation bytes that follow it) becomes one U+FFFD.
std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    char32_t cp;
    if (const std::size_t n = utf8_next(s, i, &cp); n > 0) {
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    const auto b = static_cast<unsigned char>(s[i]);
    std::size_t need = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    if (b >= 0xE0 && b <= 0xEF) need = 2, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
    if (b >= 0xF0 && b <= 0xF4) need = 3, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
    std::size_t j = i + 1;
    for (std::size_t k = 0; k < need && j < s.size(); ++k, ++j) {
      const auto c = static_cast<unsigned char>(s[j]);
      if (c < lo || c > hi) break;
      lo = 0x80;
      hi = 0xBF;
    }
    out.append("\xEF\xBF\xBD");
    i = j;
  }
  return out;
}

// Start of the code point that ends at s[end - 1] (s is valid UTF-8, end > 0).
std::size_t utf8_prev(std::string_view s, std::size_t end) {
  std::size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

char32_t utf8_at(std::string_view s, std::size_t i) {
  char32_t cp = 0;
  utf8_next(s, i, &cp);
  return cp;
}

// ---- Unicode classes, as Oniguruma (`tokenizers`' regex engine) and Rust's regex crate define them ----------------

bool is_white_space(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)) != 0; }  // \s: White_Space

// Rust regex's Unicode \w: Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control.
bool is_word_char(char32_t c) {
  const auto u = static_cast<UChar32>(c);
  return u_hasBinaryProperty(u, UCHAR_ALPHABETIC) ||
         (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0 ||
         u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL);
}

enum : std::uint8_t { kLetter = 1, kNumber = 2, kSpace = 4, kNewline = 8 };  // \p{L}, \p{N}, \s, [\r\n]

std::uint8_t char_class(char32_t c) {
  const auto u = static_cast<UChar32>(c);
  std::uint8_t cls = 0;
  const std::uint32_t gc = U_GET_GC_MASK(u);
  if (gc & U_GC_L_MASK) cls |= kLetter;
  if (gc & U_GC_N_MASK) cls |= kNumber;
  if (is_white_space(c)) cls |= kSpace;
  if (c == '\r' || c == '\n') cls |= kNewline;
  return cls;
}

struct CodePoint {
  char32_t c;
  std::uint32_t offset;  // byte offset in the piece
  std::uint8_t cls;
};

// Code points of a valid UTF-8 piece, plus a sentinel holding the end offset.
std::vector<CodePoint> code_points(std::string_view s) {
  std::vector<CodePoint> cps;
  cps.reserve(s.size() + 1);
  for (std::size_t i = 0; i < s.size();) {
    char32_t c;
    const std::size_t n = utf8_next(s, i, &c);
    cps.push_back({c, static_cast<std::uint32_t>(i), char_class(c)});
    i += n;
  }
  cps.push_back({0, static_cast<std::uint32_t>(s.size()), 0});
  return cps;
}

// ---- the pre-tokenizer regexes, by hand ---------------------------------------------------------------------
//
// Each function returns the length (in code points) of the regex's match starting at cps[i], with the
// leftmost-first alternation and backtracking of a Perl-style engine. Every code point is a letter, a number,
// white space or "other", and each of the patterns has an alternative that matches one of each, so the matches
// tile the piece: the split of a piece is the sequence of matches from its start.

bool has(const CodePoint& cp, std::uint8_t cls) { return (cp.cls & cls) != 0; }
bool is_other(const CodePoint& cp) { return (cp.cls & (kLetter | kNumber | kSpace)) == 0; }  // [^\s\p{L}\p{N}]

// 's|'t|'re|'ve|'m|'ll|'d, case-insensitive under (?i:...): Unicode case folding adds U+017F (long s) to 's'.
std::size_t match_contraction(const std::vector<CodePoint>& cps, std::size_t i, std::size_t n, bool ignore_case) {
  if (cps[i].c != '\'' || i + 1 >= n) return 0;
  const auto fold = [&](std::size_t k) -> char32_t {
    const char32_t c = cps[k].c;
    if (!ignore_case) return c;
    if (c >= 'A' && c <= 'Z') return c + ('a' - 'A');
    return c == 0x17F ? U's' : c;
  };
  const char32_t a = fold(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 < n) {
    const char32_t b = fold(i + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

template <typename Pred>
std::size_t run_of(const std::vector<CodePoint>& cps, std::size_t j, std::size_t n, Pred pred) {
  while (j < n && pred(cps[j])) ++j;
  return j;
}

// \s+(?!\S)|\s+ at a white-space code point: the run, less its last code point when a non-space follows and
// the run is longer than one (that last space then starts the next pre-token, as " word").
std::size_t match_spaces(const std::vector<CodePoint>& cps, std::size_t i, std::size_t n) {
  const std::size_t j = run_of(cps, i, n, [](const CodePoint& c) { return has(c, kSpace); });
  if (j == n || j - i == 1) return j - i;
  return j - 1 - i;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
std::size_t match_gpt2(const std::vector<CodePoint>& cps, std::size_t i, std::size_t n) {
  if (const std::size_t m = match_contraction(cps, i, n, false)) return m;
  const bool space = cps[i].c == ' ' && i + 1 < n;
  const auto letter = [](const CodePoint& c) { return has(c, kLetter); };
  const auto number = [](const CodePoint& c) { return has(c, kNumber); };
  std::size_t s = space && letter(cps[i + 1]) ? i + 1 : i;
  if (letter(cps[s])) return run_of(cps, s, n, letter) - i;
  s = space && number(cps[i + 1]) ? i + 1 : i;
  if (number(cps[s])) return run_of(cps, s, n, number) - i;
  s = space && is_other(cps[i + 1]) ? i + 1 : i;
  if (is_other(cps[s])) return run_of(cps, s, n, is_other) - i;
  return match_spaces(cps, i, n);
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|
// \s+(?!\S)|\s+
std::size_t match_llama3(const std::vector<CodePoint>& cps, std::size_t i, std::size_t n, std::size_t max_digits) {
  if (const std::size_t m = match_contraction(cps, i, n, true)) return m;
  const auto letter = [](const CodePoint& c) { return has(c, kLetter); };
  const bool prefix = !has(cps[i], kLetter | kNumber | kNewline);
  std::size_t s = prefix && i + 1 < n && letter(cps[i + 1]) ? i + 1 : i;
  if (letter(cps[s])) return run_of(cps, s, n, letter) - i;
  if (has(cps[i], kNumber)) {
    std::size_t j = i;
    while (j < n && j - i < max_digits && has(cps[j], kNumber)) ++j;
    return j - i;
  }
  s = cps[i].c == ' ' && i + 1 < n && is_other(cps[i + 1]) ? i + 1 : i;
  if (is_other(cps[s])) {
    const std::size_t j = run_of(cps, s, n, is_other);
    return run_of(cps, j, n, [](const CodePoint& c) { return has(c, kNewline); }) - i;
  }
  // \s*[\r\n]+: the white-space run up to and including its last line break.
  const std::size_t j = run_of(cps, i, n, [](const CodePoint& c) { return has(c, kSpace); });
  for (std::size_t k = j; k > i; --k) {
    if (has(cps[k - 1], kNewline)) return k - i;
  }
  return match_spaces(cps, i, n);
}

void split_by_pattern(const std::string& piece, SplitPattern pattern, std::vector<std::string>& out) {
  const std::vector<CodePoint> cps = code_points(piece);
  const std::size_t n = cps.size() - 1;
  for (std::size_t i = 0; i < n;) {
    std::size_t len = 0;
    switch (pattern) {
      case SplitPattern::Gpt2:
        len = match_gpt2(cps, i, n);
        break;
      case SplitPattern::Llama3:
        len = match_llama3(cps, i, n, 3);
        break;
      case SplitPattern::Qwen2:
        len = match_llama3(cps, i, n, 1);
        break;
    }
    len = std::max<std::size_t>(len, 1);
    out.emplace_back(piece, cps[i].offset, cps[i + len].offset - cps[i].offset);
    i += len;
  }
}

}  // namespace

std::vector<std::string> split_pretokens(std::string_view text, SplitPattern pattern) {
  std::vector<std::string> out;
  split_by_pattern(std::string(text), pattern, out);
  return out;
}

namespace {

// ---- byte-level alphabet (GPT-2's bytes_to_unicode) -----------------------------------------------------------
//
// Printable bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves; the other 68 bytes, in order, become
// U+0100..U+0143 (so the space 0x20 is U+0120 'Ġ' and the line feed 0x0A is U+010A 'Ċ').
struct ByteAlphabet {
  std::array<char32_t, 256> to_char{};
  std::array<std::int16_t, 0x144> to_byte{};  // -1: not a byte-level character

  ByteAlphabet() {
    to_byte.fill(-1);
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
      to_byte[to_char[static_cast<std::size_t>(b)]] = static_cast<std::int16_t>(b);
    }
  }

  // The bytes a piece of byte-level characters stands for; nullopt when a character is not one of them.
  std::optional<std::string> bytes_of(std::string_view piece) const {
    std::string out;
    for (std::size_t i = 0; i < piece.size();) {
      char32_t c;
      const std::size_t n = utf8_next(piece, i, &c);
      if (n == 0 || c >= to_byte.size() || to_byte[c] < 0) return std::nullopt;
      out.push_back(static_cast<char>(to_byte[c]));
      i += n;
    }
    return out;
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// ---- NFC (ICU) ------------------------------------------------------------------------------------------------

std::string nfc(std::string_view s) {
  LOWBIT_CHECK(s.size() <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
               ErrorCode::InvalidArgument,
               "tokenizer: a text of {} bytes is over the 2 GiB that NFC normalization (ICU) takes at once", s.size());
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = icu::Normalizer2::getNFCInstance(status);
  LOWBIT_CHECK(U_SUCCESS(status), ErrorCode::Unsupported, "tokenizer: ICU cannot load its NFC data: {}",
               u_errorName(status));
  const icu::StringPiece piece(s.data(), static_cast<std::int32_t>(s.size()));
  if (normalizer->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return std::string(s);
  status = U_ZERO_ERROR;
  std::string out;
  icu::StringByteSink<std::string> sink(&out, static_cast<std::int32_t>(s.size()));
  normalizer->normalizeUTF8(0, piece, sink, nullptr, status);
  LOWBIT_CHECK(U_SUCCESS(status), ErrorCode::InvalidArgument, "tokenizer: NFC normalization of {} bytes failed: {}",
               s.size(), u_errorName(status));
  return out;
}

// ---- JSON access with messages naming the file and the field -------------------------------------------------

json parse_json(const std::filesystem::path& path) {
  const std::string text = io::read_text_file(path, "tokenizer");
  try {
    json j = json::parse(text);
    LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt, "tokenizer: '{}' is not a JSON object (it is {})", path.string(),
                 j.type_name());
    return j;
  } catch (const json::parse_error& e) {
    LOWBIT_THROW(ErrorCode::Corrupt, "tokenizer: '{}' is not valid JSON: {}", path.string(), e.what());
  }
}

class Fields {
 public:
  explicit Fields(std::string source) : source_(std::move(source)) {}

  // The member, or nullptr where it is absent or null.
  const json* find(const json& object, std::string_view key) const {
    const auto it = object.find(key);
    return it == object.end() || it->is_null() ? nullptr : &*it;
  }
  const json& object(const json& parent, std::string_view key, std::string_view where) const {
    const json* v = find(parent, key);
    LOWBIT_CHECK(v != nullptr, ErrorCode::Corrupt, "tokenizer: '{}': {} is missing", source_, where);
    LOWBIT_CHECK(v->is_object(), ErrorCode::Corrupt, "tokenizer: '{}': {} is {}, not an object", source_, where,
                 v->type_name());
    return *v;
  }
  const json& array(const json& parent, std::string_view key, std::string_view where) const {
    const json* v = find(parent, key);
    LOWBIT_CHECK(v != nullptr, ErrorCode::Corrupt, "tokenizer: '{}': {} is missing", source_, where);
    LOWBIT_CHECK(v->is_array(), ErrorCode::Corrupt, "tokenizer: '{}': {} is {}, not an array", source_, where,
                 v->type_name());
    return *v;
  }
  std::string string(const json& parent, std::string_view key, std::string_view where) const {
    const json* v = find(parent, key);
    LOWBIT_CHECK(v != nullptr, ErrorCode::Corrupt, "tokenizer: '{}': {} is missing", source_, where);
    return string(*v, where);
  }
  std::string string(const json& v, std::string_view where) const {
    LOWBIT_CHECK(v.is_string(), ErrorCode::Corrupt, "tokenizer: '{}': {} is {}, not a string", source_, where,
                 short_dump(v));
    return v.get<std::string>();
  }
  std::optional<std::string> optional_string(const json& parent, std::string_view key, std::string_view where) const {
    const json* v = find(parent, key);
    if (v == nullptr) return std::nullopt;
    return string(*v, where);
  }
  bool boolean(const json& parent, std::string_view key, bool fallback, std::string_view where) const {
    const json* v = find(parent, key);
    if (v == nullptr) return fallback;
    LOWBIT_CHECK(v->is_boolean(), ErrorCode::Corrupt, "tokenizer: '{}': {} is {}, not true or false", source_, where,
                 short_dump(*v));
    return v->get<bool>();
  }
  std::int32_t id(const json& v, std::string_view where) const {
    LOWBIT_CHECK(v.is_number_integer(), ErrorCode::Corrupt, "tokenizer: '{}': {} is {}, not a token id", source_, where,
                 short_dump(v));
    const std::int64_t id =
        v.is_number_unsigned()
            ? static_cast<std::int64_t>(std::min<std::uint64_t>(v.get<std::uint64_t>(), std::uint64_t{1} << 40))
            : v.get<std::int64_t>();
    LOWBIT_CHECK(id >= 0 && id <= kMaxId, ErrorCode::Corrupt, "tokenizer: '{}': {} is id {}, outside [0, {}]", source_,
                 where, id, kMaxId);
    return static_cast<std::int32_t>(id);
  }
  const std::string& source() const { return source_; }

  static std::string short_dump(const json& v) {
    std::string s = v.dump();
    if (s.size() > 80) s = s.substr(0, 77) + "...";
    return s;
  }

 private:
  std::string source_;
};

// "NFC", "Sequence[Prepend, Replace]": a component's type for messages.
std::string type_name(const json& component) {
  if (!component.is_object()) return Fields::short_dump(component);
  const auto type = component.find("type");
  std::string name = type != component.end() && type->is_string() ? type->get<std::string>() : "(no type)";
  for (const char* key : {"normalizers", "pretokenizers", "processors", "decoders"}) {
    const auto list = component.find(key);
    if (list == component.end() || !list->is_array()) continue;
    name += "[";
    for (std::size_t i = 0; i < list->size(); ++i) name += (i ? ", " : "") + type_name((*list)[i]);
    name += "]";
  }
  return name;
}

std::string type_of(const json& component) {
  const auto type = component.find("type");
  return component.is_object() && type != component.end() && type->is_string() ? type->get<std::string>() : "";
}

// Which known regex a Split step uses; refuses other patterns, behaviors and invert.
SplitPattern split_pattern(const Fields& f, const json& split, std::string_view where) {
  const json& pattern = f.object(split, "pattern", fmt::format("{}.pattern", where));
  if (const auto literal = f.optional_string(pattern, "String", fmt::format("{}.pattern.String", where))) {
    LOWBIT_THROW(ErrorCode::Unsupported,
                 "tokenizer: '{}': {} splits on the string '{}'; lowbit knows only the Split regexes of GPT-2, Llama 3 "
                 "and Qwen 2",
                 f.source(), where, *literal);
  }
  const std::string regex = f.string(pattern, "Regex", fmt::format("{}.pattern.Regex", where));
  const std::string behavior = f.string(split, "behavior", fmt::format("{}.behavior", where));
  LOWBIT_CHECK(behavior == "Isolated", ErrorCode::Unsupported,
               "tokenizer: '{}': {} has behavior '{}'; lowbit supports Split with behavior Isolated only", f.source(),
               where, behavior);
  LOWBIT_CHECK(!f.boolean(split, "invert", false, fmt::format("{}.invert", where)), ErrorCode::Unsupported,
               "tokenizer: '{}': {} has invert true; lowbit supports Split with invert false only", f.source(), where);
  if (regex == kGpt2Regex) return SplitPattern::Gpt2;
  if (regex == kLlama3Regex) return SplitPattern::Llama3;
  if (regex == kQwen2Regex) return SplitPattern::Qwen2;
  LOWBIT_THROW(ErrorCode::Unsupported,
               "tokenizer: '{}': {} has the regex '{}', which lowbit does not match; it knows GPT-2's '{}', Llama 3's "
               "'{}' and Qwen 2's '{}'",
               f.source(), where, regex, kGpt2Regex, kLlama3Regex, kQwen2Regex);
}

std::optional<std::string> config_token(const Fields& f, const json& config, const char* key) {
  const json* v = f.find(config, key);
  if (v == nullptr) return std::nullopt;
  if (v->is_object()) return f.string(*v, "content", fmt::format("{}.content", key));  // {"content": ..., ...}
  return f.string(*v, key);
}

std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

}  // namespace

// ---- loading ------------------------------------------------------------------------------------------------

BpeTokenizer BpeTokenizer::load(const std::filesystem::path& json_file, const std::filesystem::path& config_file) {
  BpeTokenizer t;
  t.source_ = json_file.string();
  const json root = parse_json(json_file);
  const Fields f(t.source_);

  // Kind of tokenizer first, so that a file of another kind is refused for what it is.
  const json& model = f.object(root, "model", "model");
  const std::string model_type = f.string(model, "type", "model.type");
  LOWBIT_CHECK(model_type == "BPE", ErrorCode::Unsupported,
               "tokenizer: '{}': model.type is '{}'; lowbit reads byte-level BPE tokenizer.json files only (model "
               "type BPE)",
               t.source_, model_type);

  if (const json* normalizer = f.find(root, "normalizer")) {
    const bool all_nfc = type_of(*normalizer) == "NFC" ||
                         (type_of(*normalizer) == "Sequence" && normalizer->contains("normalizers") &&
                          (*normalizer)["normalizers"].is_array() &&
                          std::all_of((*normalizer)["normalizers"].begin(), (*normalizer)["normalizers"].end(),
                                      [](const json& n) { return type_of(n) == "NFC"; }));
    LOWBIT_CHECK(all_nfc, ErrorCode::Unsupported,
                 "tokenizer: '{}': normalizer {} is not supported; lowbit supports no normalizer or NFC", t.source_,
                 type_name(*normalizer));
    t.nfc_ = !(type_of(*normalizer) == "Sequence" && (*normalizer)["normalizers"].empty());
  }

  const json* pre = f.find(root, "pre_tokenizer");
  LOWBIT_CHECK(pre != nullptr, ErrorCode::Unsupported,
               "tokenizer: '{}': pre_tokenizer is null; lowbit reads byte-level BPE tokenizer.json files only "
               "(pre_tokenizer ByteLevel, alone or after Split, as GPT-2, Llama 3 and Qwen 2 write them)",
               t.source_);
  {
    std::vector<std::pair<const json*, std::string>> steps;
    if (type_of(*pre) == "Sequence") {
      const json& list = f.array(*pre, "pretokenizers", "pre_tokenizer.pretokenizers");
      for (std::size_t i = 0; i < list.size(); ++i)
        steps.emplace_back(&list[i], fmt::format("pre_tokenizer.pretokenizers[{}]", i));
    } else {
      steps.emplace_back(pre, "pre_tokenizer");
    }
    for (std::size_t i = 0; i < steps.size(); ++i) {
      const auto& [step, where] = steps[i];
      const std::string type = type_of(*step);
      PreTokenizerStep s;
      if (type == "ByteLevel") {
        // ByteLevel turns the text into byte-level characters, which a Split after it would not see as text.
        LOWBIT_CHECK(i + 1 == steps.size(), ErrorCode::Unsupported,
                     "tokenizer: '{}': pre_tokenizer {} has steps after ByteLevel; lowbit supports Split steps "
                     "followed by one ByteLevel",
                     t.source_, type_name(*pre));
        s.byte_level = true;
        s.add_prefix_space = f.boolean(*step, "add_prefix_space", true, where + ".add_prefix_space");
        s.use_regex = f.boolean(*step, "use_regex", true, where + ".use_regex");
      } else if (type == "Split") {
        s.pattern = split_pattern(f, *step, where);
      } else {
        LOWBIT_THROW(ErrorCode::Unsupported,
                     "tokenizer: '{}': pre_tokenizer {} is not supported; lowbit reads byte-level BPE tokenizer.json "
                     "files only (pre_tokenizer ByteLevel, alone or after Split)",
                     t.source_, type_name(*pre));
      }
      t.pre_.push_back(s);
    }
    LOWBIT_CHECK(!t.pre_.empty() && t.pre_.back().byte_level, ErrorCode::Unsupported,
                 "tokenizer: '{}': pre_tokenizer {} has no ByteLevel step; lowbit reads byte-level BPE tokenizer.json "
                 "files only",
                 t.source_, type_name(*pre));
  }

  const json* decoder = f.find(root, "decoder");
  LOWBIT_CHECK(decoder != nullptr && type_of(*decoder) == "ByteLevel", ErrorCode::Unsupported,
               "tokenizer: '{}': decoder {} is not supported; lowbit decodes byte-level BPE (decoder ByteLevel) only",
               t.source_, decoder ? type_name(*decoder) : "null");

  // ---- the BPE model
  if (const json* dropout = f.find(model, "dropout")) {
    LOWBIT_CHECK(dropout->is_number() && dropout->get<double>() == 0.0, ErrorCode::Unsupported,
                 "tokenizer: '{}': model.dropout is {}; lowbit tokenizes deterministically (dropout null or 0)",
                 t.source_, Fields::short_dump(*dropout));
  }
  LOWBIT_CHECK(!f.boolean(model, "byte_fallback", false, "model.byte_fallback"), ErrorCode::Unsupported,
               "tokenizer: '{}': model.byte_fallback is true (a SentencePiece-style BPE, as Llama 2's tokenizer.json); "
               "lowbit reads byte-level BPE tokenizer.json files only; use the folder's tokenizer.model",
               t.source_);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const auto affix = f.optional_string(model, key, fmt::format("model.{}", key));
    LOWBIT_CHECK(!affix || affix->empty(), ErrorCode::Unsupported,
                 "tokenizer: '{}': model.{} is '{}'; lowbit supports byte-level BPE without one", t.source_, key,
                 *affix);
  }
  t.ignore_merges_ = f.boolean(model, "ignore_merges", false, "model.ignore_merges");
  t.fuse_unk_ = f.boolean(model, "fuse_unk", false, "model.fuse_unk");

  const ByteAlphabet& alphabet = byte_alphabet();
  const json& vocab = f.object(model, "vocab", "model.vocab");
  std::unordered_map<std::string, std::int32_t> by_piece;  // the vocabulary as written
  by_piece.reserve(vocab.size());
  std::int32_t max_id = -1;
  for (const auto& [piece, value] : vocab.items()) {
    const std::int32_t id = f.id(value, fmt::format("model.vocab['{}']", piece));
    by_piece.emplace(piece, id);
    max_id = std::max(max_id, id);
  }
  struct Added {
    std::string content;
    std::int32_t id;
    bool special;
    AddedToken token;
  };
  std::vector<Added> added;
  if (const json* list = f.find(root, "added_tokens")) {
    LOWBIT_CHECK(list->is_array(), ErrorCode::Corrupt, "tokenizer: '{}': added_tokens is {}, not an array", t.source_,
                 list->type_name());
    for (std::size_t i = 0; i < list->size(); ++i) {
      const json& a = (*list)[i];
      const std::string where = fmt::format("added_tokens[{}]", i);
      LOWBIT_CHECK(a.is_object(), ErrorCode::Corrupt, "tokenizer: '{}': {} is {}, not an object", t.source_, where,
                   a.type_name());
      Added entry;
      entry.content = f.string(a, "content", where + ".content");
      const json* id = f.find(a, "id");
      LOWBIT_CHECK(id != nullptr, ErrorCode::Corrupt, "tokenizer: '{}': {}.id is missing", t.source_, where);
      entry.id = f.id(*id, where + ".id");
      // The `tokenizers` library reuses the vocabulary's id for a content it already has; a file saying otherwise
      // would make its ids and ours differ.
      if (const auto it = by_piece.find(entry.content); it != by_piece.end()) {
        LOWBIT_CHECK(it->second == entry.id, ErrorCode::Corrupt,
                     "tokenizer: '{}': {} '{}' has id {}, but model.vocab gives it id {}", t.source_, where,
                     entry.content, entry.id, it->second);
      }
      entry.special = f.boolean(a, "special", false, where + ".special");
      entry.token.id = entry.id;
      entry.token.single_word = f.boolean(a, "single_word", false, where + ".single_word");
      entry.token.lstrip = f.boolean(a, "lstrip", false, where + ".lstrip");
      entry.token.rstrip = f.boolean(a, "rstrip", false, where + ".rstrip");
      entry.token.normalized = f.boolean(a, "normalized", true, where + ".normalized");
      // An empty content is skipped by the library.
      if (entry.content.empty()) continue;
      max_id = std::max(max_id, entry.id);
      added.push_back(std::move(entry));
    }
  }

  // Per-id tables.
  const auto size = static_cast<std::size_t>(max_id + 1);
  t.pieces_.assign(size, {});
  t.decoded_.assign(size, {});
  t.used_.assign(size, 0);
  t.skip_.assign(size, 0);
  t.byte_ids_.fill(-1);
  t.vocab_bytes_.reserve(by_piece.size());
  for (const auto& [piece, id] : by_piece) {
    const auto index = static_cast<std::size_t>(id);
    LOWBIT_CHECK(!t.used_[index], ErrorCode::Corrupt, "tokenizer: '{}': model.vocab gives id {} to both '{}' and '{}'",
                 t.source_, id, t.pieces_[index], piece);
    t.used_[index] = 1;
    t.pieces_[index] = piece;
    // A piece of characters outside the byte-level alphabet cannot come out of the BPE of bytes.
    if (const auto bytes = alphabet.bytes_of(piece)) {
      if (bytes->size() == 1) t.byte_ids_[static_cast<unsigned char>((*bytes)[0])] = id;
      t.vocab_bytes_.emplace(*bytes, id);
    }
  }
  std::unordered_set<std::string> special_contents;
  for (Added& a : added) {
    // Decoding shows a normalized token in its normalized form (the library's simple_id_to_token).
    std::string shown = a.content;
    if (a.token.normalized && t.nfc_) shown = nfc(a.content);
    a.token.match = a.token.normalized && t.nfc_ ? shown : a.content;
    const auto index = static_cast<std::size_t>(a.id);
    t.pieces_[index] = shown;
    t.used_[index] = 1;
    if (a.special) special_contents.insert(a.content);
    t.added_.push_back(a.token);
  }
  for (std::size_t id = 0; id < size; ++id) {
    if (!t.used_[id]) continue;
    const std::string& piece = t.pieces_[id];
    t.decoded_[id] = alphabet.bytes_of(piece).value_or(piece);  // as the ByteLevel decoder: bytes, or the text itself
    t.skip_[id] = special_contents.count(piece) ? 1 : 0;
  }
  t.index_added();

  if (const auto unk = f.optional_string(model, "unk_token", "model.unk_token")) {
    const auto it = by_piece.find(*unk);
    LOWBIT_CHECK(it != by_piece.end(), ErrorCode::Corrupt,
                 "tokenizer: '{}': model.unk_token '{}' is not in model.vocab", t.source_, *unk);
    t.unk_id_ = it->second;
  }

  const json& merges = f.array(model, "merges", "model.merges");
  t.merges_.reserve(merges.size());
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    const std::string where = fmt::format("model.merges[{}]", rank);
    std::string a, b;
    if (m.is_string()) {  // "a b", the older form: exactly one space
      const std::string s = m.get<std::string>();
      const std::size_t space = s.find(' ');
      LOWBIT_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos, ErrorCode::Corrupt,
                   "tokenizer: '{}': {} is '{}', not two pieces separated by one space", t.source_, where, s);
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else {
      LOWBIT_CHECK(m.is_array() && m.size() == 2, ErrorCode::Corrupt,
                   "tokenizer: '{}': {} is {}, not \"a b\" or [a, b]", t.source_, where, Fields::short_dump(m));
      a = f.string(m[0], where + "[0]");
      b = f.string(m[1], where + "[1]");
    }
    const auto lookup = [&](const std::string& piece) {
      const auto it = by_piece.find(piece);
      LOWBIT_CHECK(it != by_piece.end(), ErrorCode::Corrupt,
                   "tokenizer: '{}': {} names '{}', which is not in model.vocab", t.source_, where, piece);
      return it->second;
    };
    const std::int32_t id_a = lookup(a), id_b = lookup(b), merged = lookup(a + b);
    // A pair listed twice keeps its last rank, as the library's map does.
    t.merges_[pair_key(id_a, id_b)] = Merge{static_cast<std::int32_t>(rank), merged};
  }

  // ---- post-processor: the special tokens around the text
  const auto template_ids = [&](const json& tp, const std::string& where) {
    const json& single = f.array(tp, "single", where + ".single");
    const json* specials = f.find(tp, "special_tokens");
    bool seen_a = false;
    std::vector<std::int32_t> prefix, suffix;
    for (std::size_t i = 0; i < single.size(); ++i) {
      const json& item = single[i];
      const std::string item_where = fmt::format("{}.single[{}]", where, i);
      if (const json* seq = item.is_object() ? f.find(item, "Sequence") : nullptr) {
        const std::string id = f.string(*seq, "id", item_where + ".Sequence.id");
        LOWBIT_CHECK(id == "A" && !seen_a, ErrorCode::Corrupt,
                     "tokenizer: '{}': {} is sequence '{}'; a single-sequence template holds $A once", t.source_,
                     item_where, id);
        seen_a = true;
        continue;
      }
      const json* special = item.is_object() ? f.find(item, "SpecialToken") : nullptr;
      LOWBIT_CHECK(special != nullptr, ErrorCode::Corrupt, "tokenizer: '{}': {} is {}, not Sequence or SpecialToken",
                   t.source_, item_where, Fields::short_dump(item));
      const std::string name = f.string(*special, "id", item_where + ".SpecialToken.id");
      const json* entry = specials ? f.find(*specials, name) : nullptr;
      LOWBIT_CHECK(entry != nullptr, ErrorCode::Corrupt,
                   "tokenizer: '{}': {} names '{}', which {}.special_tokens lacks", t.source_, item_where, name, where);
      const json& ids = f.array(*entry, "ids", fmt::format("{}.special_tokens['{}'].ids", where, name));
      for (const json& id : ids) {
        const std::int32_t v = f.id(id, fmt::format("{}.special_tokens['{}'].ids", where, name));
        LOWBIT_CHECK(v <= max_id && t.used_[static_cast<std::size_t>(v)], ErrorCode::Corrupt,
                     "tokenizer: '{}': {}.special_tokens['{}'] has id {}, which no token has", t.source_, where, name,
                     v);
        (seen_a ? suffix : prefix).push_back(v);
      }
    }
    LOWBIT_CHECK(seen_a, ErrorCode::Corrupt, "tokenizer: '{}': {}.single has no $A", t.source_, where);
    t.prefix_ = std::move(prefix);
    t.suffix_ = std::move(suffix);
  };
  if (const json* post = f.find(root, "post_processor")) {
    std::vector<std::pair<const json*, std::string>> processors;
    if (type_of(*post) == "Sequence") {
      const json& list = f.array(*post, "processors", "post_processor.processors");
      for (std::size_t i = 0; i < list.size(); ++i)
        processors.emplace_back(&list[i], fmt::format("post_processor.processors[{}]", i));
    } else {
      processors.emplace_back(post, "post_processor");
    }
    bool have_template = false;
    for (const auto& [p, where] : processors) {
      const std::string type = type_of(*p);
      if (type == "ByteLevel") continue;  // trims offsets only; ids are untouched
      LOWBIT_CHECK(type == "TemplateProcessing" && !have_template, ErrorCode::Unsupported,
                   "tokenizer: '{}': post_processor {} is not supported; lowbit supports ByteLevel and one "
                   "TemplateProcessing",
                   t.source_, type_name(*post));
      template_ids(*p, where);
      have_template = true;
    }
  }

  // ---- tokenizer_config.json: the named BOS/EOS, and add_bos_token / add_eos_token, which (as transformers'
  // TokenizersBackend.update_post_processor does) replace the template by [BOS] $A [EOS] when either is given.
  std::optional<std::int32_t> bos, eos;
  if (std::filesystem::exists(config_file)) {
    const json config = parse_json(config_file);
    const Fields c(config_file.string());
    const auto resolve = [&](const std::optional<std::string>& name, const char* key) -> std::optional<std::int32_t> {
      if (!name) return std::nullopt;
      for (const Added& a : added)
        if (a.content == *name) return a.id;
      const auto it = by_piece.find(*name);
      LOWBIT_CHECK(it != by_piece.end(), ErrorCode::Corrupt,
                   "tokenizer: '{}': {} is '{}', which '{}' has neither as an added token nor in model.vocab",
                   config_file.string(), key, *name, t.source_);
      return it->second;
    };
    bos = resolve(config_token(c, config, "bos_token"), "bos_token");
    eos = resolve(config_token(c, config, "eos_token"), "eos_token");
    if (config.contains("add_bos_token") || config.contains("add_eos_token")) {
      t.prefix_.clear();
      t.suffix_.clear();
      if (c.boolean(config, "add_bos_token", false, "add_bos_token") && bos) t.prefix_.push_back(*bos);
      if (c.boolean(config, "add_eos_token", false, "add_eos_token") && eos) t.suffix_.push_back(*eos);
    }
  }
  t.bos_id_ = bos ? *bos : t.prefix_.size() == 1 ? t.prefix_[0] : -1;
  t.eos_id_ = eos ? *eos : t.suffix_.size() == 1 ? t.suffix_[0] : -1;
  return t;
}

void BpeTokenizer::index_added() {
  for (AddedSet* set : {&raw_added_, &normalized_added_}) {
    set->tokens.clear();
    for (auto& bucket : set->by_first) bucket.clear();
  }
  for (std::size_t i = 0; i < added_.size(); ++i) {
    const AddedToken& a = added_[i];
    if (a.match.empty()) continue;
    AddedSet& set = a.normalized ? normalized_added_ : raw_added_;
    set.tokens.push_back(static_cast<std::uint32_t>(i));
    set.by_first[static_cast<unsigned char>(a.match[0])].push_back(static_cast<std::uint32_t>(i));
  }
  for (AddedSet* set : {&raw_added_, &normalized_added_}) {
    for (auto& bucket : set->by_first) {
      std::stable_sort(bucket.begin(), bucket.end(), [&](std::uint32_t x, std::uint32_t y) {
        return added_[x].match.size() > added_[y].match.size();
      });
    }
  }
}

// ---- encoding ----------------------------------------------------------------------------------------------

// The library's AddedVocabulary::find_matches: leftmost-longest matches, scanned left to right without overlap;
// a single_word token next to a word character is skipped (its text stays text); lstrip / rstrip widen a match
// over the white space beside it, which then belongs to the token.
std::vector<BpeTokenizer::Segment> BpeTokenizer::split_added(std::string_view text, const AddedSet& set) const {
  std::vector<Segment> out;
  if (set.empty()) {
    out.push_back({std::string(text), -1});
    return out;
  }
  std::size_t start_offset = 0;  // end of the last token emitted
  std::size_t pos = 0;           // where the search goes on
  while (pos < text.size()) {
    // Leftmost start with a match, then the longest token there.
    std::size_t start = pos;
    const AddedToken* found = nullptr;
    for (; start < text.size() && found == nullptr; ++start) {
      for (const std::uint32_t i : set.by_first[static_cast<unsigned char>(text[start])]) {
        const std::string& m = added_[i].match;
        if (text.compare(start, m.size(), m) == 0) {
          found = &added_[i];
          break;
        }
      }
      if (found) break;
    }
    if (found == nullptr) break;
    std::size_t stop = start + found->match.size();
    pos = stop;
    if (found->single_word) {
      const bool word_before = start > 0 && is_word_char(utf8_at(text, utf8_prev(text, start)));
      const bool word_after = stop < text.size() && is_word_char(utf8_at(text, stop));
      if (word_before || word_after) continue;
    }
    if (found->lstrip) {
      std::size_t s = start;
      while (s > 0) {
        const std::size_t p = utf8_prev(text, s);
        if (!is_white_space(utf8_at(text, p))) break;
        s = p;
      }
      start = std::max(s, start_offset);  // white space an earlier token took stays with it
    }
    if (found->rstrip) {
      while (stop < text.size()) {
        char32_t c;
        const std::size_t n = utf8_next(text, stop, &c);
        if (!is_white_space(c)) break;
        stop += n;
      }
    }
    if (start_offset < start) out.push_back({std::string(text.substr(start_offset, start - start_offset)), -1});
    out.push_back({{}, found->id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({std::string(text.substr(start_offset)), -1});
  return out;
}

std::vector<std::string> BpeTokenizer::pre_tokenize(std::string piece) const {
  std::vector<std::string> pieces;
  pieces.push_back(std::move(piece));
  std::vector<std::string> next;
  for (const PreTokenizerStep& step : pre_) {
    next.clear();
    for (std::string& p : pieces) {
      if (!step.byte_level) {
        split_by_pattern(p, step.pattern, next);
        continue;
      }
      if (step.add_prefix_space && p.front() != ' ') p.insert(p.begin(), ' ');
      if (step.use_regex) {
        split_by_pattern(p, SplitPattern::Gpt2, next);
      } else {
        next.push_back(std::move(p));
      }
    }
    std::swap(pieces, next);
  }
  return pieces;
}

// The library's BPE::merge_word + Word::merge_all: every byte a symbol, then merges applied lowest rank first
// (leftmost first among equal ranks) through a priority queue, with stale entries skipped.
void BpeTokenizer::tokenize_word(const std::string& word, std::vector<std::int32_t>& out) const {
  if (ignore_merges_) {
    if (const auto it = vocab_bytes_.find(word); it != vocab_bytes_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Symbol {
    std::int32_t id;
    std::int32_t prev;
    std::int32_t next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&](std::int32_t id) {
    const auto n = static_cast<std::int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, true});
  };
  bool pending_unk = false;  // an unknown byte not yet added (fused with the next under fuse_unk)
  for (const char ch : word) {
    const std::int32_t id = byte_ids_[static_cast<unsigned char>(ch)];
    if (id >= 0) {
      if (pending_unk) add(unk_id_);
      pending_unk = false;
      add(id);
    } else if (unk_id_ >= 0) {
      if (pending_unk && !fuse_unk_) add(unk_id_);
      pending_unk = true;
    }  // else: dropped, as the library drops a character with neither a piece nor an unk token
  }
  if (pending_unk) add(unk_id_);

  struct Candidate {
    std::int32_t rank;
    std::int32_t pos;
    std::int32_t id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto find = [&](std::int32_t a, std::int32_t b) -> const Merge* {
    const auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* m = find(symbols[i].id, symbols[i + 1].id))
      queue.push({m->rank, static_cast<std::int32_t>(i), m->id});
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<std::size_t>(top.pos)];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[static_cast<std::size_t>(left.next)];
    const Merge* current = find(left.id, right.id);
    if (current == nullptr || current->id != top.id) continue;  // the pair changed since this entry was queued
    left.id = top.id;
    left.next = right.next;
    right.alive = false;
    if (left.next >= 0) symbols[static_cast<std::size_t>(left.next)].prev = top.pos;
    if (left.prev >= 0) {
      if (const Merge* m = find(symbols[static_cast<std::size_t>(left.prev)].id, left.id))
        queue.push({m->rank, left.prev, m->id});
    }
    if (left.next >= 0) {
      if (const Merge* m = find(left.id, symbols[static_cast<std::size_t>(left.next)].id))
        queue.push({m->rank, top.pos, m->id});
    }
  }
  for (const Symbol& s : symbols)
    if (s.alive) out.push_back(s.id);
}

std::vector<std::int32_t> BpeTokenizer::encode(std::string_view text, bool add_special) const {
  for (std::size_t i = 0; i < text.size();) {
    char32_t c;
    const std::size_t n = utf8_next(text, i, &c);
    LOWBIT_CHECK(n > 0, ErrorCode::InvalidArgument,
                 "tokenizer: the text is not valid UTF-8 at byte {} (0x{:02X}); '{}' encodes UTF-8 text only", i,
                 static_cast<unsigned char>(text[i]), source_);
    i += n;
  }
  std::vector<std::int32_t> ids;
  if (add_special) ids = prefix_;
  for (Segment& raw : split_added(text, raw_added_)) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    const std::string normalized = nfc_ ? nfc(raw.text) : std::move(raw.text);
    for (Segment& segment : split_added(normalized, normalized_added_)) {
      if (segment.id >= 0) {
        ids.push_back(segment.id);
        continue;
      }
      if (segment.text.empty()) continue;
      for (const std::string& word : pre_tokenize(std::move(segment.text))) tokenize_word(word, ids);
    }
  }
  if (add_special) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

// ---- decoding ----------------------------------------------------------------------------------------------

void BpeTokenizer::check_id(std::int32_t id) const {
  LOWBIT_CHECK(id >= 0 && id < vocab_size(), ErrorCode::InvalidArgument,
               "tokenizer: id {} is outside the vocabulary of '{}' (size {})", id, source_, vocab_size());
  LOWBIT_CHECK(used_[static_cast<std::size_t>(id)], ErrorCode::InvalidArgument,
               "tokenizer: id {} is no token of '{}' (the vocabulary, size {}, skips it)", id, source_, vocab_size());
}

std::string BpeTokenizer::decode(std::span<const std::int32_t> ids) const {
  std::string bytes;
  for (const std::int32_t id : ids) {
    check_id(id);
    if (!skip_[static_cast<std::size_t>(id)]) bytes += decoded_[static_cast<std::size_t>(id)];
  }
  return utf8_lossy(bytes);
}

std::string BpeTokenizer::piece(std::int32_t id) const {
  check_id(id);
  return pieces_[static_cast<std::size_t>(id)];
}

}  // namespace lowbit::model::detail
