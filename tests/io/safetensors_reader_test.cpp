// parse_safetensors on crafted images: one test per rule of docs/formats.md#safetensors, each requiring
// Error{Corrupt} with a message that names the file, the tensor and the numbers at fault.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "io/io_test_util.hpp"
#include "lowbit/io/safetensors.hpp"

namespace lowbit::io::test {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr const char* kFile = "bad.safetensors";

// One tensor entry of a header: "name":{"dtype":..,"shape":..,"data_offsets":[b,e]}.
std::string entry(std::string_view name, std::string_view dtype, std::string_view shape, std::uint64_t begin,
                  std::uint64_t end) {
  return fmt::format(R"("{}":{{"dtype":"{}","shape":{},"data_offsets":[{},{}]}})", name, dtype, shape, begin, end);
}

SafetensorsHeader parse(const std::vector<std::byte>& image) { return parse_safetensors(image, kFile); }

std::string corrupt(const std::vector<std::byte>& image) {
  return error_message(ErrorCode::Corrupt, [&] { parse(image); });
}

// A small valid file: metadata, an F32 and a U8 tensor, 11 bytes of data.
std::vector<std::byte> valid_image() {
  return make_image(
      "{\"__metadata__\":{\"k\":\"v\"}," + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "U8", "[3]", 8, 11) + "}",
      11);
}

TEST(SafetensorsReader, AcceptsValidFile) {
  const SafetensorsHeader h = parse(valid_image());
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[0].dtype, DType::F32);
  EXPECT_EQ(h.tensors[0].shape, Shape({2}));
  EXPECT_EQ(h.tensors[1].name, "b");
  EXPECT_EQ(h.tensors[1].begin, 8u);
  EXPECT_EQ(h.tensors[1].end, 11u);
  EXPECT_EQ(h.metadata.at("k"), "v");
  EXPECT_EQ(h.data_offset, 8 + h.header_bytes);
}

TEST(SafetensorsReader, AcceptsTrailingSpacesAndEmptyHeader) {
  EXPECT_EQ(parse(make_image("{" + entry("a", "F32", "[1]", 0, 4) + "}      ", 4)).tensors.size(), 1u);
  EXPECT_TRUE(parse(make_image("{}")).tensors.empty());
  EXPECT_TRUE(parse(make_image("{\"__metadata__\":{}}  ")).metadata.empty());
}

TEST(SafetensorsReader, TensorsComeInOffsetOrder) {
  const auto h =
      parse(make_image("{" + entry("z", "F32", "[1]", 0, 4) + "," + entry("a", "F32", "[1]", 4, 8) + "}", 8));
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "z");
  EXPECT_EQ(h.tensors[1].name, "a");
}

TEST(SafetensorsReader, AcceptsZeroSizeTensorsAnywhere) {
  const auto h = parse(make_image("{" + entry("empty0", "F32", "[0,3]", 0, 0) + "," + entry("a", "F32", "[1]", 0, 4) +
                                      "," + entry("mid", "I64", "[2,0]", 4, 4) + "," + entry("b", "U8", "[2]", 4, 6) +
                                      "," + entry("last", "BF16", "[0]", 6, 6) + "}",
                                  6));
  ASSERT_EQ(h.tensors.size(), 5u);
  EXPECT_EQ(h.tensors[0].name, "empty0");
  EXPECT_EQ(h.tensors[4].name, "last");
  EXPECT_EQ(h.tensors[4].nbytes(), 0u);
}

// ---- rule 1: lengths ----------------------------------------------------------------------------------------

TEST(SafetensorsReader, RejectsFileShorterThanLengthField) {
  for (std::size_t size = 0; size < 8; ++size) {
    const std::vector<std::byte> image(size, std::byte{0});
    EXPECT_THAT(corrupt(image), AllOf(HasSubstr(kFile), HasSubstr(fmt::format("file is {} bytes", size))));
  }
}

TEST(SafetensorsReader, EveryPrefixOfValidFileIsCorrupt) {
  const std::vector<std::byte> image = valid_image();
  ASSERT_NO_THROW(parse(image));
  for (std::size_t size = 0; size < image.size(); ++size) {
    SCOPED_TRACE(fmt::format("prefix of {} of {} bytes", size, image.size()));
    const std::vector<std::byte> prefix(image.begin(), image.begin() + static_cast<std::ptrdiff_t>(size));
    EXPECT_THAT(corrupt(prefix), HasSubstr(kFile));
  }
}

