// SafetensorsWriter and SafetensorsFile together: bit-identical round trips of every dtype, the layout the
// writer promises, zero-copy views, atomic failure, and (where Python's safetensors is installed) that the
// reference package loads what we write.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "io/io_test_util.hpp"
#include "lowbit/io/safetensors.hpp"

namespace lowbit::io::test {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Every dtype with a safetensors name.
std::vector<DType> safetensors_dtypes() {
  std::vector<DType> out;
  for (const DType t : kAllDTypes) {
    if (!safetensors_dtype_name(t).empty()) out.push_back(t);
  }
  return out;
}

// Random bytes (0/1 for Bool), fixed by `seed`.
Tensor random_tensor(const Shape& shape, DType dtype, std::uint64_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937_64 rng(seed);
  auto* p = static_cast<unsigned char*>(t.raw_data());
  for (std::size_t i = 0; i < t.nbytes(); ++i) {
    p[i] = static_cast<unsigned char>(dtype == DType::Bool ? rng() & 1u : rng() & 0xffu);
  }
  return t;
}

std::span<const std::byte> bytes_of(const Tensor& t) {
  return {static_cast<const std::byte*>(t.raw_data()), t.nbytes()};
}

bool same_bytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

TEST(SafetensorsRoundTrip, EveryDtypeAndOddShapeReadsBackBitIdentical) {
  TempDir dir;
  const Shape shapes[] = {{3, 5, 7}, {1}, {}, {2, 1, 3, 1}, {17}, {0, 4}};
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::uint64_t seed = 1;
  for (const DType dtype : safetensors_dtypes()) {
    for (const Shape& shape : shapes) {
      tensors.emplace_back(fmt::format("{}.{}", dtype_name(dtype), shape.to_string()),
                           random_tensor(shape, dtype, seed++));
    }
  }
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"empty", ""}, {"unicode", "gr\xc3\xbc\xc3\x9f \xe2\x9c\x93"}, {"quote", "a\"b\\c\n"}};
  save_safetensors(dir / "all.safetensors", tensors, metadata);

  const SafetensorsFile file = SafetensorsFile::open(dir / "all.safetensors");
  EXPECT_EQ(file.metadata(), metadata);
  ASSERT_EQ(file.tensors().size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(file.contains(name));
    const TensorInfo& info = file.info(name);
    EXPECT_EQ(info.dtype, expected.dtype());
    EXPECT_EQ(info.shape, expected.shape());
    EXPECT_TRUE(same_bytes(file.bytes(name), bytes_of(expected)));
    const Tensor back = file.tensor(name);
    EXPECT_EQ(back.dtype(), expected.dtype());
    EXPECT_EQ(back.shape(), expected.shape());
    EXPECT_TRUE(same_bytes(bytes_of(back), bytes_of(expected)));
  }
}

TEST(SafetensorsRoundTrip, ZeroSizeTensorsAndEmptyFile) {
  TempDir dir;
  save_safetensors(dir / "zero.safetensors", {{"empty", Tensor::empty({0, 3}, DType::F32)},
                                              {"also_empty", Tensor::empty({4, 0}, DType::U8)},
                                              {"one", Tensor::from_values<float>({1.5f}, {1})}});
  const SafetensorsFile file = SafetensorsFile::open(dir / "zero.safetensors");
  EXPECT_THAT(file.names(), ElementsAre("also_empty", "empty", "one"));
  EXPECT_EQ(file.tensor("empty").numel(), 0);
  EXPECT_EQ(file.tensor("empty").shape(), Shape({0, 3}));
  EXPECT_EQ(file.bytes("also_empty").size(), 0u);
  EXPECT_EQ(file.tensor("one").get({0}), 1.5);

  save_safetensors(dir / "none.safetensors", {});
  const SafetensorsFile none = SafetensorsFile::open(dir / "none.safetensors");
  EXPECT_TRUE(none.tensors().empty());
  EXPECT_TRUE(none.metadata().empty());
  EXPECT_EQ(std::filesystem::file_size(dir / "none.safetensors"), 16u);  // length + "{}" padded to 8
}

