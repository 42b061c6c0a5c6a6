#pragma once
namespace longread::engine {
class SafetensorsFile {};
}  // namespace longread::engine
