#include "services/cli/progress_bar.h"

#include <unistd.h>

#include <cstdio>

namespace longread::services {

ProgressBar::ProgressBar(std::string label, std::string unit, bool enabled, std::FILE* out)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      enabled_(enabled),
      out_(out),
      tty_(isatty(fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()) {}

void ProgressBar::Update(int64_t done, int64_t total, double rate) {
  if (!enabled_ || finished_ || total <= 0) return;
  done_ = done;
  total_ = total;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double fraction = static_cast<double>(done) / static_cast<double>(total);
  // A bar created mid-document (a watcher) cannot time the work it did not see: its caller
  // passes the rate measured where the work ran. A one-segment document has a single update, at
  // its end, so no rate may wait for a second one.
  if (rate < 0) rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total - done) / rate : 0.0;
  if (tty_) {
    if (done < total && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(filled, '#');
    bar.append(kWidth - filled, '.');
    std::fprintf(out_, "\r%s [%s] %3d%% %lld/%lld %s  %.0f %s/s  ETA %d:%02d ", label_.c_str(),
                 bar.c_str(), static_cast<int>(fraction * 100), static_cast<long long>(done),
                 static_cast<long long>(total), unit_.c_str(), rate, unit_.c_str(),
                 static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
  } else {
    const int decile = static_cast<int>(fraction * 10);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(out_, "%s %3d%% %lld/%lld %s  %.0f %s/s  ETA %d:%02d\n", label_.c_str(),
                 decile * 10, static_cast<long long>(done), static_cast<long long>(total),
                 unit_.c_str(), rate, unit_.c_str(), static_cast<int>(eta) / 60,
                 static_cast<int>(eta) % 60);
  }
  std::fflush(out_);
}

void ProgressBar::Finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  if (tty_) std::fprintf(out_, "\n");
}

}  // namespace longread::services