TEST(SafetensorsReader, EveryByteFlipIsRejectedOrParsed) {
  // No single-byte change may crash or throw anything but lowbit::Error (the fuzzer's property, exhaustively
  // on one file: each byte replaced by each of a few values).
  const std::vector<std::byte> image = valid_image();
  for (std::size_t i = 0; i < image.size(); ++i) {
    for (const unsigned value : {0x00u, 0x01u, 0x20u, 0x22u, 0x2cu, 0x7bu, 0x7du, 0x80u, 0xffu}) {
      std::vector<std::byte> changed = image;
      changed[i] = static_cast<std::byte>(value);
      try {
        parse(changed);
      } catch (const Error& e) {
        EXPECT_TRUE(e.code() == ErrorCode::Corrupt || e.code() == ErrorCode::Unsupported) << e.what();
      }
    }
  }
}

TEST(SafetensorsReader, RejectsHeaderLengthAboveLimit) {
  const std::uint64_t n = kMaxSafetensorsHeaderBytes + 1;
  EXPECT_THAT(corrupt(make_image("{}", 0, n)),
              AllOf(HasSubstr("header length 100000001"), HasSubstr("limit of 100000000 bytes")));
}

TEST(SafetensorsReader, RejectsHeaderLengthNear2To64WithoutWrapping) {
  // 8 + N wraps to a small number for these N; the reader must not compute it.
  for (const std::uint64_t n : {~std::uint64_t{0}, ~std::uint64_t{0} - 7, std::uint64_t{1} << 63}) {
    EXPECT_THAT(corrupt(make_image("{}", 16, n)), HasSubstr(fmt::format("header length {}", n)));
  }
}

TEST(SafetensorsReader, RejectsHeaderLongerThanFile) {
  EXPECT_THAT(corrupt(make_image("{}", 0, 100)), AllOf(HasSubstr(kFile), HasSubstr("header longer than the file"),
                                                       HasSubstr("declares 100 bytes"), HasSubstr("only 2 follow")));
  // Exactly at the limit, still longer than the file.
  EXPECT_THAT(corrupt(make_image("{}", 0, kMaxSafetensorsHeaderBytes)), HasSubstr("header longer than the file"));
}

// ---- rule 2: the header is a UTF-8 JSON object without duplicate keys --------------------------------------

TEST(SafetensorsReader, RejectsHeaderNotStartingWithBrace) {
  EXPECT_THAT(corrupt(make_image(" {}")), HasSubstr("does not start with '{' (first byte 0x20)"));
  EXPECT_THAT(corrupt(make_image("")), HasSubstr("header of 0 bytes does not start with '{'"));
}

TEST(SafetensorsReader, RejectsHeaderNotAnObject) {
  EXPECT_THAT(corrupt(make_image("[1, 2]")), HasSubstr("does not start with '{'"));
  EXPECT_THAT(corrupt(make_image("\"text\"")), HasSubstr("does not start with '{'"));
  EXPECT_THAT(corrupt(make_image("{} []")), HasSubstr("not valid JSON"));
}

TEST(SafetensorsReader, RejectsInvalidJson) {
  EXPECT_THAT(corrupt(make_image("{\"a\":")), AllOf(HasSubstr(kFile), HasSubstr("not valid JSON")));
  // The JSON library stops at a NUL byte as at the end of a C string; what follows must not slip through.
  EXPECT_THAT(corrupt(make_image(std::string_view("{}\0{\"a\":1}", 10))), HasSubstr("NUL byte at offset 2"));
  EXPECT_THAT(corrupt(make_image("{/*c*/}")), HasSubstr("not valid JSON"));
}

