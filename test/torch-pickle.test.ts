/**
 * The torch.save checkpoint reader against checkpoints that real PyTorch (Debian's python3-torch)
 * writes at test time: a transcoder checkpoint laid out like the paper's released GPT-2 ones (a
 * dataclass cfg from a module `sae_training.config` that only exists in the Python process, and
 * a state_dict), its `_log_feature_sparsity` companion, tensors of every dtype and view kind,
 * Python values at pickle protocols 0 to 5, zips repacked with DEFLATE and ZIP64, and broken or
 * malicious files that must fail with a FormatError without running anything.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FormatError } from '../lib/errors.js';
import { isTorchZipCheckpoint, PickleGlobal, readTorchCheckpoint, type PickledTensor } from '../lib/io/torch-pickle.js';
import { tempDir } from './helpers/fixtures.js';
import { PYTHON } from './helpers/reference.js';

/** Writes every fixture into argv[1], and expected.json with each tensor's dtype, shape and bytes. */
const FIXTURES_PY = String.raw`
import builtins, collections, json, math, os, pickle, struct, sys, zipfile
from dataclasses import dataclass, field
from typing import Any, Optional
import numpy as np
import torch

out = sys.argv[1]
pkg = os.path.join(out, "pkg", "sae_training")
os.makedirs(pkg)
open(os.path.join(pkg, "__init__.py"), "w").close()
with open(os.path.join(pkg, "config.py"), "w") as f:
    f.write('''
from dataclasses import dataclass, field
from typing import Any, Optional
import numpy as np
import torch

@dataclass
class LanguageModelSAERunnerConfig:
    model_name: str = "gpt2-small"
    hook_point: str = "blocks.8.ln2.hook_normalized"
    hook_point_layer: int = 8
    is_transcoder: bool = True
    out_hook_point: str = "blocks.8.hook_mlp_out"
    d_in: int = 8
    d_out: int = 8
    expansion_factor: int = 4
    d_sae: int = 32
    l1_coefficient: float = np.float64(1.4e-4)
    lr: float = 4e-4
    dtype: Any = torch.float32
    device: Any = torch.device("cuda")
    b_dec_init_method: str = "mean"
    flags: tuple = (False,)
    lr_schedule: list = field(default_factory=lambda: [1, 2.5])
    wandb_project: Optional[str] = None

class Plain:
    """A class pickled through copyreg._reconstructor at protocols 0 and 1."""
    def __init__(self):
        self.a = 1
        self.b = "two"

class Slotted:
    """BUILD state (None, slots) at protocols >= 2."""
    __slots__ = ("x", "y")
    def __init__(self):
        self.x, self.y = 1, "b"

class WithArgs:
    """NEWOBJ with arguments (__getnewargs__) at protocols >= 2."""
    def __new__(cls, n):
        return super().__new__(cls)
    def __init__(self, n):
        self.z = n + 1
    def __getnewargs__(self):
        return (self.z - 1,)

class WithKwargs:
    """NEWOBJ_EX at protocols >= 4."""
    def __new__(cls, n, k):
        return super().__new__(cls)
    def __getnewargs_ex__(self):
        return (1,), {"k": 2}
''')
sys.path.insert(0, os.path.join(out, "pkg"))
from sae_training.config import LanguageModelSAERunnerConfig, Plain, Slotted, WithArgs, WithKwargs

g = torch.Generator().manual_seed(0)
expected = {}

def desc(t):
    t = t.detach().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "hex": raw.hex()}

def save(name, obj, tensors, **kwargs):
    torch.save(obj, os.path.join(out, name), **kwargs)
    expected[name] = {path: desc(t) for path, t in tensors.items()}

class SAE(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        p = lambda *shape: torch.nn.Parameter(torch.randn(*shape, generator=g))
        self.W_enc, self.b_enc = p(cfg.d_in, cfg.d_sae), p(cfg.d_sae)
        self.W_dec, self.b_dec, self.b_dec_out = p(cfg.d_sae, cfg.d_out), p(cfg.d_in), p(cfg.d_out)

cfg = LanguageModelSAERunnerConfig()
sd = SAE(cfg).state_dict()
CKPT = "final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_32.pt"
save(CKPT, {"cfg": cfg, "state_dict": sd}, {f"state_dict.{k}": v for k, v in sd.items()})
cpu_cfg = LanguageModelSAERunnerConfig(device=torch.device("cpu"))
save("ckpt_p4.pt", {"cfg": cpu_cfg, "state_dict": sd}, {f"state_dict.{k}": v for k, v in sd.items()}, pickle_protocol=4)
sparsity = torch.log10(torch.rand(32, generator=g) + 1e-3)
save("final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_32_log_feature_sparsity.pt", sparsity, {"": sparsity})

base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
shared = torch.randn(12, generator=g)
tensors = {
    "transposed": base.t(),
    "slice": base[1:3, 2:5],
    "row": base[2],
    "step": torch.arange(10.0)[::3],
    "permuted": torch.randn(2, 3, 4, generator=g).permute(2, 0, 1),
    "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
    "shared_a": shared[2:8],
    "shared_b": shared.view(3, 4),
    "f16": torch.randn(3, 5, generator=g).half(),
    "bf16": torch.randn(4, 3, generator=g).bfloat16(),
    "f64": torch.randn(5, generator=g, dtype=torch.float64),
    "i64": torch.tensor([-(2**62), 2**53 + 1, 7, -1]),
    "i32": torch.tensor([-(2**31), 5], dtype=torch.int32),
    "i16": torch.tensor([-300, 300], dtype=torch.int16),
    "i8": torch.tensor([-128, 127], dtype=torch.int8),
    "u8": torch.tensor([0, 255], dtype=torch.uint8),
    "flags": torch.rand(7, generator=g) > 0.5,
    "scalar": torch.tensor(3.25),
    "empty": torch.zeros(0, 3),
    "param": torch.nn.Parameter(torch.randn(3, generator=g)),
}
shared_list = [1, 2]
py = {
    "int": 7, "neg": -123456, "big": 2**70, "negbig": -(2**64), "float": 1.5, "inf": math.inf,
    "str": "h\u00e9llo \u2713\n\\ 'q' \"dq\"", "bytes": b"\x00\xffab", "empty_bytes": b"", "bytearray": bytearray(b"xy"),
    "none": None, "t": True, "f": False, "tuple": (1, "a", (2.5,)), "list": [1, [2, 3]],
    "set": {1, 2, 3}, "frozenset": frozenset({"x"}), "intkeys": {1: "one", 2: "two"},
    "complex": 1 + 2j, "slice": slice(1, None, 2),
    "np_f64": np.float64(1.4e-4), "np_f32": np.float32(0.1), "np_i64": np.int64(-(2**40)),
    "np_i32": np.int32(-7), "np_bool": np.bool_(True),
    "dtype": torch.bfloat16, "device": torch.device("cuda", 1), "size": torch.Size([2, 3]), "func": math.sqrt,
    "same1": shared_list, "same2": shared_list, "cfg": cfg, "plain": Plain(),
}
for proto in (1, 2, 4, 5):
    objects = {"slotted": Slotted(), "args": WithArgs(3)} if proto >= 2 else {}
    if proto >= 4:
        objects["kwargs"] = WithKwargs(1, 2)
    data = {"tensors": tensors, "py": py, "objects": objects}
    save(f"extras_p{proto}.pt", data, {f"tensors.{k}": v for k, v in tensors.items()}, pickle_protocol=proto)

def write_zip(name, records, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(os.path.join(out, name), "w", compression) as z:
        for rec, data in records.items():
            z.writestr(rec, data)

def records_of(name, prefix=None):
    with zipfile.ZipFile(os.path.join(out, name)) as z:
        return {(prefix or i.filename.split("/")[0]) + "/" + i.filename.split("/", 1)[1]: z.read(i) for i in z.infolist()}

# Protocol 0 cannot hold torch's tuple persistent ids, so it is tested on plain data.
write_zip("plain_p0.pt", {"archive/data.pkl": pickle.dumps(py, protocol=0)})

# The same checkpoint repacked: another prefix and DEFLATE; ZIP64 records everywhere.
ckpt_records = records_of(CKPT, "archive")
write_zip("deflate.pt", ckpt_records, zipfile.ZIP_DEFLATED)
limits = zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT
zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 0, 0
write_zip("zip64.pt", ckpt_records)
zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = limits
for name in ("deflate.pt", "zip64.pt"):
    expected[name] = expected[CKPT]

# Broken files.
write_zip("missing_storage.pt", {k: v for k, v in ckpt_records.items() if k != "archive/data/0"})
write_zip("big_endian.pt", {**ckpt_records, "archive/byteorder": b"big"})
write_zip("no_pickle.zip", {"a.txt": b"hello"})
with zipfile.ZipFile(os.path.join(out, CKPT)) as z:
    info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
with open(os.path.join(out, CKPT), "rb") as f:
    corrupt = bytearray(f.read())
name_len, extra_len = struct.unpack("<HH", corrupt[info.header_offset + 26:info.header_offset + 30])
corrupt[info.header_offset + 30 + name_len + extra_len] ^= 0xFF
with open(os.path.join(out, "corrupt_storage.pt"), "wb") as f:
    f.write(corrupt)
torch.save(sd, os.path.join(out, "legacy.pt"), _use_new_zipfile_serialization=False)

class Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg
    def __reduce__(self):
        return (self.fn, (self.arg,))
marker = os.path.join(out, "pwned")
evil = {
    "evil_system.pt": pickle.dumps({"x": Evil(os.system, "touch " + marker)}, protocol=2),
    "evil_eval.pt": pickle.dumps(Evil(builtins.eval, f"open({marker!r}, 'w')"), protocol=4),
    "evil_inst.pt": b"(S'touch " + marker.encode() + b"'\nios\nsystem\n.",
    "absurd_length.pt": b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b".",
    "bad_opcode.pt": b"\x80\x02\xff.",
    "truncated_pickle.pt": b"\x80\x02J\x01\x00",
}
for name, data in evil.items():
    write_zip(name, {"archive/data.pkl": data})

with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f)
`;

