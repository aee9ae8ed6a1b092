// Checkpoint::open on the three layouts, and every way a sharded folder can contradict its index.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "io/io_test_util.hpp"
#include "lowbit/io/checkpoint.hpp"

namespace lowbit::io::test {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr const char* kIndex = "model.safetensors.index.json";

Tensor filled(const Shape& shape, float value) {
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = value + static_cast<float>(i);
  return t;
}

// Two shards and an index, as Hugging Face writes them.
void write_sharded(const TempDir& dir) {
  save_safetensors(dir / "model-00001-of-00002.safetensors",
                   {{"embed.weight", filled({4, 2}, 1.0f)}, {"layers.0.weight", filled({2, 2}, 10.0f)}});
  save_safetensors(dir / "model-00002-of-00002.safetensors",
                   {{"layers.1.weight", filled({2, 2}, 20.0f)}, {"norm.weight", filled({2}, 30.0f)}});
  write_text(dir / kIndex, R"({
  "metadata": {"total_size": 72},
  "weight_map": {
    "embed.weight": "model-00001-of-00002.safetensors",
    "layers.0.weight": "model-00001-of-00002.safetensors",
    "layers.1.weight": "model-00002-of-00002.safetensors",
    "norm.weight": "model-00002-of-00002.safetensors"
  }
})");
}

std::string corrupt_open(const std::filesystem::path& path) {
  return error_message(ErrorCode::Corrupt, [&] { Checkpoint::open(path); });
}

TEST(Checkpoint, OpensSingleFile) {
  TempDir dir;
  save_safetensors(dir / "model.safetensors", {{"b", filled({3}, 0.0f)}, {"a", filled({1}, 5.0f)}});
  const Checkpoint ckpt = Checkpoint::open(dir / "model.safetensors");
  EXPECT_THAT(ckpt.names(), ElementsAre("a", "b"));
  EXPECT_EQ(ckpt.files().size(), 1u);
  EXPECT_EQ(ckpt.tensor("a").get({0}), 5.0);
  EXPECT_EQ(ckpt.info("b").shape, Shape({3}));
}

TEST(Checkpoint, OpensShardedFolderWithIndex) {
  TempDir dir;
  write_sharded(dir);
  save_safetensors(dir / "unrelated.safetensors", {{"other", filled({1}, 0.0f)}});  // not in the index: ignored
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  EXPECT_THAT(ckpt.names(), ElementsAre("embed.weight", "layers.0.weight", "layers.1.weight", "norm.weight"));
  EXPECT_EQ(ckpt.files().size(), 2u);
  EXPECT_EQ(ckpt.file_of("norm.weight").path().filename(), "model-00002-of-00002.safetensors");
  EXPECT_EQ(ckpt.tensor("layers.1.weight").get({1, 1}), 23.0);
  EXPECT_FALSE(ckpt.contains("other"));
  EXPECT_THAT(error_message(ErrorCode::InvalidArgument, [&] { ckpt.tensor("other"); }),
              AllOf(HasSubstr(dir.path().string()), HasSubstr("no tensor named 'other'")));
}

TEST(Checkpoint, OpensFolderWithoutIndex) {
  TempDir dir;
  save_safetensors(dir / "b.safetensors", {{"y", filled({1}, 2.0f)}});
  save_safetensors(dir / "a.safetensors", {{"x", filled({1}, 1.0f)}});
  write_text(dir / "config.json", "{}");
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  ASSERT_EQ(ckpt.files().size(), 2u);
  EXPECT_EQ(ckpt.files()[0].path().filename(), "a.safetensors");  // sorted
  EXPECT_THAT(ckpt.names(), ElementsAre("x", "y"));
  EXPECT_EQ(ckpt.tensor("y").get({0}), 2.0);
}

TEST(Checkpoint, RejectsMissingShard) {
  TempDir dir;
  write_sharded(dir);
  std::filesystem::remove(dir / "model-00002-of-00002.safetensors");
  EXPECT_THAT(
      corrupt_open(dir.path()),
      AllOf(HasSubstr(kIndex), HasSubstr("lists shard 'model-00002-of-00002.safetensors', which is not a file")));
}

TEST(Checkpoint, RejectsTensorMissingFromItsShard) {
  TempDir dir;
  write_sharded(dir);
  save_safetensors(dir / "model-00002-of-00002.safetensors", {{"norm.weight", filled({2}, 30.0f)}});
  EXPECT_THAT(corrupt_open(dir.path()),
              HasSubstr("maps tensor 'layers.1.weight' to shard 'model-00002-of-00002.safetensors', which does not "
                        "hold it"));
}

