// Error vocabulary of the native core (pure C++: no Node). bindings/js_errors.h translates these
// into JS Error subclasses.
#pragma once
#include <stdexcept>
#include <string>

namespace tc {

// Bad input from the caller (ids out of range, wrong shapes, unknown names) -> JS InvalidArgumentError.
struct InvalidArgument : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A file that does not parse or does not hold what it claims -> JS FormatError (with .file).
struct FormatError : std::runtime_error {
  FormatError(std::string file, const std::string& message)
      : std::runtime_error(file + ": " + message), file(std::move(file)) {}
  std::string file;
};

// A loss, gradient or weight became NaN or infinite -> JS NumericalError.
struct NonFinite : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace tc
