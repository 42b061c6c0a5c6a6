#include "services/common/auth.h"

#include <gtest/gtest.h>

#include "services/common/metrics.h"

namespace longread::services {
namespace {

TEST(TokenAuthenticatorTest, ParsesRolesAndRejectsMalformedLines) {
  auto auth = TokenAuthenticator::FromText("# tokens\nabc read\n\n  def   write  # admin\n");
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE((*auth)->enabled());
  EXPECT_FALSE(TokenAuthenticator::FromText("abc admin\n").ok());
  EXPECT_FALSE(TokenAuthenticator::FromText("abc\n").ok());
  EXPECT_FALSE(TokenAuthenticator::FromText("# nothing\n").ok());
  EXPECT_FALSE(TokenAuthenticator::Disabled()->enabled());
}

TEST(TokenAuthenticatorTest, PrincipalHidesTheToken) {
  const std::string principal = TokenPrincipal("secret-token-value");
  EXPECT_EQ(principal.find("secret"), std::string::npos);
  EXPECT_EQ(principal, TokenPrincipal("secret-token-value"));
  EXPECT_NE(principal, TokenPrincipal("secret-token-valuf"));
}

TEST(MetricsTest, CodeNamesAndBuckets) {
  EXPECT_EQ(GrpcCodeName(0), "OK");
  EXPECT_EQ(GrpcCodeName(8), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(GrpcCodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(GrpcCodeName(99), "UNKNOWN");
  const auto buckets = Metrics::SecondsBuckets(0.01, 120, 2);
  EXPECT_DOUBLE_EQ(buckets.front(), 0.01);
  EXPECT_LE(buckets.back(), 120);
  EXPECT_GT(buckets.back(), 60);
}

TEST(MetricsTest, CountsHandledRpcsByServiceMethodAndCode) {
  auto metrics = Metrics::Start({});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  (*metrics)->RecordHandled("/longread.v1.JobService/GetJob", 5);
  (*metrics)->RecordHandled("/longread.v1.JobService/GetJob", 5);
  bool found = false;
  for (const auto& family : (*metrics)->registry().Collect()) {
    if (family.name != "longread_grpc_server_handled_total") continue;
    for (const auto& metric : family.metric) {
      std::map<std::string, std::string> labels;
      for (const auto& l : metric.label) labels[l.name] = l.value;
      if (labels["grpc_service"] == "longread.v1.JobService" && labels["grpc_method"] == "GetJob" &&
          labels["grpc_code"] == "NOT_FOUND") {
        EXPECT_EQ(metric.counter.value, 2);
        found = true;
      }
    }
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace longread::services
