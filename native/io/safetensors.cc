#include "io/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/errors.h"
#include "tensor/dtype.h"

namespace tc {

namespace {

// RAII read-only private mapping of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw FormatError(path, std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw FormatError(path, std::string("cannot stat: ") + std::strerror(errno));
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ == 0) return;
    data_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (data_ == MAP_FAILED) {
      data_ = nullptr;
      throw FormatError(path, std::string("cannot mmap: ") + std::strerror(errno));
    }
    ::madvise(data_, size_, MADV_SEQUENTIAL);
  }
  ~MappedFile() {
    if (data_) ::munmap(data_, size_);
    if (fd_ >= 0) ::close(fd_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return static_cast<const uint8_t*>(data_); }
  uint64_t size() const { return size_; }

 private:
  std::string path_;
  int fd_ = -1;
  void* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace

std::map<std::string, at::Tensor> loadSafetensors(const std::string& path, uint64_t dataStart,
                                                  const std::vector<SafetensorsEntry>& entries) {
  MappedFile file(path);
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
    if (bytes > 0) std::memcpy(t.data_ptr(), file.data() + dataStart + e.begin, bytes);
    out.emplace(e.name, std::move(t));
  }
  return out;
}

}  // namespace tc
