// Files written by the Python safetensors package (tests/data/make_safetensors_golden.py) read back exactly
// as its sidecar golden.json says, and our writer reproduces them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "io/io_test_util.hpp"
#include "lowbit/io/safetensors.hpp"

namespace lowbit::io::test {
namespace {

const std::filesystem::path kGoldenDir = std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "safetensors";

nlohmann::json load_sidecar() {
  const std::vector<std::byte> bytes = read_bytes(kGoldenDir / "golden.json");
  return nlohmann::json::parse(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::string hex(std::span<const std::byte> bytes) {
  std::string out;
  for (const std::byte b : bytes) out += fmt::format("{:02x}", static_cast<unsigned>(b));
  return out;
}

std::map<std::string, std::string> metadata_of(const nlohmann::json& file) {
  return file.at("metadata").get<std::map<std::string, std::string>>();
}

TEST(SafetensorsGolden, SidecarListsEveryGoldenFile) {
  const nlohmann::json sidecar = load_sidecar();
  std::size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kGoldenDir)) {
    if (entry.path().extension() == ".safetensors") ++files;
  }
  EXPECT_EQ(sidecar.at("files").size(), files);
  EXPECT_GE(files, 4u);
}

TEST(SafetensorsGolden, PythonWrittenFilesReadExactly) {
  const nlohmann::json sidecar = load_sidecar();
  for (const nlohmann::json& golden : sidecar.at("files")) {
    const std::string name = golden.at("file");
    SCOPED_TRACE(name);
    const SafetensorsFile file = SafetensorsFile::open(kGoldenDir / name);
    EXPECT_EQ(std::filesystem::file_size(kGoldenDir / name), golden.at("bytes").get<std::uint64_t>());
    EXPECT_EQ(file.metadata(), metadata_of(golden));
    ASSERT_EQ(file.tensors().size(), golden.at("tensors").size());
    for (const nlohmann::json& want : golden.at("tensors")) {
      const std::string tensor = want.at("name");
      SCOPED_TRACE(tensor);
      ASSERT_TRUE(file.contains(tensor));
      const TensorInfo& info = file.info(tensor);
      EXPECT_EQ(safetensors_dtype_name(info.dtype), want.at("dtype").get<std::string>());
      EXPECT_EQ(std::vector<std::int64_t>(info.shape.begin(), info.shape.end()),
                want.at("shape").get<std::vector<std::int64_t>>());
      EXPECT_EQ(info.begin, want.at("data_offsets")[0].get<std::uint64_t>());
      EXPECT_EQ(info.end, want.at("data_offsets")[1].get<std::uint64_t>());
      EXPECT_EQ(hex(file.bytes(tensor)), want.at("hex").get<std::string>());
      const Tensor t = file.tensor(tensor);
      EXPECT_EQ(hex({static_cast<const std::byte*>(t.raw_data()), t.nbytes()}), want.at("hex").get<std::string>());
    }
  }
}

TEST(SafetensorsGolden, KnownValuesDecode) {
  const SafetensorsFile f16 = SafetensorsFile::open(kGoldenDir / "golden_f16_metadata.safetensors");
  const Tensor norm = f16.tensor("model.norm.weight");
  EXPECT_EQ(norm.get({0}), 1.0);
  EXPECT_EQ(norm.get({1}), -0.5);
  EXPECT_EQ(norm.get({2}), 65504.0);
  const SafetensorsFile bf16 = SafetensorsFile::open(kGoldenDir / "golden_bf16.safetensors");
  const Tensor special = bf16.tensor("special");
  EXPECT_EQ(special.get({0}), std::numeric_limits<double>::infinity());
  EXPECT_EQ(special.get({1}), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(special.get({2}), 0.0);
  const SafetensorsFile all = SafetensorsFile::open(kGoldenDir / "golden_all_dtypes.safetensors");
  EXPECT_EQ(all.tensor("f32.scalar").get({}), 3.25);
  EXPECT_EQ(all.info("f32.scalar").shape.rank(), 0);
}

TEST(SafetensorsGolden, OurWriterReproducesThePackagesBytes) {
  // The package writes metadata in hash-map order, so files with several metadata keys can only be compared
  // as parsed headers; the rest must match byte for byte.
  const nlohmann::json sidecar = load_sidecar();
  TempDir dir;
  for (const nlohmann::json& golden : sidecar.at("files")) {
    const std::string name = golden.at("file");
    SCOPED_TRACE(name);
    const SafetensorsFile original = SafetensorsFile::open(kGoldenDir / name);
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& tensor : original.names()) tensors.emplace_back(tensor, original.tensor(tensor));
    save_safetensors(dir / name, tensors, original.metadata());

    const std::vector<std::byte> theirs = read_bytes(kGoldenDir / name);
    const std::vector<std::byte> ours = read_bytes(dir / name);
    if (original.metadata().size() <= 1) {
      EXPECT_TRUE(theirs == ours) << "our file differs from the package's";
      continue;
    }
    const SafetensorsFile rewritten = SafetensorsFile::open(dir / name);
    ASSERT_EQ(rewritten.header().header_bytes, original.header().header_bytes);
    const auto header_json = [](const std::vector<std::byte>& image, std::uint64_t n) {
      return nlohmann::json::parse(std::string(reinterpret_cast<const char*>(image.data()) + 8, n));
    };
    EXPECT_EQ(header_json(ours, original.header().header_bytes), header_json(theirs, original.header().header_bytes));
    const auto data_offset = static_cast<std::ptrdiff_t>(original.header().data_offset);
    EXPECT_TRUE(std::equal(ours.begin() + data_offset, ours.end(), theirs.begin() + data_offset, theirs.end()));
  }
}

TEST(SafetensorsRealModel, Stories15MOpensAsZeroCopyViews) {
  const std::filesystem::path path = std::filesystem::path(LOWBIT_SHARED_DATA_DIR) / "stories15M" / "model.safetensors";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent (see ../shared/data/README.md)";
  const SafetensorsFile file = SafetensorsFile::open(path);
  ASSERT_EQ(file.tensors().size(), 56u);
  std::int64_t parameters = 0;
  for (const TensorInfo& info : file.tensors()) {
    SCOPED_TRACE(info.name);
    EXPECT_EQ(info.dtype, DType::F32);
    const Tensor t = file.tensor(info.name);
    EXPECT_EQ(t.raw_data(), static_cast<const void*>(file.bytes(info.name).data()));
    parameters += t.numel();
  }
  EXPECT_EQ(parameters, 15'191'712);  // README.md of ../shared/data
  EXPECT_EQ(file.info("model.embed_tokens.weight").shape, Shape({32000, 288}));
}

}  // namespace
}  // namespace lowbit::io::test
