// ModelFile over a Hugging Face directory written by the test.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "engine/model_files/model_file.h"
#include "tests/engine/model_files/hf_fixtures.h"

namespace longread::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::TinyHf;
using testing::WriteTinyHfDir;

class HfModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("hf_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(HfModelTest, OpensSingleFileModel) {
  WriteTinyHfDir(dir_);
  auto model = ModelFile::Open(dir_.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->format(), "safetensors");
  EXPECT_EQ((*model)->config().n_layers, 1);
  EXPECT_EQ((*model)->config().rope_style, RopeStyle::kHalf);
  EXPECT_TRUE((*model)->config().tie_embeddings);
  EXPECT_EQ((*model)->tokenizer().pre, "smollm");
  EXPECT_EQ((*model)->tokenizer().bos_id, 1);  // from config.json
  auto q = (*model)->Tensor("blk.0.attn_q.weight");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->type, kernels::DType::kBF16);
  EXPECT_EQ(q->dims, (std::vector<int64_t>{32, 32}));
  auto k = (*model)->Tensor("blk.0.attn_k.weight");
  EXPECT_EQ(k->dims, (std::vector<int64_t>{32, 16}));  // HF [16, 32] reversed
  EXPECT_EQ(k->bytes, 32u * 16 * 2);
  EXPECT_EQ(k->matrix().rows, 16);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(k->data) % 2, 0u);
  EXPECT_EQ((*model)->fingerprint().size(), 32u);
  EXPECT_THAT((*model)->Describe(), HasSubstr("safetensors, 1 file"));
}

TEST_F(HfModelTest, ShardedQwenWithHead) {
  TinyHf o;
  o.model_type = "qwen2";
  o.tie = false;
  o.layers = 2;
  o.dtype = "F32";
  WriteTinyHfDir(dir_, o, 3);
  auto model = ModelFile::Open(dir_.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->config().attn_qkv_bias);
  EXPECT_FALSE((*model)->config().tie_embeddings);
  EXPECT_TRUE((*model)->Tensor("output.weight").ok());
  EXPECT_EQ((*model)->Tensor("blk.1.attn_v.bias")->type, kernels::DType::kF32);
  EXPECT_THAT((*model)->Describe(), HasSubstr("3 shards"));
}

TEST_F(HfModelTest, FingerprintCoversWeightsAndConfig) {
  WriteTinyHfDir(dir_);
  std::string before = (*ModelFile::Open(dir_.string()))->fingerprint();
  auto json = testing::TinyHfConfig();
  json["rope_theta"] = 50000.0;
  testing::WriteFile(dir_ / "config.json", json.dump());
  std::string after = (*ModelFile::Open(dir_.string()))->fingerprint();
  EXPECT_NE(before, after);
}

TEST_F(HfModelTest, ErrorsNameWhatIsWrong) {
  WriteTinyHfDir(dir_);
  fs::remove(dir_ / "model.safetensors");
  EXPECT_THAT(std::string(ModelFile::Open(dir_.string()).status().message()),
              HasSubstr("model.safetensors"));
  fs::remove_all(dir_);
  TinyHf o;
  o.dtype = "F32";
  WriteTinyHfDir(dir_, o);
  auto config = testing::TinyHfConfig(o);
  config["intermediate_size"] = 48;
  testing::WriteFile(dir_ / "config.json", config.dump());
  EXPECT_THAT(std::string(ModelFile::Open(dir_.string()).status().message()),
              HasSubstr("tensor 'blk.0.ffn_gate.weight' has dims {32, 64}"));
  config = testing::TinyHfConfig(o);
  config["tie_word_embeddings"] = false;
  testing::WriteFile(dir_ / "config.json", config.dump());
  EXPECT_THAT(std::string(ModelFile::Open(dir_.string()).status().message()),
              HasSubstr("'output.weight' is missing"));
}

TEST_F(HfModelTest, UncomputableDtypeReportedWhenRequested) {
  WriteTinyHfDir(dir_);
  testing::WriteFile(dir_ / "model.safetensors", testing::SafetensorsBytes([] {
                       auto t = testing::TinyHfTensors();
                       t.push_back({"model.layers.0.extra", "I32", {4}, 4});
                       return t;
                     }()));
  auto model = ModelFile::Open(dir_.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->Tensor("model.layers.0.extra").status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(HfModelTest, IndexMayNotEscapeTheDirectory) {
  WriteTinyHfDir(dir_, {}, 2);
  testing::WriteFile(dir_ / "model.safetensors.index.json",
                     R"({"weight_map": {"model.norm.weight": "../x.safetensors"}})");
  EXPECT_THAT(std::string(ModelFile::Open(dir_.string()).status().message()),
              HasSubstr("is not a .safetensors file name"));
}

}  // namespace
}  // namespace longread::engine
