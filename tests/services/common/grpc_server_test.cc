// --health-listen: a second, plaintext port that answers grpc.health.v1.Health as the main server
// does (Kubernetes' grpc probes speak no TLS), NOT_SERVING once the server stops serving.
#include "services/common/grpc_server.h"

#include <gtest/gtest.h>

#include <future>

#include "absl/strings/str_cat.h"
#include "grpcpp/generic/generic_stub.h"

namespace longread::services {
namespace {

// grpc.health.v1.HealthCheckResponse.ServingStatus
constexpr int kServing = 1;
constexpr int kNotServing = 2;

// Health/Check by hand (the generated health stub is not installed): the request is field 1,
// the service name; the response is field 1, the status as a varint. Returns the status, or
// -(gRPC code) when the call fails.
int CheckHealth(int port, const std::string& service) {
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1), response_buffer;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                 &response_buffer, [&done](grpc::Status s) { done.set_value(s); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) return -static_cast<int>(status.error_code());
  std::vector<grpc::Slice> slices;
  if (!response_buffer.Dump(&slices).ok()) return -1;
  std::string response;
  for (const grpc::Slice& s : slices) response.append(s.begin(), s.end());
  if (response.empty()) return 0;  // UNKNOWN is the default, left out on the wire
  if (response.size() != 2 || response[0] != 0x08) return -1;
  return response[1];
}

TEST(GrpcServerTest, HealthPortReportsWhatTheMainServerReports) {
  GrpcServerOptions options;
  options.listen = "127.0.0.1:0";
  options.health_listen = "127.0.0.1:0";
  options.health_service_names = {"longread.v1.WorkerService"};
  auto server = GrpcServer::Start(options, {});
  ASSERT_TRUE(server.ok()) << server.status();
  const int health_port = (*server)->health_port();
  ASSERT_GT(health_port, 0);
  EXPECT_NE(health_port, (*server)->port());

  for (int port : {(*server)->port(), health_port}) {
    EXPECT_EQ(CheckHealth(port, ""), kServing) << port;
    EXPECT_EQ(CheckHealth(port, "longread.v1.WorkerService"), kServing) << port;
    EXPECT_EQ(CheckHealth(port, "longread.v1.Unknown"), -grpc::StatusCode::NOT_FOUND) << port;
  }

  // Draining: readiness probes on either port see NOT_SERVING.
  (*server)->SetServing(false);
  for (int port : {(*server)->port(), health_port}) {
    EXPECT_EQ(CheckHealth(port, ""), kNotServing) << port;
    EXPECT_EQ(CheckHealth(port, "longread.v1.WorkerService"), kNotServing) << port;
  }
  (*server)->Shutdown(absl::Seconds(1));
}

TEST(GrpcServerTest, WithoutHealthListenThereIsNoHealthPort) {
  GrpcServerOptions options;
  options.listen = "127.0.0.1:0";
  auto server = GrpcServer::Start(options, {});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->health_port(), 0);
}

TEST(GrpcServerTest, AnUnusableHealthAddressFailsTheStart) {
  GrpcServerOptions options;
  options.listen = "127.0.0.1:0";
  options.health_listen = "256.0.0.1:1";
  auto server = GrpcServer::Start(options, {});
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable) << server.status();
}

}  // namespace
}  // namespace longread::services