TEST(Checkpoint, RejectsShardHoldingUnlistedTensor) {
  TempDir dir;
  write_sharded(dir);
  save_safetensors(
      dir / "model-00002-of-00002.safetensors",
      {{"layers.1.weight", filled({2, 2}, 20.0f)}, {"norm.weight", filled({2}, 30.0f)}, {"extra", filled({1}, 0.0f)}});
  EXPECT_THAT(corrupt_open(dir.path()),
              HasSubstr("shard 'model-00002-of-00002.safetensors' holds tensor 'extra', which the index"));
}

TEST(Checkpoint, RejectsTensorInTheWrongShard) {
  TempDir dir;
  write_sharded(dir);
  save_safetensors(dir / "model-00001-of-00002.safetensors", {{"embed.weight", filled({4, 2}, 1.0f)},
                                                              {"layers.0.weight", filled({2, 2}, 10.0f)},
                                                              {"norm.weight", filled({2}, 30.0f)}});
  EXPECT_THAT(corrupt_open(dir.path()), HasSubstr("holds tensor 'norm.weight', which the index"));
}

TEST(Checkpoint, RejectsPathTraversalInShardName) {
  for (const std::string shard : {"../model.safetensors", "/etc/passwd", "..", "sub/model.safetensors", ""}) {
    SCOPED_TRACE(shard);
    TempDir dir;
    write_text(dir / kIndex, fmt::format(R"({{"weight_map": {{"w": "{}"}}}})", shard));
    EXPECT_THAT(corrupt_open(dir.path()),
                AllOf(HasSubstr(kIndex),
                      HasSubstr(fmt::format("puts tensor 'w' in '{}', which is not a plain file name", shard))));
  }
}

TEST(Checkpoint, RejectsBadIndex) {
  TempDir dir;
  write_text(dir / kIndex, "{\"weight_map\": ");
  EXPECT_THAT(corrupt_open(dir.path()), AllOf(HasSubstr(kIndex), HasSubstr("is not valid JSON")));
  write_text(dir / kIndex, R"({"metadata": {}})");
  EXPECT_THAT(corrupt_open(dir.path()), HasSubstr("has no \"weight_map\" object"));
  write_text(dir / kIndex, R"({"weight_map": {"w": 3}})");
  EXPECT_THAT(corrupt_open(dir.path()), HasSubstr("weight_map gives tensor 'w' a JSON number"));
  write_text(dir / kIndex, R"({"weight_map": {}})");
  EXPECT_THAT(corrupt_open(dir.path()), HasSubstr("weight_map lists no tensors"));
  write_text(dir / kIndex, R"({"weight_map": {"w": "a.safetensors", "w": "b.safetensors"}})");
  EXPECT_THAT(corrupt_open(dir.path()), HasSubstr("the key 'w' appears twice"));
  write_text(dir / kIndex, "[]");
  EXPECT_THAT(corrupt_open(dir.path()), HasSubstr("is a JSON array, not an object"));
}

TEST(Checkpoint, RejectsCorruptShard) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / "model-00001-of-00002.safetensors", make_image("{}", 0, 1000));
  EXPECT_THAT(corrupt_open(dir.path()),
              AllOf(HasSubstr("model-00001-of-00002.safetensors"), HasSubstr("header longer than the file")));
}

TEST(Checkpoint, RejectsDuplicateNamesWithoutIndex) {
  TempDir dir;
  save_safetensors(dir / "a.safetensors", {{"w", filled({1}, 1.0f)}});
  save_safetensors(dir / "b.safetensors", {{"w", filled({1}, 2.0f)}});
  EXPECT_THAT(corrupt_open(dir.path()), HasSubstr("tensor 'w' is in both 'a.safetensors' and 'b.safetensors'"));
}

TEST(Checkpoint, FolderWithoutSafetensorsIsInvalidArgument) {
  TempDir dir;
  write_text(dir / "config.json", "{}");
  EXPECT_THAT(error_message(ErrorCode::InvalidArgument, [&] { Checkpoint::open(dir.path()); }),
              AllOf(HasSubstr(dir.path().string()), HasSubstr("no .safetensors files")));
}

TEST(Checkpoint, MissingPathIsIOError) {
  TempDir dir;
  EXPECT_THAT(error_message(ErrorCode::IO, [&] { Checkpoint::open(dir / "nothing"); }),
              HasSubstr("'" + (dir / "nothing").string() + "' does not exist"));
}

}  // namespace
}  // namespace lowbit::io::test
