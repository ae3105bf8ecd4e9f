// errors.h: the engine's typed error. Every failure that a user can cause (bad input, bad model,
// missing device, out of memory, use after dispose) is thrown as step::Error with a stable code; the
// addon turns it into a JavaScript error class with the same code (lib/errors.ts).
#pragma once
#include <stdexcept>
#include <string>

namespace step {

enum class ErrorCode { kBadInput, kBadModel, kDeviceUnavailable, kOutOfMemory, kDisposed, kInternal };

inline const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kBadInput: return "ERR_STEP_BAD_INPUT";
    case ErrorCode::kBadModel: return "ERR_STEP_BAD_MODEL";
    case ErrorCode::kDeviceUnavailable: return "ERR_STEP_DEVICE_UNAVAILABLE";
    case ErrorCode::kOutOfMemory: return "ERR_STEP_OUT_OF_MEMORY";
    case ErrorCode::kDisposed: return "ERR_STEP_DISPOSED";
    case ErrorCode::kInternal: return "ERR_STEP_INTERNAL";
  }
  return "ERR_STEP_INTERNAL";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

// Values that left float32's range during a forward (NaN or infinity where every input and weight is
// finite): a weight, bias or normalisation too large, or inputs far outside the normalised range.
// kBadModel by default; the caller, which knows the inputs, may name them instead (kBadInput).
class NonFiniteError : public Error {
 public:
  explicit NonFiniteError(const std::string& where)
      : Error(ErrorCode::kBadModel, "the " + where + " are not finite (NaN or infinity): the computation overflowed float32"),
        where_(where) {}
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

// True when all n values are finite (no NaN, no infinity).
inline bool all_finite(const float* p, size_t n) {
  float acc = 0.f;  // x * 0 is NaN exactly for NaN and infinity: one pass, no branch per value
  for (size_t i = 0; i < n; ++i) acc += p[i] * 0.f;
  return acc == 0.f;
}

// Throws a kInternal error when a condition that the engine itself guarantees does not hold.
#define STEP_CHECK(cond, msg)                                                              \
  do {                                                                                     \
    if (!(cond)) throw ::step::Error(::step::ErrorCode::kInternal, std::string(msg) +      \
                                     " (" #cond " failed at " __FILE__ ")");               \
  } while (0)

}  // namespace step
