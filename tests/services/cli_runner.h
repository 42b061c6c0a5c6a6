// Runs the real `longread` binary (built next to the tests) on a short document with the default
// model, capturing exit code, stdout and stderr.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace longread::services::testing {

inline std::string SourceDir() {
  const char* dir = std::getenv("LONGREAD_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

inline std::string ModelPath() { return SourceDir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"; }

inline bool HaveModel() { return std::filesystem::exists(ModelPath()); }

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Varied prose, ~550 tokens, with one fact in the first paragraph: long enough that the memory of
// the recall options below evicts blocks, short enough for a few seconds of reading.
inline std::string SmallDocument() {
  return "Harbor log, spring. The lighthouse keeper Mirela Vos wrote in her notebook that the code "
         "of the east storeroom is 7351, and that nobody else was to be told.\n\n"
         "The town of Kessel lies where two rivers meet. Its market opens at dawn on Tuesdays and "
         "sells salted fish, wool, copper pots and bread baked in stone ovens. Merchants from the "
         "hill villages bring cheese wrapped in cloth and honey in clay jars.\n\n"
         "Permission is hereby granted, free of charge, to any person obtaining a copy of this "
         "software and associated documentation files, to deal in the software without "
         "restriction, including without limitation the rights to use, copy, modify, merge, "
         "publish and distribute copies of the software, subject to the following conditions.\n\n"
         "int main(int argc, char** argv) {\n  for (int i = 1; i < argc; ++i) {\n    "
         "std::printf(\"%s\\n\", argv[i]);\n  }\n  return 0;\n}\n\n"
         "The winter of that year was long. Snow closed the mountain pass in November and the "
         "mail coach stopped running until March. Children skated on the frozen mill pond while "
         "their parents cut ice blocks for the summer cellars.\n\n"
         "To configure the network interface, edit the file /etc/network/interfaces and add a "
         "stanza for each device. The auto keyword brings the interface up at boot; the dhcp "
         "method asks a server on the local network for an address.\n\n"
         "In the autumn the orchards turn red and gold. Apples are pressed into cider in wooden "
         "presses that have been used for three generations, and the first barrel is always "
         "opened at the harvest festival in the square by the old church.\n\n"
         "The committee met on the fourth floor and discussed the budget for the new bridge. "
         "Engineers proposed steel girders, while the mayor preferred a stone arch that would "
         "match the rest of the old town. No decision was reached before midnight.\n\n"
         "Fishing boats leave the harbor before sunrise and return in the afternoon with cod, "
         "herring and sometimes a tuna. Gulls follow them all the way into the bay, crying over "
         "the nets as the crews sort the catch on deck.\n";
}

struct CliResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs `longread run` with `args` on the FILE argument `input` (a path, or - for stdin);
// `shell_prefix` runs first in the same shell (limits, signal dispositions, a pipe into stdin).
inline CliResult RunLongreadOn(const std::string& work_dir, const std::string& input,
                               const std::vector<std::string>& args,
                               const std::string& shell_prefix = "") {
  auto quote = [](const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
  };
  // Recall is on by default: each test gets its own cache (the user's is never touched, and
  // parallel tests never wait on one another's lock).
  std::string command =
      absl::StrCat(shell_prefix, "XDG_CACHE_HOME=", quote(work_dir + "/xdg-cache"), " ",
                   quote(LONGREAD_BINARY), " run --model ", quote(ModelPath()), " --threads 2");
  for (const std::string& a : args) absl::StrAppend(&command, " ", quote(a));
  const std::string out = work_dir + "/stdout", err = work_dir + "/stderr";
  absl::StrAppend(&command, " ", quote(input), " >", quote(out), " 2>", quote(err));
  CliResult result;
  const int status = std::system(command.c_str());
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = ReadFile(out);
  result.err = ReadFile(err);
  return result;
}

// Runs `longread run` with `args` on `document` (written under `work_dir`).
inline CliResult RunLongread(const std::string& work_dir, const std::string& document,
                             const std::vector<std::string>& args,
                             const std::string& shell_prefix = "") {
  const std::string doc = work_dir + "/document.txt";
  std::ofstream(doc, std::ios::binary) << document;
  return RunLongreadOn(work_dir, doc, args, shell_prefix);
}

// The recall configuration of the end-to-end check: small memory, blocks of 32.
inline std::vector<std::string> RecallArgs(const std::string& cache_dir) {
  return {
      "--task",           "question", "--question",      "What is the code of the east storeroom?",
      "--block-tokens",   "32",       "--recall-blocks", "2",
      "--memory-k",       "64",       "--window",        "64",
      "--segment-tokens", "128",      "--max-tokens",    "16",
      "--json",           "--quiet",  "--cache-dir",     cache_dir};
}

// The integer after "key": in a one-line JSON object; -1 if absent.
inline long long JsonInt(const std::string& json, const std::string& key) {
  const std::string needle = "\"" + key + "\":";
  const size_t at = json.find(needle);
  if (at == std::string::npos) return -1;
  return std::atoll(json.c_str() + at + needle.size());
}

}  // namespace longread::services::testing
