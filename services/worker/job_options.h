// The coordinator's resolved job options (proto) as the engine's document job options. Zeros
// still left mean `longread run`'s defaults, so both paths read a document the same way.
#pragma once

#include "absl/status/statusor.h"
#include "engine/job/document_job.h"
#include "longread/v1/worker_service.pb.h"

namespace longread::worker {

// InvalidArgument for an unknown task, a question task without a question, or an option out of
// range. The archive is left unset.
absl::StatusOr<engine::DocumentJobOptions> ToDocumentJobOptions(
    const v1::DocumentAssignment& assignment);

}  // namespace longread::worker
