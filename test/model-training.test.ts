/**
 * Training the language model itself through the ATen forward: one to three Adam steps on the
 * next-token loss equal PyTorch autograd + torch.optim.Adam on the same Hugging Face tensors (the
 * independent reference forward of test/reference/hf_reference.py); saving writes the checkpoint back
 * exactly.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, loadModel, readSafetensors, saveModel } from '../lib/index.js';
import type { RandomModelSpec } from '../lib/models/random.js';
import { Rng } from '../lib/util/random.js';
import { makeTempModel, tempDir, TINY_GPT2, TINY_NEOX } from './helpers/fixtures.js';
import { maxDiff, PYTHON } from './helpers/reference.js';

const REF = new URL('./reference/', import.meta.url).pathname;
const STEP = String.raw`
import json, os, sys, torch
sys.path.insert(0, sys.argv[1])
from hf_reference import load_state_dict, gpt2_layout, neox_layout, run
from safetensors_io import save_file
model_dir, batches_file, out, lr = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
config = json.load(open(os.path.join(model_dir, "config.json")))
params = {k.replace("transformer.", "", 1): v.clone().requires_grad_(True) for k, v in load_state_dict(model_dir).items()}
opt = torch.optim.Adam(list(params.values()), lr=lr, eps=1.0)
layout = gpt2_layout if config["model_type"] == "gpt2" else neox_layout
losses = []
for batch in json.load(open(batches_file)):
    loss = run(layout(config, params), batch)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
save_file({k: v.detach() for k, v in params.items()}, out)
print(json.dumps(losses))
`;

describe.each([
  { name: 'gpt2 (tied unembedding, prefixed keys)', spec: { ...TINY_GPT2, prefixed: true } as RandomModelSpec },
  { name: 'neox', spec: TINY_NEOX },
])('training the model: $name', ({ spec }) => {
  it('Adam steps on the next-token loss equal PyTorch autograd + torch.optim.Adam (losses 1e-4, updates 1e-3 relative)', async () => {
    const dir = makeTempModel(spec);
    const rng = new Rng(1);
    const batches = Array.from({ length: 3 }, () => Array.from({ length: 2 }, () => Array.from({ length: 10 }, () => rng.int(spec.vocabSize))));
    const model = await loadModel(dir);
    const losses = await model.train(batches, { lr: 1e-2, eps: 1 });
    const out = tempDir();
    saveModel(model, out);

    const work = tempDir();
    writeFileSync(join(work, 'batches.json'), JSON.stringify(batches));
    const r = spawnSync(PYTHON, ['-c', STEP, REF, dir, join(work, 'batches.json'), join(work, 'after.safetensors'), '1e-2'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const refLosses = JSON.parse(r.stdout) as number[];
    losses.forEach((l, i) => expect(Math.abs(l - refLosses[i]!)).toBeLessThanOrEqual(1e-4 * refLosses[i]!));
    const ours = (await readSafetensors(join(out, 'model.safetensors'))).tensors;
    const ref = (await readSafetensors(join(work, 'after.safetensors'))).tensors;
    expect(Object.keys(ours).sort()).toEqual(Object.keys(ref).sort());
    const before = (await loadModel(dir)).huggingFaceWeights();
    for (const key of Object.keys(ref)) {
      // Compare the updates (after - before). With eps = 1 Adam's update is close to lr x gradient, so
      // this compares the backpropagated gradients (with the default eps, entries with near-zero
      // gradients, e.g. the key biases, would become +-lr rounding noise on both sides).
      const b = before[key]!.toFloat32Array();
      const update = (t: Float32Array) => t.map((v, i) => v - b[i]!);
      const { diff, scale } = maxDiff(update(ours[key]!.toFloat32Array()), update(ref[key]!.toFloat32Array()));
      expect(diff, `${key}: ${diff} (update scale ${scale})`).toBeLessThanOrEqual(1e-3 * scale + 1e-7);
    }
  });

  it('saving writes the checkpoint back exactly, and the reloaded model is the same', async () => {
    const dir = makeTempModel(spec);
    const model = await loadModel(dir);
    const out = tempDir();
    saveModel(model, out);
    const original = (await readSafetensors(join(dir, spec.arch === 'gpt2' && spec.prefixed ? 'model.safetensors' : 'model.safetensors'))).tensors;
    const saved = (await readSafetensors(join(out, 'model.safetensors'))).tensors;
    for (const [key, t] of Object.entries(original)) expect(maxDiff(saved[key.replace(/^transformer\./, '')]!, t).diff, key).toBe(0);
    const tokens = [[1, 2, 3, 4, 5, 6]];
    const reloaded = await loadModel(out);
    expect(maxDiff((await reloaded.run(tokens)).logits!, (await model.run(tokens)).logits!).diff).toBe(0);
  });
});

describe('training the model', () => {
  it('lowers the loss on repeated data and refuses processed models', async () => {
    const dir = makeTempModel({ ...TINY_GPT2, std: 0.1 });
    const model = await loadModel(dir);
    const batch = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]];
    const losses = await model.train(Array.from({ length: 30 }, () => batch), { lr: 3e-3 });
    expect(losses.at(-1)!).toBeLessThan(0.5 * losses[0]!);
    const processed = await loadModel(dir, { processing: 'transformerlens' });
    await expect(processed.train([batch], { lr: 1e-3 })).rejects.toThrow(InvalidArgumentError);
    expect(() => processed.huggingFaceWeights()).toThrow(/processing 'none'/);
  });
});
