"""Minimal, independent safetensors reader and writer (torch + numpy only).

File layout:
    8 bytes   little-endian u64 N, the header length
    N bytes   UTF-8 JSON: {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}
              plus an optional "__metadata__": {str: str}
    rest      the tensor bytes, little-endian, offsets relative to the byte after the header

The reader is deliberately strict (sizes must match shapes, tensors must tile the data
section exactly) so that it also catches malformed files written by the code under test.
"""

import json
import struct

import numpy as np
import torch

# safetensors dtype code -> (little-endian numpy dtype of the stored bytes, torch dtype).
# BF16 has no numpy dtype: its bytes are read as int16 and reinterpreted with .view().
DTYPES = {
    "F64": ("<f8", torch.float64),
    "F32": ("<f4", torch.float32),
    "F16": ("<f2", torch.float16),
    "BF16": ("<i2", torch.bfloat16),
    "I64": ("<i8", torch.int64),
    "I32": ("<i4", torch.int32),
    "I16": ("<i2", torch.int16),
    "I8": ("i1", torch.int8),
    "U8": ("u1", torch.uint8),
    "BOOL": ("?", torch.bool),
}
CODE_OF_TORCH_DTYPE = {torch_dtype: code for code, (_, torch_dtype) in DTYPES.items()}


def load_file(path):
    """Read a .safetensors file into a dict of CPU tensors (each owning its memory)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if 8 + header_len > len(raw):
        raise ValueError(f"{path}: header length {header_len} exceeds file size")
    header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
    data = memoryview(raw)[8 + header_len :]

    tensors, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code, shape = info["dtype"], [int(s) for s in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        if code not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {code}")
        np_dtype, torch_dtype = DTYPES[code]
        numel = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(data) or end - begin != numel * np.dtype(np_dtype).itemsize:
            raise ValueError(f"{path}: tensor {name!r} has bad data_offsets {[begin, end]}")
        # Copy out of the file buffer (which is read-only) and convert to native byte order.
        array = np.frombuffer(data[begin:end], dtype=np_dtype, count=numel)
        array = array.astype(np.dtype(np_dtype).newbyteorder("="), copy=True).reshape(shape)
        tensor = torch.from_numpy(array)
        tensors[name] = tensor.view(torch.bfloat16) if code == "BF16" else tensor
        spans.append((begin, end))

    # The format forbids holes and overlaps: the tensors must tile the data section exactly.
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise ValueError(f"{path}: data section has a hole or overlap at byte {position}")
        position = end
    if position != len(data):
        raise ValueError(f"{path}: {len(data) - position} trailing bytes after the last tensor")
    return tensors


def save_file(tensors, path, metadata=None):
    """Write a dict of tensors as .safetensors, laid out in sorted-name order."""
    header, chunks, offset = {}, [], 0
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in CODE_OF_TORCH_DTYPE:
            raise ValueError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
        code = CODE_OF_TORCH_DTYPE[tensor.dtype]
        np_dtype = DTYPES[code][0]
        # numpy cannot hold bfloat16, so write its raw 16-bit patterns via int16.
        source = tensor.view(torch.int16) if code == "BF16" else tensor
        chunk = source.numpy().astype(np_dtype, copy=False).tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(chunk)],
        }
        chunks.append(chunk)
        offset += len(chunk)

    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Pad with spaces so the data section starts 8-byte aligned (JSON allows trailing spaces).
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in chunks:
            f.write(chunk)
