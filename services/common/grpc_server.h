// What every Longread gRPC server and client shares: credentials from flags (TLS, mutual TLS),
// the standard health service, server reflection, message size limits, and a server interceptor
// that counts every finished RPC by code (longread_grpc_server_handled_total).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace longread::services {

class Metrics;

// Files in PEM. cert + key: serve TLS; client_ca too: require and verify client certificates
// (mutual TLS). All empty: plaintext (loopback development).
struct ServerTlsFiles {
  std::string cert;
  std::string key;
  std::string client_ca;
};

// The client side: ca verifies the server (empty: the system roots); cert + key present a client
// certificate (mutual TLS). use_tls false: plaintext.
struct ClientTlsFiles {
  bool use_tls = false;
  std::string ca;
  std::string cert;
  std::string key;
  // Overrides the name checked against the server certificate (tests with a loopback address).
  std::string server_name_override;
};

inline constexpr int kDefaultMaxMessageBytes = 16 << 20;

struct GrpcServerOptions {
  std::string listen = "0.0.0.0:50051";  // port 0: pick one, see GrpcServer::port()
  ServerTlsFiles tls;
  int max_message_bytes = kDefaultMaxMessageBytes;
  // Full service names reported SERVING by grpc.health.v1.Health (besides "").
  std::vector<std::string> health_service_names;
  Metrics* metrics = nullptr;  // counts handled RPCs when set
};

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsFiles& tls);
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ClientTlsFiles& tls);

// A channel to `target` with our message limits and keepalive (a dead peer is noticed within
// seconds even when no RPC is sending).
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    const std::string& target, const ClientTlsFiles& tls,
    int max_message_bytes = kDefaultMaxMessageBytes);

class GrpcServer {
 public:
  // Registers `services` (not owned; they must outlive the server), health and reflection, and
  // starts listening. UNAVAILABLE when the address cannot be bound; INVALID_ARGUMENT for
  // unreadable TLS files.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(
      const GrpcServerOptions& options, const std::vector<grpc::Service*>& services);
  ~GrpcServer();

  int port() const { return port_; }
  grpc::Server* server() { return server_.get(); }

  // NOT_SERVING while draining: load balancers and the coordinator stop sending work.
  void SetServing(bool serving);
  // Stops accepting calls; in-flight calls get until `deadline` to finish, then are cancelled.
  void Shutdown(absl::Duration grace);
  void Wait();

 private:
  GrpcServer() = default;

  std::unique_ptr<grpc::Server> server_;
  std::vector<std::string> health_names_;
  int port_ = 0;
  bool shut_down_ = false;
};

// Reads a whole (small) file: TLS material, token lists. NOT_FOUND / INVALID_ARGUMENT.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path);

}  // namespace longread::services