TEST(SafetensorsRoundTrip, NonContiguousTensorIsWrittenContiguously) {
  TempDir dir;
  const Tensor base = random_tensor({3, 4}, DType::F32, 7);
  const Tensor transposed = base.transpose(0, 1);  // [4, 3], strides [1, 4]
  ASSERT_FALSE(transposed.is_contiguous());
  const Tensor column = base.slice(1, 1, 3);  // [3, 2] of a [3, 4]
  save_safetensors(dir / "t.safetensors", {{"t", transposed}, {"c", column}});
  const SafetensorsFile file = SafetensorsFile::open(dir / "t.safetensors");
  EXPECT_EQ(file.info("t").shape, Shape({4, 3}));
  EXPECT_TRUE(same_bytes(file.bytes("t"), bytes_of(transposed.contiguous())));
  EXPECT_TRUE(same_bytes(file.bytes("c"), bytes_of(column.contiguous())));
}

TEST(SafetensorsWriter, LaysOutLargestElementsFirstThenByNameAligned) {
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::uint64_t seed = 100;
  // Odd element counts so that a wrong order would misalign the tensors after them.
  for (const DType dtype : safetensors_dtypes()) {
    tensors.emplace_back(fmt::format("b.{}", dtype_name(dtype)), random_tensor({3}, dtype, seed++));
    tensors.emplace_back(fmt::format("a.{}", dtype_name(dtype)), random_tensor({1}, dtype, seed++));
  }
  save_safetensors(dir / "l.safetensors", tensors, {{"k", "v"}});
  const SafetensorsFile file = SafetensorsFile::open(dir / "l.safetensors");
  EXPECT_EQ(file.header().data_offset % 8, 0u);
  const std::vector<TensorInfo>& infos = file.tensors();
  for (std::size_t i = 0; i < infos.size(); ++i) {
    SCOPED_TRACE(infos[i].name);
    EXPECT_EQ(infos[i].begin % dtype_size(infos[i].dtype), 0u);
    if (i > 0) {
      const TensorInfo& prev = infos[i - 1];
      EXPECT_GE(dtype_size(prev.dtype), dtype_size(infos[i].dtype));
      if (prev.dtype == infos[i].dtype) EXPECT_LT(prev.name, infos[i].name);
    }
    // Zero-copy: the view's memory is the file's.
    const Tensor view = file.tensor(infos[i].name);
    EXPECT_EQ(view.raw_data(), static_cast<const void*>(file.bytes(infos[i].name).data()));
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(view.raw_data()) % dtype_size(view.dtype()), 0u);
  }
  // The header is compact JSON with the metadata first, padded with spaces.
  const std::vector<std::byte> raw = read_bytes(dir / "l.safetensors");
  const std::string header(reinterpret_cast<const char*>(raw.data()) + 8, file.header().header_bytes);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"k\":\"v\"},", 0), 0u) << header;
  EXPECT_LT(header.size() - (header.find_last_not_of(' ') + 1), 8u);
}

TEST(SafetensorsWriter, OmitsEmptyMetadata) {
  TempDir dir;
  save_safetensors(dir / "m.safetensors", {{"x", Tensor::zeros({2}, DType::U8)}});
  const std::vector<std::byte> raw = read_bytes(dir / "m.safetensors");
  const std::string text(reinterpret_cast<const char*>(raw.data()), raw.size());
  EXPECT_EQ(text.find("__metadata__"), std::string::npos);
}

TEST(SafetensorsWriter, LazyProducerGetsExactSpanOnce) {
  TempDir dir;
  SafetensorsWriter writer(dir / "lazy.safetensors");
  int calls = 0;
  std::size_t seen = 0;
  writer.add_lazy("w", DType::BF16, {3, 5}, [&](std::span<std::byte> out) {
    ++calls;
    seen = out.size();
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::byte>(i);
  });
  // A producer that writes nothing leaves zeros, never stale memory.
  writer.add_lazy("lazy_idle", DType::I32, {4}, [](std::span<std::byte>) {});
  writer.write();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen, 30u);
  const SafetensorsFile file = SafetensorsFile::open(dir / "lazy.safetensors");
  const auto bytes = file.bytes("w");
  ASSERT_EQ(bytes.size(), 30u);
  for (std::size_t i = 0; i < bytes.size(); ++i) EXPECT_EQ(bytes[i], static_cast<std::byte>(i));
  for (const std::byte b : file.bytes("lazy_idle")) EXPECT_EQ(b, std::byte{0});
}

