// libFuzzer entry point; the body lives in fuzz_targets.cc so unit tests can replay seeds.
#include <cstddef>
#include <cstdint>

#include "tests/fuzz/fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  longread::fuzz::FuzzGguf(data, size);
  return 0;
}
