#include "cache/snapshot_format.h"

#include <string>

#include "cache/synthetic_document.h"
#include "gtest/gtest.h"

namespace longread::cache {
namespace {

using engine::MemorySnapshot;

SyntheticShape SmallShape() {
  SyntheticShape shape;
  shape.n_layers = 2;
  shape.n_kv_heads = 2;
  shape.head_dim = 8;
  shape.sink = 2;
  shape.top_k = 6;
  shape.window = 8;
  shape.segment_len = 16;
  return shape;
}

MemorySnapshot SnapshotAt(int64_t segment) {
  SyntheticDocument doc(SmallShape());
  doc.AdvanceTo(segment);
  return doc.Snapshot();
}

void ExpectSameSnapshot(const MemorySnapshot& a, const MemorySnapshot& b) {
  EXPECT_EQ(ContentHash(a), ContentHash(b));
  EXPECT_EQ(a.segment_index, b.segment_index);
  EXPECT_EQ(a.pending_tokens, b.pending_tokens);
  EXPECT_EQ(a.pending_utf8, b.pending_utf8);
  ASSERT_EQ(a.heads.size(), b.heads.size());
  for (size_t h = 0; h < a.heads.size(); ++h) {
    EXPECT_EQ(a.heads[h].positions, b.heads[h].positions) << "head " << h;
    EXPECT_EQ(a.heads[h].keys, b.heads[h].keys) << "head " << h;
    EXPECT_EQ(a.heads[h].values, b.heads[h].values) << "head " << h;
    EXPECT_EQ(a.heads[h].scores, b.heads[h].scores) << "head " << h;
  }
}

TEST(SnapshotFormat, FullRecordRoundTripsWithEveryCodec) {
  const MemorySnapshot s = SnapshotAt(5);
  ASSERT_TRUE(ValidateShape(s).ok());
  for (Codec codec : {Codec::kNone, Codec::kLz4, Codec::kZstd}) {
    for (bool shuffle : {false, true}) {
      EncodeOptions options{.codec = codec, .shuffle = shuffle};
      const std::string record = EncodeFullRecord(s, ContentHash(s), options);
      absl::StatusOr<DecodedRecord> decoded = DecodeRecord(record);
      ASSERT_TRUE(decoded.ok()) << decoded.status();
      EXPECT_EQ(decoded->kind, RecordKind::kFull);
      EXPECT_EQ(decoded->content_hash, ContentHash(s));
      ExpectSameSnapshot(decoded->state, s);
    }
  }
}

TEST(SnapshotFormat, DeltaAppliedToBaseGivesNext) {
  const MemorySnapshot base = SnapshotAt(6);
  const MemorySnapshot next = SnapshotAt(7);
  std::vector<std::vector<int64_t>> base_positions;
  for (const auto& head : base.heads) base_positions.push_back(head.positions);
  uint64_t raw = 0;
  const std::string record =
      EncodeDeltaRecord(next, base_positions, /*base_seq=*/41, ContentHash(next), {}, &raw);
  EXPECT_LT(raw, FullPayloadBytes(next));  // most top-k slots survive a segment
  absl::StatusOr<DecodedRecord> delta = DecodeRecord(record);
  ASSERT_TRUE(delta.ok()) << delta.status();
  EXPECT_EQ(delta->kind, RecordKind::kDelta);
  EXPECT_EQ(delta->base_seq, 41u);
  MemorySnapshot rebuilt = base;
  ASSERT_TRUE(ApplyDelta(*std::move(delta), &rebuilt).ok());
  ExpectSameSnapshot(rebuilt, next);
}

TEST(SnapshotFormat, DeltaOnTheWrongBaseIsRefused) {
  const MemorySnapshot base = SnapshotAt(6);
  const MemorySnapshot next = SnapshotAt(7);
  std::vector<std::vector<int64_t>> base_positions;
  for (const auto& head : base.heads) base_positions.push_back(head.positions);
  uint64_t raw = 0;
  absl::StatusOr<DecodedRecord> delta =
      DecodeRecord(EncodeDeltaRecord(next, base_positions, 1, ContentHash(next), {}, &raw));
  ASSERT_TRUE(delta.ok());
  MemorySnapshot wrong_base = SnapshotAt(3);  // lacks slots the delta removes
  EXPECT_EQ(ApplyDelta(*std::move(delta), &wrong_base).code(), absl::StatusCode::kDataLoss);
}

TEST(SnapshotFormat, EveryFlippedByteIsDetected) {
  const MemorySnapshot s = SnapshotAt(3);
  const std::string record = EncodeFullRecord(s, ContentHash(s), {});
  for (size_t i = 0; i < record.size(); i += 7) {
    std::string damaged = record;
    damaged[i] ^= 0x20;
    absl::StatusOr<DecodedRecord> decoded = DecodeRecord(damaged);
    ASSERT_FALSE(decoded.ok()) << "flip at byte " << i << " went unnoticed";
  }
  EXPECT_EQ(DecodeRecord(record.substr(0, record.size() - 1)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeRecord(record.substr(0, 10)).status().code(), absl::StatusCode::kDataLoss);
}

TEST(SnapshotFormat, UnknownVersionIsAFailedPrecondition) {
  const MemorySnapshot s = SnapshotAt(2);
  std::string record = EncodeFullRecord(s, ContentHash(s), {});
  record[4] = 9;
  absl::Status status = DecodeRecord(record).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("format_version 9"), std::string::npos) << status;
}

TEST(SnapshotFormat, ShapeValidationNamesTheProblem) {
  MemorySnapshot s = SnapshotAt(4);
  s.heads[3].keys.pop_back();
  absl::Status status = ValidateShape(s);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("head 3"), std::string::npos) << status;
  EXPECT_NE(status.message().find("keys.size()"), std::string::npos) << status;

  s = SnapshotAt(4);
  s.heads.pop_back();
  EXPECT_EQ(ValidateShape(s).code(), absl::StatusCode::kInvalidArgument);

  s = SnapshotAt(4);
  std::swap(s.heads[0].positions[0], s.heads[0].positions[1]);
  EXPECT_NE(ValidateShape(s).message().find("ascending"), std::string::npos);

  s = SnapshotAt(4);
  s.heads[0].positions.back() = s.token_offset;
  EXPECT_FALSE(ValidateShape(s).ok());
}

TEST(SnapshotFormat, HeadRoundTripsAndDetectsDamage) {
  HeadRecord head;
  head.next_seq = 12;
  head.last_write_unix_micros = 1234567;
  head.stored_bytes = 999;
  head.segment_index = 77;
  head.job_id = "job-1";
  head.chain = {9, 10, 11};
  head.chain_bytes = {500, 200, 250};
  const std::string value = EncodeHead(head);
  absl::StatusOr<HeadRecord> decoded = DecodeHead(value);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->chain, head.chain);
  EXPECT_EQ(decoded->chain_bytes, head.chain_bytes);
  EXPECT_EQ(decoded->job_id, "job-1");
  EXPECT_EQ(decoded->segment_index, 77);
  for (size_t i = 0; i < value.size(); ++i) {
    std::string damaged = value;
    damaged[i] ^= 1;
    EXPECT_FALSE(DecodeHead(damaged).ok()) << "flip at byte " << i;
  }
}

TEST(SnapshotFormat, ShuffleIsInvertible) {
  std::string bytes;
  for (int i = 0; i < 64; ++i) bytes.push_back(static_cast<char>(i * 37));
  EXPECT_NE(ShuffleWords(bytes), bytes);
  EXPECT_EQ(UnshuffleWords(ShuffleWords(bytes)), bytes);
}

}  // namespace
}  // namespace longread::cache
