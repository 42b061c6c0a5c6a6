// Reads the document a user names: a regular file (its size checked before reading), or a stream
// (stdin as "-", a pipe, a FIFO, a character device) read up to the byte limit as it comes.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace longread::services {

// The whole document. Errors, each with a message that says what is wrong with the input:
// NotFound / PermissionDenied (cannot be opened), FailedPrecondition (a directory, or a kind of
// file that is not a document), ResourceExhausted (more than `max_bytes`; a stream is never read
// beyond max_bytes + 1 bytes).
absl::StatusOr<std::string> ReadDocumentInput(const std::string& path, int64_t max_bytes);

}  // namespace longread::services