TEST(SafetensorsReader, RejectsInvalidUtf8Anywhere) {
  const std::string e = entry("w", "F32", "[1]", 0, 4);
  // In a tensor name, in a metadata value, an overlong '/', a UTF-16 surrogate, a code point above U+10FFFF,
  // and a byte outside any string.
  for (const std::string& header :
       {std::string("{\"w\xff\":1}"), "{\"__metadata__\":{\"k\":\"\xc3\"}," + e + "}", std::string("{\"\xc0\xaf\":1}"),
        std::string("{\"\xed\xa0\x80\":1}"), std::string("{\"\xf4\x90\x80\x80\":1}"), "{" + e + "}\xa0"}) {
    SCOPED_TRACE(header);
    EXPECT_THAT(corrupt(make_image(header, 4)), AllOf(HasSubstr(kFile), HasSubstr("not valid UTF-8 at byte")));
  }
  EXPECT_THAT(corrupt(make_image("{\"w\xff\":1}")), HasSubstr("at byte 3 of 8 (byte 0xff)"));
  // Valid multi-byte names pass.
  EXPECT_EQ(parse(make_image("{" + entry("gewicht.\xc3\xa4\xe2\x9c\x93\xf0\x9f\x98\x80", "F32", "[1]", 0, 4) + "}", 4))
                .tensors[0]
                .name,
            "gewicht.\xc3\xa4\xe2\x9c\x93\xf0\x9f\x98\x80");
}

TEST(SafetensorsReader, RejectsDuplicateKeys) {
  const std::string a = entry("a", "F32", "[1]", 0, 4);
  EXPECT_THAT(corrupt(make_image("{" + a + "," + a + "}", 4)), HasSubstr("the key 'a' twice"));
  EXPECT_THAT(corrupt(make_image(R"({"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4)),
              HasSubstr("the key 'dtype' twice"));
  EXPECT_THAT(corrupt(make_image(R"({"__metadata__":{"k":"1","k":"2"}})")), HasSubstr("the key 'k' twice"));
  // The same key in different objects is fine.
  EXPECT_NO_THROW(parse(make_image("{\"__metadata__\":{\"dtype\":\"x\"}," + a + "}", 4)));
}

TEST(SafetensorsReader, RejectsDeepNesting) {
  const std::string deep = "{\"a\":" + std::string(50, '[') + std::string(50, ']') + "}";
  EXPECT_THAT(corrupt(make_image(deep)), HasSubstr("nests deeper than 8 levels"));
}

// ---- rule 3: tensor entries --------------------------------------------------------------------------------

TEST(SafetensorsReader, RejectsEntryNotAnObject) {
  EXPECT_THAT(corrupt(make_image(R"({"w":5})")),
              HasSubstr("tensor 'w' is described by a JSON number (5), not an object"));
  EXPECT_THAT(corrupt(make_image(R"({"w":[0,4]})")), HasSubstr("tensor 'w' is described by a JSON array"));
}

TEST(SafetensorsReader, RejectsMissingFields) {
  EXPECT_THAT(corrupt(make_image(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4)),
              AllOf(HasSubstr(kFile), HasSubstr("tensor 'w' has no 'dtype'")));
  EXPECT_THAT(corrupt(make_image(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4)),
              HasSubstr("tensor 'w' has no 'shape'"));
  EXPECT_THAT(corrupt(make_image(R"({"w":{"dtype":"F32","shape":[1]}})", 4)),
              HasSubstr("tensor 'w' has no 'data_offsets'"));
}

TEST(SafetensorsReader, RejectsUnknownField) {
  EXPECT_THAT(corrupt(make_image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"stride":[1]}})", 4)),
              HasSubstr("tensor 'w' has the unknown field 'stride'"));
}

TEST(SafetensorsReader, RejectsUnknownDtype) {
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F12", "[1]", 0, 4) + "}", 4)),
              AllOf(HasSubstr("tensor 'w' has unknown dtype 'F12'"), HasSubstr("known: F32, F16, BF16")));
  // Our own short names are not safetensors names.
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "f32", "[1]", 0, 4) + "}", 4)), HasSubstr("unknown dtype 'f32'"));
  EXPECT_THAT(corrupt(make_image(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4)),
              HasSubstr("tensor 'w' has dtype 4, a JSON number rather than a string"));
}

TEST(SafetensorsReader, RejectsNegativeAndFloatShapeEntries) {
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F32", "[2,-1]", 0, 4) + "}", 4)),
              HasSubstr("tensor 'w' has shape entry 1 = -1 (number); it must be a non-negative integer"));
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F32", "[2.0]", 0, 8) + "}", 8)),
              HasSubstr("tensor 'w' has shape entry 0 = 2.0 (number)"));
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F32", "[1e1]", 0, 40) + "}", 40)), HasSubstr("shape entry 0"));
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F32", "[\"2\"]", 0, 8) + "}", 8)),
              HasSubstr("shape entry 0 = \"2\" (string)"));
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F32", "4", 0, 16) + "}", 16)),
              HasSubstr("tensor 'w' has shape 4, a JSON number rather than an array"));
  // 2^64 does not fit any integer type: the JSON library reads it as a float.
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F32", "[18446744073709551616]", 0, 4) + "}", 4)),
              HasSubstr("shape entry 0"));
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "U8", "[9223372036854775808]", 0, 4) + "}", 4)),
              HasSubstr("shape entry 0 = 9223372036854775808, above 2^63 - 1"));
}

