// The public longread.v1.JobService over the Coordinator: request validation, authentication,
// the SubmitJob stream parser (inline chunks, server paths, repositories), and WatchJob as a
// callback reactor that holds at most one event per watcher in memory (a slow client waits on
// gRPC flow control while its events stay in the log).
#pragma once

#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "longread/v1/job_service.grpc.pb.h"
#include "services/common/auth.h"
#include "services/coordinator/coordinator.h"

namespace longread::coordinator {

struct JobServiceOptions {
  std::vector<std::string> path_roots;
  std::string spool_dir;       // inline tar archives are spooled here to be read in path order
  bool accept_binary = false;  // embedded mode: see IngestLimits::accept_binary
};

class JobServiceImpl final
    : public v1::JobService::WithCallbackMethod_WatchJob<v1::JobService::Service> {
 public:
  JobServiceImpl(Coordinator* coordinator, const engine::Tokenizer* tokenizer,
                 const services::TokenAuthenticator* auth, JobServiceOptions options);

  grpc::Status SubmitJob(grpc::ServerContext* context,
                         grpc::ServerReader<v1::SubmitJobRequest>* reader,
                         v1::SubmitJobResponse* response) override;
  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* context,
                                                   const v1::WatchJobRequest* request) override;
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                         v1::Job* response) override;

 private:
  Coordinator* coordinator_;
  const engine::Tokenizer* tokenizer_;
  const services::TokenAuthenticator* auth_;
  const JobServiceOptions options_;
};

// Fills the server's defaults (those of `longread run`) and checks ranges. INVALID_ARGUMENT.
absl::Status ResolveJobOptions(v1::JobOptions* options);
absl::Status ValidateTask(v1::Task* task);

}  // namespace longread::coordinator