TEST(SafetensorsWriter, RejectsBadNamesAndTensors) {
  TempDir dir;
  SafetensorsWriter writer(dir / "x.safetensors");
  const Tensor t = Tensor::zeros({2}, DType::F32);
  writer.add("w", t);
  EXPECT_THAT(error_message(ErrorCode::InvalidArgument, [&] { writer.add("w", t); }),
              AllOf(HasSubstr("x.safetensors"), HasSubstr("tensor 'w' is added twice")));
  EXPECT_THAT(error_message(ErrorCode::InvalidArgument, [&] { writer.add("", t); }), HasSubstr("name is empty"));
  EXPECT_THAT(error_message(ErrorCode::InvalidArgument, [&] { writer.add("__metadata__", t); }), HasSubstr("reserved"));
  EXPECT_THAT(error_message(ErrorCode::InvalidArgument, [&] { writer.add("bad\xff", t); }),
              HasSubstr("is not valid UTF-8"));
  EXPECT_THAT(error_message(ErrorCode::InvalidArgument, [&] { writer.add("undefined", Tensor()); }),
              HasSubstr("tensor 'undefined' is undefined"));
  EXPECT_THAT(error_message(ErrorCode::Unsupported, [&] { writer.add("packed", Tensor::zeros({4}, DType::U4)); }),
              AllOf(HasSubstr("tensor 'packed' is u4"), HasSubstr("store its bytes as U8")));
  EXPECT_THAT(error_message(ErrorCode::InvalidArgument, [&] { writer.add_lazy("p", DType::F32, {1}, nullptr); }),
              HasSubstr("tensor 'p' has no producer"));
  EXPECT_THAT(error_message(ErrorCode::InvalidArgument,
                            [&] {
                              writer.set_metadata({{"k", std::string("\xc3\x28")}});
                            }),
              HasSubstr("metadata value of 'k'"));
  writer.write();  // the rejected adds left the writer usable
  EXPECT_THAT(SafetensorsFile::open(dir / "x.safetensors").names(), ElementsAre("w"));
}

// ---- SafetensorsFile ---------------------------------------------------------------------------------------

TEST(SafetensorsFile, OpenMissingFileIsIOError) {
  TempDir dir;
  EXPECT_THAT(error_message(ErrorCode::IO, [&] { SafetensorsFile::open(dir / "absent.safetensors"); }),
              HasSubstr("absent.safetensors"));
}

TEST(SafetensorsFile, OpenCorruptFileNamesThePath) {
  TempDir dir;
  write_bytes(dir / "c.safetensors", make_image("{}", 3));
  EXPECT_THAT(error_message(ErrorCode::Corrupt, [&] { SafetensorsFile::open(dir / "c.safetensors"); }),
              AllOf(HasSubstr((dir / "c.safetensors").string()), HasSubstr("3 bytes of data")));
}

TEST(SafetensorsFile, UnknownTensorIsInvalidArgument) {
  TempDir dir;
  save_safetensors(dir / "f.safetensors", {{"w", Tensor::zeros({2}, DType::F32)}});
  const SafetensorsFile file = SafetensorsFile::open(dir / "f.safetensors");
  EXPECT_FALSE(file.contains("v"));
  EXPECT_THAT(error_message(ErrorCode::InvalidArgument, [&] { file.tensor("v"); }),
              AllOf(HasSubstr("f.safetensors"), HasSubstr("no tensor named 'v'")));
}

TEST(SafetensorsFile, ViewsOutliveTheFileObjectAndTheFile) {
  TempDir dir;
  const Tensor w = random_tensor({8, 3}, DType::F32, 11);
  save_safetensors(dir / "v.safetensors", {{"w", w}});
  Tensor view;
  {
    const SafetensorsFile file = SafetensorsFile::open(dir / "v.safetensors");
    view = file.tensor("w");
  }
  std::filesystem::remove(dir / "v.safetensors");
  EXPECT_TRUE(same_bytes(bytes_of(view), bytes_of(w)));
  // The mapping is private: writing into a view changes neither the file nor other views.
  view.set({0, 0}, 42.0);
  EXPECT_EQ(view.get({0, 0}), 42.0);
}

