#include "io/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/errors.h"
#include "tensor/dtype.h"

namespace tc {

namespace {

// A file read with pread(): copies go straight from the file into tensor memory. No mapping is
// kept, so a file truncated or replaced while it is read gives an error (a short read), never SIGBUS.
class ReadFile {
 public:
  explicit ReadFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw FormatError(path, std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw FormatError(path, std::string("cannot stat: ") + std::strerror(errno));
    size_ = static_cast<uint64_t>(st.st_size);
    ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);
  }
  ~ReadFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  ReadFile(const ReadFile&) = delete;
  ReadFile& operator=(const ReadFile&) = delete;

  uint64_t size() const { return size_; }

  // Reads exactly `bytes` at `offset` into `into`; what the file no longer holds is a FormatError.
  void read(uint64_t offset, uint64_t bytes, void* into, const std::string& tensor) const {
    auto* out = static_cast<uint8_t*>(into);
    uint64_t done = 0;
    while (done < bytes) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(bytes - done, uint64_t(1) << 30));
      ssize_t n = ::pread(fd_, out + done, chunk, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw FormatError(path_, "cannot read tensor '" + tensor + "': " + std::strerror(errno));
      if (n == 0)
        throw FormatError(path_, "tensor '" + tensor + "' ends at byte " + std::to_string(offset + bytes) +
                                     " but the file ended at byte " + std::to_string(offset + done) +
                                     " (truncated or changed while it was read)");
      done += static_cast<uint64_t>(n);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace

std::map<std::string, at::Tensor> loadSafetensors(const std::string& path, uint64_t dataStart,
                                                  const std::vector<SafetensorsEntry>& entries) {
  ReadFile file(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& e : entries) {
    c10::ScalarType type = dtypeFromSafetensors(e.dtype);
    int64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0) throw FormatError(path, "tensor '" + e.name + "' has a negative dimension");
      numel *= d;
    }
    uint64_t bytes = static_cast<uint64_t>(numel) * c10::elementSize(type);
    if (e.end < e.begin || e.end - e.begin != bytes)
      throw FormatError(path, "tensor '" + e.name + "': data_offsets [" + std::to_string(e.begin) + ", " +
                                  std::to_string(e.end) + ") do not hold " + std::to_string(bytes) + " bytes");
    if (dataStart + e.end > file.size())
      throw FormatError(path, "tensor '" + e.name + "' ends at byte " + std::to_string(dataStart + e.end) +
                                  " but the file has " + std::to_string(file.size()) + " bytes (truncated?)");
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(type));
    if (bytes > 0) file.read(dataStart + e.begin, bytes, t.data_ptr(), e.name);
    out.emplace(e.name, std::move(t));
  }
  return out;
}

}  // namespace tc
