// lowbit's own quantized layout and the checkpoint writer: round trips, sharding, atomic replacement.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "io/io_test_util.hpp"
#include "lowbit/io/formats.hpp"
#include "lowbit/io/quantized.hpp"

namespace lowbit::io {
namespace {

using ::testing::HasSubstr;

Tensor random_tensor(const Shape& shape, DType dtype, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<std::uint8_t*>(t.raw_data());
  for (std::size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<std::uint8_t>(byte(rng));
  return t;
}

quant::QuantizedTensor sample_quantized(std::uint32_t seed) {
  quant::QuantizedTensor q;
  q.method = "affine";
  q.shape = Shape{17, 96};
  q.dtype = DType::BF16;
  q.params.bits = 4;
  q.params.group_size = 32;
  q.params.symmetric = true;
  q.params.variant = "test";
  q.components["codes"] = random_tensor({17, 48}, DType::U8, seed);
  q.components["scales"] = random_tensor({17, 3}, DType::F16, seed + 1);
  q.components["zeros"] = random_tensor({17, 3}, DType::U8, seed + 2);
  return q;
}

using test::same_bytes;

TEST(LowbitLayout, QuantizedTensorReadsBackBitIdentical) {
  test::TempDir dir;
  const auto q = sample_quantized(5);
  {
    CheckpointWriter out(dir / "ckpt");
    const auto& writer = find_format_writer("lowbit", q.method);
    writer.add(out, "layer.weight", q);
    out.add("dense.weight", random_tensor({3, 4}, DType::F32, 9));
    writer.finish(out, {});
    out.finish();
  }
  const Checkpoint ckpt = Checkpoint::open(dir / "ckpt");
  const QuantizedCheckpoint qc = open_quantized(ckpt);
  EXPECT_EQ(qc.format, "lowbit");
  ASSERT_EQ(qc.weights, std::vector<std::string>{"layer.weight"});
  EXPECT_EQ(qc.parts.count("layer.weight.codes"), 1u);
  EXPECT_EQ(qc.parts.count("dense.weight"), 0u);
  const quant::QuantizedTensor back = qc.load("layer.weight");
  EXPECT_EQ(back.method, q.method);
  EXPECT_EQ(back.shape, q.shape);
  EXPECT_EQ(back.dtype, q.dtype);
  EXPECT_EQ(back.params, q.params);
  ASSERT_EQ(back.components.size(), q.components.size());
  for (const auto& [name, t] : q.components) EXPECT_TRUE(same_bytes(t, back.component(name))) << name;
  EXPECT_EQ(ckpt.files().front().metadata().at("format"), "lowbit");
}

TEST(LowbitLayout, MissingComponentIsCorrupt) {
  test::TempDir dir;
  auto q = sample_quantized(7);
  const auto [key, value] = quantized_metadata("w", q);
  // The metadata promises "codes", "scales" and "zeros"; the file holds only two of them.
  save_safetensors(dir / "bad.safetensors", {{"w.codes", q.components["codes"]}, {"w.scales", q.components["scales"]}},
                   {{key, value}});
  const Checkpoint ckpt = Checkpoint::open(dir / "bad.safetensors");
  try {
    (void)load_quantized(ckpt, "w");
    FAIL() << "expected Corrupt";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Corrupt);
    EXPECT_THAT(e.what(), HasSubstr("w.zeros"));
  }
}

TEST(LowbitLayout, MalformedRecordIsCorrupt) {
  test::TempDir dir;
  save_safetensors(dir / "bad.safetensors", {{"w.codes", random_tensor({2}, DType::U8, 1)}},
                   {{"lowbit.quant.w", R"({"method": "affine", "shape": [2, -1]})"}});
  const Checkpoint ckpt = Checkpoint::open(dir / "bad.safetensors");
  try {
    (void)load_quantized(ckpt, "w");
    FAIL() << "expected Corrupt";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Corrupt);
  }
  EXPECT_THROW((void)quant::params_from_json(R"({"bits": 4, "colour": 1})", "test"), Error);
}

TEST(CheckpointWriter, ShardsAndIndexWhenTensorsExceedTheShardSize) {
  test::TempDir dir;
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (int i = 0; i < 7; ++i) tensors.emplace_back(fmt::format("t{}", i), random_tensor({100, 10}, DType::F32, 10u + i));
  {
    CheckpointWriter out(dir / "sharded", /*max_shard_bytes=*/9000);  // 4000 bytes a tensor: 2 per shard
    for (const auto& [n, t] : tensors) out.add(n, t);
    out.add_text_file("config.json", "{}\n");
    out.finish();
  }
  EXPECT_TRUE(std::filesystem::exists(dir / "sharded" / "model.safetensors.index.json"));
  EXPECT_TRUE(std::filesystem::exists(dir / "sharded" / "model-00004-of-00004.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir / "sharded" / "config.json"));
  const Checkpoint ckpt = Checkpoint::open(dir / "sharded");
  EXPECT_EQ(ckpt.files().size(), 4u);
  for (const auto& [n, t] : tensors) EXPECT_TRUE(same_bytes(t, ckpt.tensor(n))) << n;
}

TEST(CheckpointWriter, FailureLeavesThePreviousFolderIntact) {
  test::TempDir dir;
  {
    CheckpointWriter out(dir / "model");
    out.add("old", random_tensor({4}, DType::F32, 1));
    out.finish();
  }
  const auto before = Checkpoint::open(dir / "model").names();
  try {
    CheckpointWriter out(dir / "model");
    out.add("new", random_tensor({4096}, DType::F32, 2));
    test::FailWritesGuard fail(100);  // the disk fills up while the shard is written
    out.finish();
    FAIL() << "expected an IO error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::IO);
  }
  EXPECT_EQ(Checkpoint::open(dir / "model").names(), before);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"model"});  // no temporary folder left behind
}

TEST(CheckpointWriter, ReplacesAnExistingFolderWhole) {
  test::TempDir dir;
  for (const char* name : {"first", "second"}) {
    CheckpointWriter out(dir / "model");
    out.add(name, random_tensor({4}, DType::F32, 3));
    out.finish();
  }
  EXPECT_EQ(Checkpoint::open(dir / "model").names(), std::vector<std::string>{"second"});
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"model"});
}

TEST(FormatWriters, UnknownFormatNamesTheAvailableOnes) {
  try {
    (void)find_format_writer("gguf-ish", "affine");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_THAT(e.what(), HasSubstr("lowbit"));
  }
}

}  // namespace
}  // namespace lowbit::io