TEST(SafetensorsFile, MisalignedDataIsCopiedAligned) {
  TempDir dir;
  // A header of 57 bytes puts the data at file offset 65: no F32 there is 4-byte aligned.
  std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append(57 - header.size(), ' ');
  std::vector<std::byte> image = make_image(header, 0);
  const float values[2] = {1.25f, -3.5f};
  const auto* p = reinterpret_cast<const std::byte*>(values);
  image.insert(image.end(), p, p + sizeof values);
  write_bytes(dir / "odd.safetensors", image);
  const SafetensorsFile file = SafetensorsFile::open(dir / "odd.safetensors");
  const Tensor t = file.tensor("w");
  EXPECT_NE(t.raw_data(), static_cast<const void*>(file.bytes("w").data()));
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.raw_data()) % 4, 0u);
  EXPECT_EQ(t.get({0}), 1.25);
  EXPECT_EQ(t.get({1}), -3.5);
}

// ---- atomicity ---------------------------------------------------------------------------------------------

std::vector<std::pair<std::string, Tensor>> atomicity_tensors() {
  return {{"a", random_tensor({64, 3}, DType::F32, 21)},
          {"b", random_tensor({5, 7}, DType::BF16, 22)},
          {"c", random_tensor({100}, DType::U8, 23)}};
}

TEST(SafetensorsWriterAtomicity, DiskFullAnywhereLeavesPreviousFileIntact) {
  TempDir dir;
  const std::filesystem::path target = dir / "model.safetensors";
  save_safetensors(target, {{"old", Tensor::zeros({3}, DType::I32)}}, {{"version", "1"}});
  const std::vector<std::byte> previous = read_bytes(target);

  // The size of the new file, to aim failures at its header and at the middle of its data.
  save_safetensors(dir / "probe.safetensors", atomicity_tensors());
  const SafetensorsFile probe = SafetensorsFile::open(dir / "probe.safetensors");
  const std::uint64_t data_offset = probe.header().data_offset;
  const std::uint64_t total = std::filesystem::file_size(dir / "probe.safetensors");
  std::filesystem::remove(dir / "probe.safetensors");

  for (const std::uint64_t budget :
       {std::uint64_t{0}, std::uint64_t{5}, std::uint64_t{8}, std::uint64_t{20}, data_offset - 1, data_offset,
        data_offset + 100, data_offset + probe.info("a").end + 3, total - 1}) {
    SCOPED_TRACE(fmt::format("failing after {} of {} bytes", budget, total));
    {
      const FailWritesGuard guard(static_cast<std::int64_t>(budget));
      EXPECT_THAT(error_message(ErrorCode::IO, [&] { save_safetensors(target, atomicity_tensors()); }),
                  AllOf(HasSubstr("model.safetensors"), HasSubstr("disk full")));
    }
    EXPECT_TRUE(same_bytes(read_bytes(target), previous));
    EXPECT_THAT(dir.listing(), ElementsAre("model.safetensors"));  // no temporary left behind
  }
  // With the budget exactly the file size, the write succeeds.
  {
    const FailWritesGuard guard(static_cast<std::int64_t>(total));
    save_safetensors(target, atomicity_tensors());
  }
  EXPECT_EQ(std::filesystem::file_size(target), total);
}

TEST(SafetensorsWriterAtomicity, DiskFullWithoutPreviousFileLeavesNothing) {
  TempDir dir;
  const FailWritesGuard guard(30);
  EXPECT_THAT(error_message(ErrorCode::IO, [&] { save_safetensors(dir / "new.safetensors", atomicity_tensors()); }),
              HasSubstr("disk full"));
  EXPECT_TRUE(dir.listing().empty());
}

TEST(SafetensorsWriterAtomicity, ThrowingProducerLeavesPreviousFileIntact) {
  TempDir dir;
  const std::filesystem::path target = dir / "model.safetensors";
  save_safetensors(target, {{"old", Tensor::zeros({3}, DType::I32)}});
  const std::vector<std::byte> previous = read_bytes(target);

  SafetensorsWriter writer(target);
  writer.add("first", random_tensor({1000}, DType::F32, 5));  // written before the producer throws
  writer.add_lazy("second", DType::F16, {10},
                  [](std::span<std::byte>) { throw Error(ErrorCode::Numerical, "quantize: NaN in 'second'"); });
  EXPECT_THAT(error_message(ErrorCode::Numerical, [&] { writer.write(); }), HasSubstr("NaN in 'second'"));
  EXPECT_TRUE(same_bytes(read_bytes(target), previous));
  EXPECT_THAT(dir.listing(), ElementsAre("model.safetensors"));

  SafetensorsWriter other(dir / "other.safetensors");
  other.add_lazy("x", DType::U8, {4}, [](std::span<std::byte>) { throw std::runtime_error("producer failed"); });
  EXPECT_THROW(other.write(), std::runtime_error);
  EXPECT_THAT(dir.listing(), ElementsAre("model.safetensors"));
}

