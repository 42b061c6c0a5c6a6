// Structured logs on stderr: one JSON object per line (--log-format=json, for collectors) or a
// short human line (default on a terminal). Stdout stays for results.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace longread::services {

enum class LogFormat { kText, kJson };
enum class LogLevel { kDebug, kInfo, kWarning, kError };

void SetLogFormat(LogFormat format);
void SetMinLogLevel(LogLevel level);

// Log(kInfo, "model_loaded", {{"layers", "30"}, {"file", path}})
void Log(LogLevel level, std::string_view event,
         std::initializer_list<std::pair<std::string_view, std::string>> fields = {});

}  // namespace longread::services