const CKPT = 'final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_32.pt';
const SPARSITY = 'final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_32_log_feature_sparsity.pt';
type Expected = Record<string, Record<string, { dtype: string; shape: number[]; hex: string }>>;

let dir: string;
let expected: Expected;

/** The value at a dotted path ('' = the root). */
function at(root: unknown, path: string): unknown {
  return path === '' ? root : path.split('.').reduce((v, k) => (v as Record<string, unknown>)[k], root);
}

/** Asserts every tensor PyTorch listed for `file` is read with the same dtype, shape and bytes. */
function expectTensors(file: string, root: unknown): void {
  const tensors = expected[file]!;
  expect(Object.keys(tensors).length).toBeGreaterThan(0);
  for (const [path, want] of Object.entries(tensors)) {
    const t = at(root, path) as PickledTensor;
    expect({ path, dtype: t.dtype, shape: t.shape, hex: Buffer.from(t.bytes).toString('hex') }).toEqual({ path, ...want });
    // Typed-array views over the bytes are aligned.
    const itemSize = want.hex.length / 2 / Math.max(1, want.shape.reduce((a, n) => a * n, 1));
    expect(t.bytes.byteOffset % Math.max(1, itemSize)).toBe(0);
  }
}

/** Runs `fn`, which must throw a FormatError naming `file` and matching `message`. */
function expectFormatError(fn: () => unknown, file: string, message: RegExp): void {
  let error: unknown;
  try {
    fn();
  } catch (err) {
    error = err;
  }
  expect(error).toBeInstanceOf(FormatError);
  expect((error as FormatError).file).toBe(file);
  expect((error as FormatError).message).toMatch(message);
  expect((error as FormatError).message).toContain(file);
}