TEST(SafetensorsWriterAtomicity, MissingFolderIsIOError) {
  TempDir dir;
  EXPECT_THAT(error_message(ErrorCode::IO, [&] { save_safetensors(dir / "no" / "such.safetensors", {}); }),
              HasSubstr((dir / "no").string()));
}

// ---- the reference package loads what we write -------------------------------------------------------------

// Loads a file with Python's safetensors and compares names, dtypes, shapes, bytes and metadata with a JSON
// file of expectations. Exit 77: the package is not installed.
constexpr const char* kPythonCheck = R"PY(
import json, sys
try:
    import safetensors
except ImportError as e:
    print("python safetensors package not installed:", e)
    sys.exit(77)
path, expected_path = sys.argv[1], sys.argv[2]
with open(expected_path, encoding="utf-8") as f:
    expected = json.load(f)
with open(path, "rb") as f:
    blob = f.read()
got = {name: info for name, info in safetensors.deserialize(blob)}
errors = []
if sorted(got) != sorted(expected["tensors"]):
    errors.append("names: %s != %s" % (sorted(got), sorted(expected["tensors"])))
for name, want in expected["tensors"].items():
    info = got.get(name)
    if info is None:
        continue
    have = (info["dtype"], list(info["shape"]), bytes(info["data"]).hex())
    if have != (want["dtype"], want["shape"], want["hex"]):
        errors.append("%s: got %s %s, want %s %s" % (name, info["dtype"], info["shape"], want["dtype"], want["shape"]))
with safetensors.safe_open(path, framework="numpy") as f:
    if (f.metadata() or {}) != expected["metadata"]:
        errors.append("metadata: %s != %s" % (f.metadata(), expected["metadata"]))
print("\n".join(errors) if errors else "ok: %d tensors" % len(got))
sys.exit(1 if errors else 0)
)PY";

std::string hex(std::span<const std::byte> bytes) {
  std::string out;
  for (const std::byte b : bytes) out += fmt::format("{:02x}", static_cast<unsigned>(b));
  return out;
}

TEST(SafetensorsInterop, PythonPackageLoadsOurFiles) {
  const char* env = std::getenv("LOWBIT_PYTHON");
  const std::string python = env != nullptr && *env != '\0' ? env : "python3";
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::uint64_t seed = 300;
  for (const DType dtype : safetensors_dtypes()) {
    tensors.emplace_back(fmt::format("model.{}.weight", dtype_name(dtype)), random_tensor({3, 5}, dtype, seed++));
  }
  tensors.emplace_back("zero", Tensor::empty({0, 2}, DType::F32));
  tensors.emplace_back("scalar", random_tensor({}, DType::F64, seed++));
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "\xc3\xa9t\xc3\xa9"}};
  save_safetensors(dir / "ours.safetensors", tensors, metadata);

  nlohmann::json expected = {{"metadata", metadata}, {"tensors", nlohmann::json::object()}};
  for (const auto& [name, t] : tensors) {
    std::vector<std::int64_t> shape(t.shape().begin(), t.shape().end());
    expected["tensors"][name] = {
        {"dtype", std::string(safetensors_dtype_name(t.dtype()))}, {"shape", shape}, {"hex", hex(bytes_of(t))}};
  }
  write_text(dir / "expected.json", expected.dump());
  write_text(dir / "check.py", kPythonCheck);

  const std::string command =
      fmt::format("'{}' '{}' '{}' '{}' > '{}' 2>&1", python, (dir / "check.py").string(),
                  (dir / "ours.safetensors").string(), (dir / "expected.json").string(), (dir / "log.txt").string());
  const int status = std::system(command.c_str());
  const std::vector<std::byte> log_bytes = read_bytes(dir / "log.txt");
  const std::string log(reinterpret_cast<const char*>(log_bytes.data()), log_bytes.size());
  ASSERT_TRUE(status != -1 && WIFEXITED(status)) << command;
  const int code = WEXITSTATUS(status);
  if (code == 77) GTEST_SKIP() << log;
  if (code == 126 || code == 127) GTEST_SKIP() << "cannot run '" << python << "' (set LOWBIT_PYTHON): " << log;
  EXPECT_EQ(code, 0) << log;
}

}  // namespace
}  // namespace lowbit::io::test