TEST(SafetensorsReader, RejectsBadDataOffsets) {
  EXPECT_THAT(corrupt(make_image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4)),
              HasSubstr("tensor 'w' has data_offsets [0]; expected an array [begin, end]"));
  EXPECT_THAT(corrupt(make_image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 4)),
              HasSubstr("data_offsets [0,4,8]"));
  EXPECT_THAT(corrupt(make_image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 4)),
              HasSubstr("tensor 'w' has data_offsets entry 0 = -4"));
  EXPECT_THAT(corrupt(make_image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})", 4)),
              HasSubstr("data_offsets entry 1 = 4.0"));
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F32", "[0]", 8, 4) + "}", 8)),
              HasSubstr("tensor 'w' has data_offsets [8, 4]: begin is after end"));
}

TEST(SafetensorsReader, RejectsEmptyTensorName) {
  EXPECT_THAT(corrupt(make_image("{" + entry("", "F32", "[1]", 0, 4) + "}", 4)),
              AllOf(HasSubstr(kFile), HasSubstr("tensor with an empty name")));
}

TEST(SafetensorsReader, RankAboveFourIsUnsupportedOnlyInOtherwiseValidFiles) {
  const std::string rank5 = entry("w", "F32", "[1,1,1,1,2]", 0, 8);
  const std::string message = error_message(ErrorCode::Unsupported, [&] { parse(make_image("{" + rank5 + "}", 8)); });
  EXPECT_THAT(message, AllOf(HasSubstr("tensor 'w' has rank 5 (shape [1, 1, 1, 1, 2])"), HasSubstr("at most 4")));
  // The same entry in a file that is also corrupt (a trailing byte): Corrupt wins.
  EXPECT_THAT(corrupt(make_image("{" + rank5 + "}", 9)), HasSubstr("1 trailing bytes"));
  // And its byte count is checked all the same.
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F32", "[1,1,1,1,2]", 0, 4) + "}", 4)),
              HasSubstr("declares [1, 1, 1, 1, 2] F32 = 8 bytes but its offsets span 4 bytes"));
}

// ---- rule 4: sizes -----------------------------------------------------------------------------------------

TEST(SafetensorsReader, RejectsByteCountMismatch) {
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F32", "[2,3]", 0, 20) + "}", 20)),
              HasSubstr("safetensors: 'bad.safetensors': tensor 'w' declares [2, 3] F32 = 24 bytes but its offsets "
                        "span 20 bytes ([0, 20])"));
  EXPECT_THAT(corrupt(make_image("{" + entry("s", "BF16", "[]", 0, 4) + "}", 4)),
              HasSubstr("tensor 's' declares [] BF16 = 2 bytes but its offsets span 4 bytes"));
}

TEST(SafetensorsReader, RejectsShapeProduct2To63) {
  // 2^31 * 2^32 = 2^63: one past int64; it must not wrap into a small or negative count.
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "U8", "[2147483648,4294967296]", 0, 0) + "}")),
              HasSubstr("tensor 'w' has shape [2147483648, 4294967296] whose element count overflows int64"));
  // 2^32 * 2^32 wraps uint64 to exactly 0, which a careless product would accept for offsets [0, 0].
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "U8", "[4294967296,4294967296]", 0, 0) + "}")),
              HasSubstr("overflows int64"));
  // A zero does not excuse it: Shape::numel() may multiply in any order.
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "U8", "[4294967296,4294967296,0]", 0, 0) + "}")),
              HasSubstr("overflows int64"));
}

TEST(SafetensorsReader, RejectsByteCountOverflow) {
  // 2^62 F32 elements: a valid element count whose byte count, 2^64, wraps to 0.
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "F32", "[4611686018427387904]", 0, 0) + "}")),
              HasSubstr("tensor 'w' declares [4611686018427387904] F32 = 4611686018427387904 elements of 4 bytes, "
                        "which overflows 64 bits"));
}

