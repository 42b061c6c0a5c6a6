#include "services/cli/progress_bar.h"

#include <unistd.h>

#include <cstdio>

namespace longread::services {

ProgressBar::ProgressBar(std::string label, std::string unit, bool enabled)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      enabled_(enabled),
      tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()) {}

void ProgressBar::Update(int64_t done, int64_t total) {
  if (!enabled_ || finished_ || total <= 0) return;
  done_ = done;
  total_ = total;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double fraction = static_cast<double>(done) / static_cast<double>(total);
  // A bar created mid-document has no rate until some time has passed.
  const double rate = elapsed > 0.5 ? static_cast<double>(done) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total - done) / rate : 0.0;
  if (tty_) {
    if (done < total && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(filled, '#');
    bar.append(kWidth - filled, '.');
    std::fprintf(stderr, "\r%s [%s] %3d%% %lld/%lld %s  %.0f %s/s  ETA %d:%02d ", label_.c_str(),
                 bar.c_str(), static_cast<int>(fraction * 100), static_cast<long long>(done),
                 static_cast<long long>(total), unit_.c_str(), rate, unit_.c_str(),
                 static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
  } else {
    const int decile = static_cast<int>(fraction * 10);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s %3d%% %lld/%lld %s  %.0f %s/s  ETA %d:%02d\n", label_.c_str(),
                 decile * 10, static_cast<long long>(done), static_cast<long long>(total),
                 unit_.c_str(), rate, unit_.c_str(), static_cast<int>(eta) / 60,
                 static_cast<int>(eta) % 60);
  }
  std::fflush(stderr);
}

void ProgressBar::Finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  if (tty_) std::fprintf(stderr, "\n");
}

}  // namespace longread::services
