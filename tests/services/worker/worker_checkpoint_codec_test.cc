// The checkpoint's wire form: blocks rebuilt from bf16 + fp32 bounds store exactly what the first
// worker's archive stored (same bf16 payload, same fp32 representative), and a snapshot cut into
// parts decodes to the snapshot.
#include <cstring>
#include <random>

#include "cache/snapshot_format.h"
#include "engine/memory/recording_archive.h"
#include "gtest/gtest.h"
#include "kernels/half.h"
#include "services/worker/checkpoint_codec.h"

namespace longread::worker {
namespace {

constexpr int64_t kHeadDim = 8;

engine::ArchivedBlock RandomBlock(std::mt19937* rng, int64_t n, int64_t block_id) {
  std::normal_distribution<float> normal(0.0f, 2.0f);
  engine::ArchivedBlock block;
  block.layer = 1;
  block.kv_head = 2;
  block.block_id = block_id;
  for (int64_t i = 0; i < n; ++i) {
    block.positions.push_back(block_id * n + i);
    block.scores.push_back(normal(*rng));
  }
  for (int64_t i = 0; i < n * kHeadDim; ++i) {
    block.keys.push_back(normal(*rng));
    block.values.push_back(normal(*rng));
  }
  // Keys that share a bf16 bucket with the extreme (the case the rebuild must get right); a
  // block of one key has no second key to share it.
  if (n > 1) block.keys[kHeadDim] = std::nextafter(block.keys[0], 100.0f);
  return block;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(CheckpointCodecTest, RebuiltBlocksHaveTheOriginalBoundsAndPayload) {
  std::mt19937 rng(7);
  for (int64_t n : {1, 2, 16}) {
    for (int trial = 0; trial < 20; ++trial) {
      const engine::ArchivedBlock block = RandomBlock(&rng, n, trial);
      const v1::ArchivedBlock wire = ToWire(block, kHeadDim);
      auto rebuilt = FromWire(wire, kHeadDim);
      ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
      const engine::BlockBounds want = engine::ComputeBounds(block, kHeadDim);
      const engine::BlockBounds got = engine::ComputeBounds(*rebuilt, kHeadDim);
      EXPECT_TRUE(SameBits(want.key_min, got.key_min)) << "n " << n << " trial " << trial;
      EXPECT_TRUE(SameBits(want.key_max, got.key_max)) << "n " << n << " trial " << trial;
      // Rounding the rebuilt block again gives the same wire bytes: the same stored payload.
      const v1::ArchivedBlock again = ToWire(*rebuilt, kHeadDim);
      EXPECT_EQ(again.keys_bf16(), wire.keys_bf16());
      EXPECT_EQ(again.values_bf16(), wire.values_bf16());
      EXPECT_EQ(rebuilt->positions, block.positions);
      EXPECT_TRUE(SameBits(rebuilt->scores, block.scores));
    }
  }
}

// A GPU memory's blocks are recorded as bf16 rows: they ship as the same wire, byte for byte, as
// their widened blocks would (NaNs quieted, bounds from the bf16 keys).
TEST(CheckpointCodecTest, RecordedBf16RowsShipAsTheirWidenedBlocks) {
  std::mt19937 rng(7);
  engine::InMemoryBlockArchive inner(4, 4, kHeadDim);
  engine::RecordingBlockArchive recorder(&inner);
  std::vector<engine::ArchivedBlock> fp32;
  std::vector<std::vector<uint16_t>> keys(3), values(3);
  std::vector<engine::Bf16BlockRows> rows(3);
  for (int64_t id = 0; id < 3; ++id) {
    fp32.push_back(RandomBlock(&rng, 5, id));
    for (float x : fp32[id].keys) keys[id].push_back(kernels::FloatToBFloat16(x));
    for (float x : fp32[id].values) values[id].push_back(kernels::FloatToBFloat16(x));
  }
  keys[1][2] = 0x7f81;  // a signalling NaN
  for (int64_t id = 0; id < 3; ++id) {
    rows[id].layer = fp32[id].layer;
    rows[id].kv_head = fp32[id].kv_head;
    rows[id].block_id = fp32[id].block_id;
    rows[id].positions = fp32[id].positions;
    rows[id].scores = fp32[id].scores;
    rows[id].keys = keys[id];
    rows[id].values = values[id];
  }
  ASSERT_TRUE(recorder.PutRows(rows).ok());
  std::vector<engine::RecordedBlock> recorded = recorder.TakeRecordedBlocks();
  ASSERT_EQ(recorded.size(), 3u);
  for (engine::RecordedBlock& r : recorded) {
    ASSERT_TRUE(r.is_bf16());
    const std::string direct = ToWire(r, kHeadDim).SerializeAsString();
    engine::RecordedBlock copy = r;
    const std::string widened = ToWire(std::move(copy).Widened(), kHeadDim).SerializeAsString();
    EXPECT_EQ(direct, widened) << r.block.block_id;
  }
  // A whole checkpoint: the same parts either way.
  std::vector<engine::ArchivedBlock> widened_blocks;
  for (engine::RecordedBlock r : recorded) widened_blocks.push_back(std::move(r).Widened());
  std::vector<std::string> a, b;
  CheckpointStats sa, sb;
  EmitCheckpoint(
      1, 100, "", "snapshot", recorded, kHeadDim,
      [&](const v1::CheckpointPart& p) { return a.push_back(p.SerializeAsString()), true; }, &sa);
  EmitCheckpoint(
      1, 100, "", "snapshot", widened_blocks, kHeadDim,
      [&](const v1::CheckpointPart& p) { return b.push_back(p.SerializeAsString()), true; }, &sb);
  EXPECT_EQ(a, b);
  EXPECT_EQ(sa.archive_blocks, 3);
}

TEST(CheckpointCodecTest, MalformedBlockIsInvalidArgument) {
  std::mt19937 rng(1);
  v1::ArchivedBlock wire = ToWire(RandomBlock(&rng, 4, 0), kHeadDim);
  wire.mutable_keys_bf16()->pop_back();
  EXPECT_EQ(FromWire(wire, kHeadDim).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckpointCodecTest, PartsStayUnderTheLimitAndReassemble) {
  std::mt19937 rng(3);
  engine::SessionCheckpoint checkpoint;
  engine::MemorySnapshot& s = checkpoint.memory;
  s.model_fingerprint = "test-model";
  s.n_layers = 2;
  s.n_kv_heads = 2;
  s.head_dim = kHeadDim;
  s.segment_index = 3;
  s.token_offset = 4000;
  s.pending_tokens = {1, 2, 3};
  std::normal_distribution<float> normal;
  for (int h = 0; h < 4; ++h) {
    engine::HeadMemorySnapshot& head = s.heads.emplace_back();
    for (int64_t p = 0; p < 3000; ++p) {
      head.positions.push_back(p);
      head.scores.push_back(normal(rng));
      for (int64_t e = 0; e < kHeadDim; ++e) {
        head.keys.push_back(normal(rng));
        head.values.push_back(normal(rng));
      }
    }
  }
  checkpoint.document_tokens_consumed = 4003;
  std::vector<engine::ArchivedBlock> blocks;
  for (int b = 0; b < 50; ++b) blocks.push_back(RandomBlock(&rng, 16, b));
  constexpr int64_t kPartBytes = 64 << 10;
  const EncodedCheckpoint encoded = EncodeCheckpoint(5, checkpoint, blocks, kHeadDim, kPartBytes);
  ASSERT_GT(encoded.parts.size(), 3u);
  CheckpointAssembler assembler(kHeadDim);
  for (size_t i = 0; i < encoded.parts.size(); ++i) {
    const v1::CheckpointPart& part = encoded.parts[i];
    EXPECT_LE(static_cast<int64_t>(part.ByteSizeLong()), kPartBytes + 1024);
    EXPECT_EQ(part.last(), i + 1 == encoded.parts.size());
    EXPECT_EQ(part.sequence(), 5);
    ASSERT_TRUE(assembler.Add(part).ok());
  }
  EXPECT_FALSE(assembler.Add(encoded.parts.back()).ok());  // nothing after the last part
  ASSERT_TRUE(assembler.complete());
  EXPECT_EQ(assembler.blocks().size(), blocks.size());
  auto decoded = assembler.Checkpoint();
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(cache::ContentHash(decoded->memory), cache::ContentHash(s));
  EXPECT_EQ(decoded->document_tokens_consumed, 4003);
}

}  // namespace
}  // namespace longread::worker