TEST(SafetensorsReader, RejectsHugeOffsetsWithoutWrapping) {
  const std::uint64_t max = ~std::uint64_t{0};
  EXPECT_THAT(corrupt(make_image("{" + entry("w", "U8", "[1]", max - 1, max) + "}", 1)),
              HasSubstr("bytes [0, 18446744073709551614) of the data section belong to no tensor"));
  EXPECT_THAT(
      corrupt(make_image("{" + entry("w", "U8", "[1]", 0, 1) + "," + entry("v", "U8", "[0]", max, max) + "}", 1)),
      HasSubstr("gap before tensor 'v'"));
}

// ---- rule 5: layout ----------------------------------------------------------------------------------------

TEST(SafetensorsReader, RejectsOverlappingTensors) {
  EXPECT_THAT(
      corrupt(make_image("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}", 12)),
      HasSubstr("tensor 'b' at data_offsets [4, 12] overlaps tensor 'a' at [0, 8]"));
  // Two tensors sharing one range.
  EXPECT_THAT(corrupt(make_image("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 0, 4) + "}", 4)),
              HasSubstr("overlaps tensor"));
  // A zero-size tensor inside another.
  EXPECT_THAT(corrupt(make_image("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("e", "F32", "[0]", 4, 4) + "}", 8)),
              HasSubstr("tensor 'e' at data_offsets [4, 4] overlaps tensor 'a' at [0, 8]"));
}

TEST(SafetensorsReader, RejectsGapBetweenTensors) {
  EXPECT_THAT(
      corrupt(make_image("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 6, 10) + "}", 10)),
      HasSubstr("bytes [4, 6) of the data section belong to no tensor (a gap before tensor 'b')"));
}

TEST(SafetensorsReader, RejectsFirstTensorNotAtZero) {
  EXPECT_THAT(corrupt(make_image("{" + entry("a", "F32", "[1]", 4, 8) + "}", 8)),
              HasSubstr("bytes [0, 4) of the data section belong to no tensor (a gap before tensor 'a')"));
}

TEST(SafetensorsReader, RejectsTrailingBytes) {
  EXPECT_THAT(corrupt(make_image("{" + entry("a", "F32", "[1]", 0, 4) + "}", 7)),
              AllOf(HasSubstr(kFile), HasSubstr("3 trailing bytes after the last tensor ('a' ends at byte 4 of a "
                                                "7-byte data section)")));
  EXPECT_THAT(corrupt(make_image("{}", 5)), HasSubstr("header lists no tensors but 5 bytes of data follow it"));
}

TEST(SafetensorsReader, RejectsTensorPastEndOfFile) {
  EXPECT_THAT(corrupt(make_image("{" + entry("a", "F32", "[4]", 0, 16) + "}", 10)),
              HasSubstr("tensor 'a' ends at byte 16 but the data section holds only 10 bytes"));
}

// ---- rule 6: metadata --------------------------------------------------------------------------------------

TEST(SafetensorsReader, RejectsNonStringMetadata) {
  EXPECT_THAT(corrupt(make_image(R"({"__metadata__":{"format":"pt","step":100}})")),
              HasSubstr("'__metadata__' maps 'step' to a JSON number (100); metadata values must be strings"));
  EXPECT_THAT(corrupt(make_image(R"({"__metadata__":{"k":null}})")), HasSubstr("maps 'k' to a JSON null"));
  EXPECT_THAT(corrupt(make_image(R"({"__metadata__":{"k":{"a":"b"}}})")), HasSubstr("maps 'k' to a JSON object"));
  EXPECT_THAT(corrupt(make_image(R"({"__metadata__":{"k":["a"]}})")), HasSubstr("maps 'k' to a JSON array"));
}

TEST(SafetensorsReader, RejectsMetadataNotAnObject) {
  EXPECT_THAT(corrupt(make_image(R"({"__metadata__":"pt"})")),
              HasSubstr("'__metadata__' is a JSON string (\"pt\"), not an object of strings"));
  EXPECT_THAT(corrupt(make_image(R"({"__metadata__":[]})")), HasSubstr("'__metadata__' is a JSON array"));
}

TEST(SafetensorsReader, ShortensLongValuesInMessages) {
  const std::string long_value = "\"" + std::string(200, 'x') + "\"";
  const std::string message = corrupt(make_image("{\"w\":" + long_value + "}"));
  EXPECT_THAT(message, HasSubstr("..."));
  EXPECT_LT(message.size(), 200u);
}

}  // namespace
}  // namespace lowbit::io::test