const CFG = {
  __class__: 'sae_training.config.LanguageModelSAERunnerConfig',
  model_name: 'gpt2-small',
  hook_point: 'blocks.8.ln2.hook_normalized',
  hook_point_layer: 8,
  is_transcoder: true,
  out_hook_point: 'blocks.8.hook_mlp_out',
  d_in: 8,
  d_out: 8,
  expansion_factor: 4,
  d_sae: 32,
  l1_coefficient: 1.4e-4,
  lr: 4e-4,
  dtype: 'float32',
  device: 'cuda',
  b_dec_init_method: 'mean',
  flags: [false],
  lr_schedule: [1, 2.5],
  wandb_project: null,
};

/** What the fixture's `py` dictionary unpickles to (numpy scalars as numbers, dtypes and devices as strings). */
const expectedPy = () => ({
  ...PY_VALUES,
  np_f32: Math.fround(0.1),
  dtype: 'bfloat16',
  device: 'cuda:1',
  func: new PickleGlobal('math.sqrt'),
  cfg: CFG,
  plain: { __class__: 'sae_training.config.Plain', a: 1, b: 'two' },
});

beforeAll(() => {
  dir = tempDir('transcoders-torch-pickle-');
  const r = spawnSync(PYTHON, ['-c', FIXTURES_PY, dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`fixture script failed: ${r.stderr || r.error?.message}`);
  expected = JSON.parse(readFileSync(join(dir, 'expected.json'), 'utf8')) as Expected;
});

describe('readTorchCheckpoint', () => {
  it('reads a transcoder checkpoint: cfg dataclass as a plain object, state_dict tensors exactly', () => {
    const file = join(dir, CKPT);
    expect(isTorchZipCheckpoint(file)).toBe(true);
    const ckpt = readTorchCheckpoint(file) as { cfg: Record<string, unknown>; state_dict: Record<string, PickledTensor> };
    expect(Object.keys(ckpt)).toEqual(['cfg', 'state_dict']);
    expect(ckpt.cfg).toEqual(CFG);
    expect(Object.keys(ckpt.cfg)).toEqual(Object.keys(CFG));
    expect(Object.keys(ckpt.state_dict)).toEqual(['W_enc', 'b_enc', 'W_dec', 'b_dec', 'b_dec_out']);
    expect(ckpt.state_dict.W_enc!.shape).toEqual([8, 32]);
    // The OrderedDict's _metadata attribute is kept, but out of the keys.
    expect((ckpt.state_dict as unknown as { _metadata: unknown })._metadata).toEqual({ '': { version: 1 } });
    expectTensors(CKPT, ckpt);
  });

  it('reads the same checkpoint at pickle protocol 4, repacked with DEFLATE, and with ZIP64 records', () => {
    const p4 = readTorchCheckpoint(join(dir, 'ckpt_p4.pt')) as { cfg: unknown };
    expect(p4.cfg).toEqual({ ...CFG, device: 'cpu' });
    expectTensors('ckpt_p4.pt', p4);
    for (const file of ['deflate.pt', 'zip64.pt']) {
      const ckpt = readTorchCheckpoint(join(dir, file)) as { cfg: unknown };
      expect(ckpt.cfg).toEqual(CFG);
      expectTensors(file, ckpt);
    }
  });

  it('reads a _log_feature_sparsity file (one float32 tensor)', () => {
    const t = readTorchCheckpoint(join(dir, SPARSITY)) as PickledTensor;
    expect(t.dtype).toBe('float32');
    expect(t.shape).toEqual([32]);
    expectTensors(SPARSITY, t);
  });

  it.each([1, 2, 4, 5])('reads views, every dtype, shared storages and Python values at protocol %i', (proto) => {
    const file = `extras_p${proto}.pt`;
    const root = readTorchCheckpoint(join(dir, file)) as { tensors: Record<string, PickledTensor>; py: Record<string, unknown>; objects: unknown };
    expectTensors(file, root);
    // Tensors on one storage share its memory; transposed views are materialised.
    expect(root.tensors.shared_a!.bytes.buffer).toBe(root.tensors.shared_b!.bytes.buffer);
    expect(root.tensors.transposed!.shape).toEqual([6, 4]);
    expect(root.py).toEqual(expectedPy());
    // The memo keeps shared references shared.
    expect(root.py.same1).toBe(root.py.same2);
    // Instances of unknown classes made without running their code: NEWOBJ (with arguments,
    // slot state) and NEWOBJ_EX.
    const objects: Record<string, unknown> = {};
    if (proto >= 2) {
      objects.slotted = { __class__: 'sae_training.config.Slotted', x: 1, y: 'b' };
      objects.args = { __class__: 'sae_training.config.WithArgs', __args__: [3], z: 4 };
    }
    if (proto >= 4) objects.kwargs = { __class__: 'sae_training.config.WithKwargs', __args__: [1], __kwargs__: { k: 2 } };
    expect(root.objects).toEqual(objects);
  });

  it('reads protocol 0 pickles (text opcodes, copyreg._reconstructor instances)', () => {
    const py = readTorchCheckpoint(join(dir, 'plain_p0.pt')) as Record<string, unknown>;
    expect(py).toEqual(expectedPy());
  });
});

/** The Python values of the fixture's `py` dict as this reader maps them. */
const PY_VALUES = {
  int: 7,
  neg: -123456,
  big: 2n ** 70n,
  negbig: -(2n ** 64n),
  float: 1.5,
  inf: Infinity,
  str: 'h\u00e9llo \u2713\n\\ \'q\' "dq"',
  bytes: new Uint8Array([0, 255, 97, 98]),
  empty_bytes: new Uint8Array(0),
  bytearray: new Uint8Array([120, 121]),
  none: null,
  t: true,
  f: false,
  tuple: [1, 'a', [2.5]],
  list: [1, [2, 3]],
  set: new Set([1, 2, 3]),
  frozenset: new Set(['x']),
  intkeys: { 1: 'one', 2: 'two' },
  complex: { __class__: 'builtins.complex', real: 1, imag: 2 },
  slice: { __class__: 'builtins.slice', start: 1, stop: null, step: 2 },
  np_f64: 1.4e-4,
  np_i64: -(2 ** 40),
  np_i32: -7,
  np_bool: true,
  size: [2, 3],
  same1: [1, 2],
  same2: [1, 2],
};

describe('readTorchCheckpoint rejects bad files with a FormatError', () => {
  it('refuses to call non-whitelisted globals (REDUCE, INST) and runs nothing', () => {
    for (const [name, global] of [['evil_system.pt', 'posix.system'], ['evil_eval.pt', 'builtins.eval'], ['evil_inst.pt', 'os.system']] as const) {
      const file = join(dir, name);
      expectFormatError(() => readTorchCheckpoint(file), file, new RegExp(`refusing to call non-whitelisted global '${global.replace('.', '\\.')}'`));
    }
    expect(existsSync(join(dir, 'pwned'))).toBe(false);
  });

  it('names what is wrong', () => {
    const cases: [string, RegExp][] = [
      ['missing_storage.pt', /storage 'archive\/data\/0' missing/],
      ['corrupt_storage.pt', /'.*\/data\/0' fails its CRC-32 check/],
      ['big_endian.pt', /not little-endian/],
      ['no_pickle.zip', /no '<prefix>\/data\.pkl' entries/],
      ['legacy.pt', /not a zip archive/],
      ['absurd_length.pt', /length \d+ exceeds the \d+ bytes left in the pickle \(truncated or corrupt\) \(at byte 2\)/],
      ['bad_opcode.pt', /unsupported pickle opcode 0xff \(at byte 2\)/],
      ['truncated_pickle.pt', /truncated pickle \(at byte 2\)/],
      ['does-not-exist.pt', /cannot open \(ENOENT\)/],
    ];
    for (const [name, message] of cases) expectFormatError(() => readTorchCheckpoint(join(dir, name)), join(dir, name), message);
  });

  it('rejects truncated files, a corrupt central directory and non-zip files', () => {
    const bytes = readFileSync(join(dir, CKPT));
    const cut = (name: string, data: Uint8Array): string => {
      writeFileSync(join(dir, name), data);
      return join(dir, name);
    };
    for (const file of [cut('half.pt', bytes.subarray(0, bytes.length >> 1)), cut('cut10.pt', bytes.subarray(0, bytes.length - 10))]) {
      expectFormatError(() => readTorchCheckpoint(file), file, /truncated zip/);
    }
    // The EOCD record (no comment) is the last 22 bytes; its u32 at 16 is the directory offset.
    const corrupt = Buffer.from(bytes);
    corrupt.writeUInt32LE(0, corrupt.readUInt32LE(corrupt.length - 22 + 16));
    const corruptFile = cut('corrupt_dir.pt', corrupt);
    expectFormatError(() => readTorchCheckpoint(corruptFile), corruptFile, /bad central directory entry 0/);
    const text = cut('text.pt', Buffer.from('this is not a checkpoint at all\n'));
    expectFormatError(() => readTorchCheckpoint(text), text, /not a zip archive/);
  });
});

describe('isTorchZipCheckpoint', () => {
  it('tells torch zip checkpoints from other files', () => {
    expect(isTorchZipCheckpoint(join(dir, 'zip64.pt'))).toBe(true);
    expect(isTorchZipCheckpoint(join(dir, 'extras_p4.pt'))).toBe(true);
    writeFileSync(join(dir, 'notes.txt'), 'not a zip\n');
    for (const name of ['legacy.pt', 'no_pickle.zip', 'notes.txt', 'does-not-exist.pt']) expect(isTorchZipCheckpoint(join(dir, name))).toBe(false);
  });
});
