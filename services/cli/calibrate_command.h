// `longread calibrate`: fits the SparseK scorer weights of a model on a text corpus by least
// squares against dense attention (engine/calibrate/) and writes the weights file.
#pragma once

namespace longread::services {

// argv[0] is the program, argv[1] "calibrate"; options follow. Returns the process exit code
// (the codes of `longread --help`).
int RunCalibrateCommand(int argc, char** argv);

}  // namespace longread::services
