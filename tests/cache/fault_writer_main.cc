// Fault-test child: opens the cache at argv[1], resumes the fault document from its latest
// snapshot, and writes snapshots of ever-increasing segment_index until killed (or, with a count
// in argv[3], until that many are written, then exits without closing the database, as a crash
// would). argv[2] picks the path: "store" (SnapshotStore::Put) or "writer" (SnapshotWriter).
// Writes one byte to stdout once the database is open, so the parent can time its kill.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "cache/snapshot_store.h"
#include "cache/snapshot_writer.h"
#include "tests/cache/fault_shape.h"

namespace longread::cache {
namespace {

int Main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s <db> store|writer [count]\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[2];
  const int64_t count = argc > 3 ? std::atoll(argv[3]) : -1;
  absl::StatusOr<std::unique_ptr<CacheDb>> db = CacheDb::Open(argv[1], FaultDbOptions());
  if (!db.ok()) {
    std::fprintf(stderr, "open: %s\n", std::string(db.status().message()).c_str());
    return 3;
  }
  SnapshotStore store(db->get());
  const SyntheticShape shape = FaultShape();
  ResumePoint resume =
      GetLatestOrRestart(store, kFaultDocId, {shape.model_fingerprint, shape.config_hash});
  if (!resume.refused.ok()) {
    std::fprintf(stderr, "resume: %s\n", std::string(resume.refused.message()).c_str());
    return 4;
  }
  const int64_t start = resume.snapshot ? resume.snapshot->segment_index : 0;
  SyntheticDocument doc(shape);
  doc.AdvanceTo(start);
  if (write(STDOUT_FILENO, "r", 1) != 1) return 5;
  const absl::Time ready_at = absl::Now();
  const bool verbose = std::getenv("LONGREAD_FAULT_VERBOSE") != nullptr;
  if (verbose) {
    std::fprintf(stderr, "resumed at segment %lld\n", static_cast<long long>(start));
  }

  std::unique_ptr<SnapshotWriter> writer;
  if (mode == "writer") writer = std::make_unique<SnapshotWriter>(&store);
  for (int64_t seg = start + 1; count < 0 || seg <= start + count; ++seg) {
    doc.AdvanceTo(seg);
    if (writer) {
      writer->Offer(kFaultDocId, doc.Snapshot());
    } else if (absl::StatusOr<PutResult> put = store.Put(kFaultDocId, doc.Snapshot()); !put.ok()) {
      std::fprintf(stderr, "put: %s\n", std::string(put.status().message()).c_str());
      return 6;
    }
    if (verbose && seg < start + 4) {
      std::fprintf(stderr, "segment %lld offered/written at +%.1f ms\n",
                   static_cast<long long>(seg), absl::ToDoubleMilliseconds(absl::Now() - ready_at));
    }
  }
  if (writer && !writer->Flush().ok()) return 7;
  std::fflush(stderr);
  _exit(0);  // no clean close: the database is left as a crash would leave it
}

}  // namespace
}  // namespace longread::cache

int main(int argc, char** argv) { return longread::cache::Main(argc, argv); }
