// AtomicFile: the target holds either the old file or the whole new one, never a part, and no temporary
// outlives the object.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>

#include "io/io_test_util.hpp"
#include "lowbit/io/atomic_file.hpp"

namespace lowbit::io::test {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string read_text(const std::filesystem::path& path) {
  const std::vector<std::byte> bytes = read_bytes(path);
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

TEST(AtomicFile, CommitReplacesTargetWithEverythingWritten) {
  TempDir dir;
  write_text(dir / "f.txt", "old contents");
  {
    AtomicFile file(dir / "f.txt");
    EXPECT_EQ(file.temp_path().parent_path(), dir.path());
    EXPECT_THAT(file.temp_path().filename().string(), StartsWith("f.txt.tmp-"));
    EXPECT_EQ(file.temp_path().filename().string().size(), std::string("f.txt.tmp-XXXXXX").size());
    file.write("new ");
    file.write(std::string(100000, 'x'));
    EXPECT_EQ(read_text(dir / "f.txt"), "old contents");  // untouched until commit
    EXPECT_EQ(file.bytes_written(), 100004u);
    file.commit();
  }
  EXPECT_EQ(read_text(dir / "f.txt"), "new " + std::string(100000, 'x'));
  EXPECT_THAT(dir.listing(), ElementsAre("f.txt"));
}

TEST(AtomicFile, DestructorWithoutCommitRemovesTemporary) {
  TempDir dir;
  write_text(dir / "f.txt", "old");
  {
    AtomicFile file(dir / "f.txt");
    file.write("half of a new file");
    EXPECT_TRUE(std::filesystem::exists(file.temp_path()));
    EXPECT_EQ(dir.listing().size(), 2u);
  }
  EXPECT_EQ(read_text(dir / "f.txt"), "old");
  EXPECT_THAT(dir.listing(), ElementsAre("f.txt"));
}

TEST(AtomicFile, NewFileGetsUmaskPermissionsNotMkstemps) {
  TempDir dir;
  write_file_atomically(dir / "p.json", "{}");
  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat st {};
  ASSERT_EQ(::stat((dir / "p.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0666 & ~mask);
}

TEST(AtomicFile, MissingFolderIsIOErrorNamingIt) {
  TempDir dir;
  EXPECT_THAT(error_message(ErrorCode::IO, [&] { AtomicFile file(dir / "absent" / "f.txt"); }),
              AllOf(HasSubstr((dir / "absent").string()), HasSubstr("No such file or directory")));
}

TEST(AtomicFile, RenameOntoFolderFailsAndCleansUp) {
  TempDir dir;
  std::filesystem::create_directory(dir / "target");
  std::filesystem::create_directory(dir / "target" / "inside");  // a non-empty folder cannot be replaced
  AtomicFile file(dir / "target");
  file.write("data");
  EXPECT_THAT(error_message(ErrorCode::IO, [&] { file.commit(); }), HasSubstr("cannot rename"));
  EXPECT_THAT(dir.listing(), ElementsAre("target"));
}

TEST(AtomicFile, InjectedDiskFullFailsTheWriteThatCrossesTheBudget) {
  TempDir dir;
  write_text(dir / "f.txt", "old");
  {
    const FailWritesGuard guard(10);
    AtomicFile file(dir / "f.txt");
    file.write("0123456789");  // exactly the budget: fine
    EXPECT_THAT(error_message(ErrorCode::IO, [&] { file.write("a"); }),
                AllOf(HasSubstr("f.txt"), HasSubstr("disk full after 10 bytes")));
    EXPECT_THAT(dir.listing(), ElementsAre("f.txt"));  // the temporary went at once
    EXPECT_THAT(error_message(ErrorCode::InvalidArgument, [&] { file.commit(); }), HasSubstr("after a failed write"));
  }
  {
    const FailWritesGuard guard(3);
    AtomicFile file(dir / "f.txt");
    EXPECT_THAT(error_message(ErrorCode::IO, [&] { file.write("abcdef"); }), HasSubstr("disk full after 3 bytes"));
  }
  EXPECT_EQ(read_text(dir / "f.txt"), "old");
  EXPECT_THAT(dir.listing(), ElementsAre("f.txt"));
  // Disabled again: writes go through.
  write_file_atomically(dir / "f.txt", "new");
  EXPECT_EQ(read_text(dir / "f.txt"), "new");
}

TEST(AtomicFile, BudgetIsSharedAcrossFiles) {
  TempDir dir;
  const FailWritesGuard guard(6);
  write_file_atomically(dir / "a.txt", "abcd");
  EXPECT_THAT(error_message(ErrorCode::IO, [&] { write_file_atomically(dir / "b.txt", "efgh"); }),
              HasSubstr("disk full after 2 bytes"));
  EXPECT_THAT(dir.listing(), ElementsAre("a.txt"));
}

}  // namespace
}  // namespace lowbit::io::test
