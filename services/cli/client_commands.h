// `longread submit | watch | get | cancel | list`: the clients of a coordinator's public
// longread.v1.JobService (docs/SERVICE.md, proto/README.md).
#pragma once

#include <string_view>

namespace longread::services {

bool IsClientCommand(std::string_view command);
// The --help text of a client command (empty for any other name).
std::string_view ClientCommandHelp(std::string_view command);
// argv[1] is the command. Returns the process exit code (documented in the help texts).
int RunClientCommand(int argc, char** argv);

}  // namespace longread::services
