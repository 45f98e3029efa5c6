/**
 * Loading the paper's released transcoder files (torch.save zip with a pickled config dataclass),
 * on fixtures written by Debian's PyTorch the way the paper's save_model writes them. The forward
 * pass is compared with the paper's formula evaluated by PyTorch: relu((x - b_dec) W_enc + b_enc) W_dec + b_dec_out.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FormatError, readSafetensors } from '../lib/index.js';
import { loadPaperTranscoder } from '../lib/transcoders/formats/paper.js';
import { detectTranscoderFormat, loadTranscoder } from '../lib/transcoders/formats/index.js';
import { tempDir } from './helpers/fixtures.js';
import { maxDiff, PYTHON } from './helpers/reference.js';

const FIXTURE = String.raw`
import os, sys, torch
from collections import OrderedDict
out = sys.argv[1]
pkg = os.path.join(out, "pkg", "sae_training")
os.makedirs(pkg, exist_ok=True)
open(os.path.join(pkg, "__init__.py"), "w").close()
with open(os.path.join(pkg, "config.py"), "w") as f:
    f.write('''
from dataclasses import dataclass
import torch
@dataclass
class LanguageModelSAERunnerConfig:
    model_name: str = "gpt2-small"
    hook_point: str = "blocks.3.ln2.hook_normalized"
    hook_point_layer: int = 3
    is_transcoder: bool = True
    out_hook_point: str = "blocks.3.hook_mlp_out"
    d_in: int = 8
    d_out: int = 8
    expansion_factor: int = 4
    l1_coefficient: float = 1.4e-4
    lr: float = 4e-4
    lr_scheduler_name: str = "constantwithwarmup"
    use_ghost_grads: tuple = (False,)
    dtype: torch.dtype = torch.float32
    device: object = None
''')
sys.path.insert(0, os.path.join(out, "pkg"))
sys.path.insert(0, ${JSON.stringify(new URL('./reference/', import.meta.url).pathname)})
from sae_training.config import LanguageModelSAERunnerConfig
from safetensors_io import save_file
torch.manual_seed(0)
cfg = LanguageModelSAERunnerConfig(device=torch.device("cuda"))
cfg.d_sae = 32
sd = OrderedDict(W_enc=torch.randn(8, 32) * 0.3, b_enc=torch.randn(32) * 0.1, W_dec=torch.randn(32, 8) * 0.3,
                 b_dec=torch.randn(8) * 0.2, b_dec_out=torch.randn(8) * 0.1)
torch.save({"cfg": cfg, "state_dict": sd}, os.path.join(out, "final_sparse_autoencoder_gpt2-small_blocks.3.ln2.hook_normalized_32.pt"))
x = torch.randn(10, 8)
y = torch.relu((x - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"]) @ sd["W_dec"] + sd["b_dec_out"]
save_file({"x": x, "y": y}, os.path.join(out, "expected.safetensors"))
# An SAE (not a transcoder): no b_dec_out, b_dec is also the output bias.
cfg2 = LanguageModelSAERunnerConfig(is_transcoder=False, hook_point="blocks.3.hook_resid_pre")
del sd["b_dec_out"]
torch.save({"cfg": cfg2, "state_dict": sd}, os.path.join(out, "sae.pt"))
torch.save({"cfg": cfg, "weights": sd}, os.path.join(out, "wrong_layout.pt"))
`;

let dir: string;

beforeAll(() => {
  dir = tempDir('transcoders-paper-');
  const r = spawnSync(PYTHON, ['-c', FIXTURE, dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
});

describe('paper .pt transcoders', () => {
  it('loads the config and computes the paper formula (1e-5)', async () => {
    const tc = await loadPaperTranscoder(join(dir, 'final_sparse_autoencoder_gpt2-small_blocks.3.ln2.hook_normalized_32.pt'));
    expect(tc.config).toMatchObject({
      arch: 'relu', dIn: 8, dOut: 8, dSae: 32, layer: 3, hookIn: 'blocks.3.ln2.hook_normalized', hookOut: 'blocks.3.hook_mlp_out',
      modelName: 'gpt2-small', processing: 'transformerlens',
    });
    expect(tc.config.training).toMatchObject({ l1_coefficient: 1.4e-4, lr: 4e-4, lr_scheduler_name: 'constantwithwarmup' });
    const { x, y } = (await readSafetensors(join(dir, 'expected.safetensors'))).tensors;
    const { diff, scale } = maxDiff(await tc.forward(x!), y!);
    expect(diff).toBeLessThanOrEqual(1e-5 * Math.max(1, scale));
  });

  it('is detected and loaded by loadTranscoder', async () => {
    const file = join(dir, 'final_sparse_autoencoder_gpt2-small_blocks.3.ln2.hook_normalized_32.pt');
    expect(detectTranscoderFormat(file)).toBe('paper-pt');
    const tc = await loadTranscoder(file);
    const { x, y } = (await readSafetensors(join(dir, 'expected.safetensors'))).tensors;
    expect(maxDiff(await tc.forward(x!), y!).diff).toBeLessThanOrEqual(1e-5);
  });

  it('loads a paper SAE with b_dec as both input and output bias', async () => {
    const sae = await loadPaperTranscoder(join(dir, 'sae.pt'));
    expect(sae.config.hookOut).toBe('blocks.3.hook_resid_pre');
    const p = sae.parameters();
    expect(maxDiff(p.b_dec_out, p.b_dec).diff).toBe(0);
  });

  it('names the file when the layout is wrong', async () => {
    await expect(loadPaperTranscoder(join(dir, 'wrong_layout.pt'))).rejects.toThrow(FormatError);
    await expect(loadPaperTranscoder(join(dir, 'wrong_layout.pt'))).rejects.toThrow(/wrong_layout\.pt: expected a dict with 'cfg' and 'state_dict'/);
    await expect(loadPaperTranscoder(join(dir, 'missing.pt'))).rejects.toThrow(/missing\.pt/);
  });
});
