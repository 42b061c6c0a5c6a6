#include "engine/model_files/gguf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "tests/engine/model_files/gguf_builder.h"
#include "tests/engine/model_files/status_message.h"

namespace longread::engine {
namespace {

using testing::GgufBuilder;
using ::testing::HasSubstr;
using testing::Message;

TEST(GgufTest, ParsesTinyModel) {
  std::string bytes = testing::TinyModel().Build();
  auto file = GgufFile::Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->version(), 3u);
  EXPECT_EQ((*file)->alignment(), 32u);
  EXPECT_EQ((*file)->data_offset() % 32, 0u);
  EXPECT_EQ((*file)->file_size(), bytes.size());
  EXPECT_EQ((*file)->tensors().size(), 11u);
  EXPECT_EQ(*(*file)->GetString("general.architecture"), "llama");
  EXPECT_EQ(*(*file)->GetU32("llama.embedding_length"), 32u);
  EXPECT_FLOAT_EQ(*(*file)->GetF32("llama.rope.freq_base"), 100000.0f);
  EXPECT_EQ((*file)->GetStringArray("tokenizer.ggml.tokens")->size(), 32u);
  const GgufTensorInfo* q = (*file)->FindTensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dims, (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(q->type, 2u);
  EXPECT_EQ(q->bytes, 32u * 18);
  EXPECT_EQ(q->elements(), 32 * 32);
  EXPECT_EQ(q->data,
            reinterpret_cast<const uint8_t*>(bytes.data()) + (*file)->data_offset() + q->offset);
  EXPECT_EQ((*file)->FindTensor("nope"), nullptr);
  EXPECT_EQ((*file)->Find("nope"), nullptr);
  EXPECT_EQ((*file)->GetString("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(GgufTest, VersionTwoAccepted) {
  auto file = GgufFile::Parse(testing::TinyModel().Version(2).Build());
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->version(), 2u);
}

TEST(GgufTest, AllValueTypesConvert) {
  GgufBuilder b;
  b.Kv("u8", GgufBuilder::kU8, GgufBuilder::Pod<uint8_t>(255))
      .Kv("i8", GgufBuilder::kI8, GgufBuilder::Pod<int8_t>(-1))
      .Kv("u16", GgufBuilder::kU16, GgufBuilder::Pod<uint16_t>(65535))
      .Kv("i16", GgufBuilder::kI16, GgufBuilder::Pod<int16_t>(-300))
      .U32("u32", 4000000000u)
      .I32("i32", -7)
      .F32("f32", 1.5f)
      .Bool("bool", true)
      .String("string", "hello")
      .U64("u64", std::numeric_limits<uint64_t>::max())
      .Kv("i64", GgufBuilder::kI64, GgufBuilder::Pod<int64_t>(std::numeric_limits<int64_t>::min()))
      .Kv("f64", GgufBuilder::kF64, GgufBuilder::Pod<double>(2.25));
  // [[1, 2], [3]] of i32, and an array of f32.
  std::string nested = GgufBuilder::ArrayHeader(GgufBuilder::kArray, 2) +
                       GgufBuilder::ArrayHeader(GgufBuilder::kI32, 2) +
                       GgufBuilder::Pod<int32_t>(1) + GgufBuilder::Pod<int32_t>(2) +
                       GgufBuilder::ArrayHeader(GgufBuilder::kI32, 1) +
                       GgufBuilder::Pod<int32_t>(3);
  b.Kv("nested", GgufBuilder::kArray, nested);
  b.Kv("floats", GgufBuilder::kArray,
       GgufBuilder::ArrayHeader(GgufBuilder::kF32, 2) + GgufBuilder::Pod<float>(0.5f) +
           GgufBuilder::Pod<float>(-1.0f));
  std::string bytes = b.Build();
  auto parsed = GgufFile::Parse(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const GgufFile& f = **parsed;
  EXPECT_EQ(f.metadata().size(), 14u);
  EXPECT_EQ(*f.Find("u8")->AsU64(), 255u);
  EXPECT_EQ(*f.Find("u8")->AsI64(), 255);
  EXPECT_EQ(*f.Find("i8")->AsI64(), -1);
  EXPECT_FALSE(f.Find("i8")->AsU64().ok());
  EXPECT_EQ(*f.Find("u16")->AsU64(), 65535u);
  EXPECT_EQ(*f.Find("i16")->AsI64(), -300);
  EXPECT_EQ(*f.GetU32("u32"), 4000000000u);
  EXPECT_EQ(*f.GetI64("i32"), -7);
  EXPECT_FALSE(f.GetU32("i32").ok());
  EXPECT_DOUBLE_EQ(*f.Find("f32")->AsF64(), 1.5);
  EXPECT_FALSE(f.Find("f32")->AsI64().ok());
  EXPECT_TRUE(*f.GetBool("bool"));
  EXPECT_FALSE(f.Find("bool")->AsU64().ok());
  EXPECT_EQ(*f.GetString("string"), "hello");
  EXPECT_THAT(Message(f.GetString("u8").status()), HasSubstr("key 'u8'"));
  EXPECT_EQ(*f.GetU64("u64"), std::numeric_limits<uint64_t>::max());
  EXPECT_FALSE(f.GetU32("u64").ok());
  EXPECT_FALSE(f.GetI64("u64").ok());
  EXPECT_EQ(*f.GetI64("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_DOUBLE_EQ(*f.Find("f64")->AsF64(), 2.25);
  EXPECT_FLOAT_EQ(*f.GetF32("f64"), 2.25f);
  const GgufValue* n = f.Find("nested");
  ASSERT_TRUE(n->is_array());
  EXPECT_EQ(n->element_type(), GgufValueType::kArray);
  EXPECT_EQ(n->size(), 2u);
  EXPECT_EQ(*n->At(0)->ArrayI64(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(*n->At(1)->ArrayI64(), (std::vector<int64_t>{3}));
  EXPECT_FALSE(n->At(2).ok());
  EXPECT_FALSE(n->ArrayI64().ok());
  EXPECT_EQ(*f.Find("floats")->ArrayF64(), (std::vector<double>{0.5, -1.0}));
  EXPECT_FALSE(f.Find("floats")->ArrayStrings().ok());
}

TEST(GgufTest, F64BeyondFloatIsRefusedByGetF32) {
  std::string bytes =
      GgufBuilder().Kv("big", GgufBuilder::kF64, GgufBuilder::Pod<double>(1e300)).Build();
  auto f = GgufFile::Parse(bytes);
  ASSERT_TRUE(f.ok());
  EXPECT_THAT(Message((*f)->GetF32("big").status()), HasSubstr("does not fit in a float"));
  EXPECT_DOUBLE_EQ(*(*f)->Find("big")->AsF64(), 1e300);
}

TEST(GgufTest, EveryTruncationIsAnError) {
  std::string bytes = testing::TinyModel().Build();
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::string cut = bytes.substr(0, n);  // own buffer so ASan sees reads past the end
    auto file = GgufFile::Parse(cut);
    EXPECT_FALSE(file.ok()) << "accepted a file cut at " << n << " of " << bytes.size();
  }
}

TEST(GgufTest, RefusesOtherVersionsAndMagic) {
  auto v1 = GgufFile::Parse(testing::TinyModel().Version(1).Build());
  EXPECT_THAT(Message(v1.status()), HasSubstr("version 1"));
  auto v4 = GgufFile::Parse(testing::TinyModel().Version(4).Build());
  EXPECT_THAT(Message(v4.status()), HasSubstr("unsupported version 4"));
  std::string bytes = testing::TinyModel().Build();
  bytes[0] = 'X';
  EXPECT_THAT(Message(GgufFile::Parse(bytes).status()), HasSubstr("magic"));
}

TEST(GgufTest, HugeCountsRefusedBeforeAllocating) {
  auto tensors = GgufFile::Parse(GgufBuilder().TensorCountOverride(uint64_t{1} << 60).Build());
  EXPECT_THAT(Message(tensors.status()), HasSubstr("tensor_count"));
  auto kvs = GgufFile::Parse(GgufBuilder().KvCountOverride(~uint64_t{0}).Build());
  EXPECT_THAT(Message(kvs.status()), HasSubstr("metadata_kv_count"));
  for (auto elem :
       {GgufBuilder::kU8, GgufBuilder::kString, GgufBuilder::kArray, GgufBuilder::kU64}) {
    auto array = GgufFile::Parse(
        GgufBuilder()
            .Kv("big", GgufBuilder::kArray, GgufBuilder::ArrayHeader(elem, uint64_t{1} << 62))
            .Build());
    EXPECT_EQ(array.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(Message(array.status()), HasSubstr("cannot fit"));
  }
}

TEST(GgufTest, StringLengthPastEndRefused) {
  std::string value = GgufBuilder::Pod<uint64_t>(~uint64_t{0}) + "abc";
  auto s = GgufFile::Parse(GgufBuilder().Kv("s", GgufBuilder::kString, value).Build());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(s.status()), HasSubstr("string length"));
  std::string key = GgufBuilder::Pod<uint64_t>(1u << 20) + "k";
  std::string bytes = GgufBuilder().Build();
  bytes.resize(24);
  bytes.replace(16, 8, GgufBuilder::Pod<uint64_t>(1));  // one kv whose key runs past the end
  bytes += key + std::string(40, '\0');
  EXPECT_FALSE(GgufFile::Parse(bytes).ok());
}

TEST(GgufTest, TensorDataOutsideFileRefused) {
  auto f = GgufFile::Parse(GgufBuilder().Tensor("w", {8}, 0, 32, uint64_t{1} << 40).Build());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(f.status()), HasSubstr("tensor 'w'"));
  EXPECT_THAT(Message(f.status()), HasSubstr("lies outside the file"));
  auto wrap = GgufFile::Parse(GgufBuilder().Tensor("w", {8}, 0, 32, ~uint64_t{31}).Build());
  EXPECT_THAT(Message(wrap.status()), HasSubstr("lies outside the file"));
}

TEST(GgufTest, MisalignedAndOverlappingTensorsRefused) {
  auto mis = GgufFile::Parse(GgufBuilder().Tensor("w", {8}, 0, 32, 4).Build());
  EXPECT_THAT(Message(mis.status()), HasSubstr("not a multiple of the alignment"));
  auto overlap = GgufFile::Parse(
      GgufBuilder().Tensor("a", {16}, 0, 64, 0).Tensor("b", {8}, 0, 32, 32).Build());
  EXPECT_THAT(Message(overlap.status()), HasSubstr("overlaps tensor 'a'"));
}

TEST(GgufTest, AlignmentKey) {
  auto ok = GgufFile::Parse(
      GgufBuilder().U32("general.alignment", 64).Alignment(64).Tensor("w", {8}, 0, 32).Build());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->alignment(), 64u);
  EXPECT_EQ((*ok)->data_offset() % 64, 0u);
  for (uint32_t bad : {0u, 3u, 48u}) {
    auto f = GgufFile::Parse(GgufBuilder().U32("general.alignment", bad).Build());
    EXPECT_THAT(Message(f.status()), HasSubstr("power of two")) << bad;
  }
  auto wrong_type = GgufFile::Parse(GgufBuilder().String("general.alignment", "32").Build());
  EXPECT_THAT(Message(wrong_type.status()), HasSubstr("general.alignment"));
}

TEST(GgufTest, DuplicatesRefused) {
  auto keys = GgufFile::Parse(GgufBuilder().U32("a", 1).U32("a", 2).Build());
  EXPECT_THAT(Message(keys.status()), HasSubstr("duplicate key"));
  auto tensors =
      GgufFile::Parse(GgufBuilder().Tensor("w", {8}, 0, 32).Tensor("w", {8}, 0, 32).Build());
  EXPECT_THAT(Message(tensors.status()), HasSubstr("duplicate tensor name"));
}

TEST(GgufTest, TensorShapeAndTypeChecks) {
  // Known ggml types this build cannot compute are fine in the file.
  auto q4k = GgufFile::Parse(GgufBuilder().Tensor("w", {256}, 12, 144).Build());
  ASSERT_TRUE(q4k.ok()) << q4k.status();
  EXPECT_EQ(GgmlTypeName((*q4k)->tensors()[0].type), "Q4_K");
  auto unknown = GgufFile::Parse(GgufBuilder().Tensor("w", {8}, 99, 32).Build());
  EXPECT_THAT(Message(unknown.status()), HasSubstr("unknown ggml type id 99"));
  auto rank5 = GgufFile::Parse(GgufBuilder().Tensor("w", {1, 1, 1, 1, 8}, 0, 32).Build());
  EXPECT_THAT(Message(rank5.status()), HasSubstr("n_dims 5"));
  auto zero = GgufFile::Parse(GgufBuilder().Tensor("w", {8, 0}, 0, 0).Build());
  EXPECT_THAT(Message(zero.status()), HasSubstr("dim[1]"));
  uint64_t big = uint64_t{1} << 32;
  auto overflow = GgufFile::Parse(GgufBuilder().Tensor("w", {big, big}, 0, 0).Build());
  EXPECT_THAT(Message(overflow.status()), HasSubstr("overflow"));
  auto bytes_overflow =
      GgufFile::Parse(GgufBuilder().Tensor("w", {uint64_t{1} << 62}, 0, 0).Build());
  EXPECT_THAT(Message(bytes_overflow.status()), HasSubstr("overflow"));
  auto row = GgufFile::Parse(GgufBuilder().Tensor("w", {33, 1}, 2, 18).Build());
  EXPECT_THAT(Message(row.status()), HasSubstr("not a multiple of the Q4_0 block size 32"));
}

TEST(GgufTest, DeepNestingAndBadValuesRefused) {
  std::string deep;
  for (int i = 0; i < 40; ++i) deep += GgufBuilder::ArrayHeader(GgufBuilder::kArray, 1);
  deep += GgufBuilder::ArrayHeader(GgufBuilder::kU8, 0);
  auto nested = GgufFile::Parse(GgufBuilder().Kv("deep", GgufBuilder::kArray, deep).Build());
  EXPECT_THAT(Message(nested.status()), HasSubstr("nested deeper"));
  auto boolean = GgufFile::Parse(
      GgufBuilder().Kv("b", GgufBuilder::kBool, GgufBuilder::Pod<uint8_t>(2)).Build());
  EXPECT_THAT(Message(boolean.status()), HasSubstr("bool"));
  auto type =
      GgufFile::Parse(GgufBuilder().Kv("t", static_cast<GgufBuilder::Type>(13), "").Build());
  EXPECT_THAT(Message(type.status()), HasSubstr("unknown value type 13"));
  auto elem =
      GgufFile::Parse(GgufBuilder()
                          .Kv("t", GgufBuilder::kArray,
                              GgufBuilder::ArrayHeader(static_cast<GgufBuilder::Type>(77), 0))
                          .Build());
  EXPECT_THAT(Message(elem.status()), HasSubstr("unknown array element type 77"));
}

TEST(GgufTest, ErrorsNameTheOffset) {
  std::string bytes = GgufBuilder().U32("a", 1).Build();
  bytes.resize(39);  // header 24 + key 9 + type 4, then half of the u32 value
  auto f = GgufFile::Parse(bytes);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(f.status()), HasSubstr("metadata 'a' at offset 37"));
}

}  // namespace
}  // namespace longread::engine
