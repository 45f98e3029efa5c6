/** Fixtures for circuit tests: a processed random model with random transcoders at every layer. */
import { loadModel, Tensor, type Model } from '../../lib/index.js';
import type { RandomModelSpec } from '../../lib/models/random.js';
import { mlpHooks } from '../../lib/transcoders/config.js';
import { Transcoder } from '../../lib/transcoders/transcoder.js';
import { Rng } from '../../lib/util/random.js';
import { DEVICE, makeTempModel } from './fixtures.js';

export const CIRCUIT_DSAE = 48;

/** Random transcoders for every layer, scaled so that many features are active. */
export async function randomTranscoders(model: Model, seed = 17): Promise<Transcoder[]> {
  const rng = new Rng(seed);
  const d = model.config.dModel;
  const m = CIRCUIT_DSAE;
  const r = (n: number, s: number) => Tensor.from(Float32Array.from({ length: n }, () => s * rng.normal()), [n]);
  const mat = (a: number, b: number, s: number) => Tensor.from(Float32Array.from({ length: a * b }, () => s * rng.normal()), [a, b]);
  const out: Transcoder[] = [];
  for (let l = 0; l < model.config.nLayers; l++) {
    out.push(await Transcoder.fromParameters(
      { arch: 'relu', dIn: d, dOut: d, dSae: m, layer: l, ...mlpHooks(l), processing: 'transformerlens' },
      { W_enc: mat(d, m, 0.3), b_enc: r(m, 0.2), W_dec: mat(m, d, 0.3), b_dec: r(d, 0.1), b_dec_out: r(d, 0.1) },
      { device: DEVICE },
    ));
  }
  return out;
}

/** A processed random model folder, loaded, with random transcoders. */
export async function circuitFixture(spec: RandomModelSpec): Promise<{ model: Model; dir: string; transcoders: Transcoder[] }> {
  const dir = makeTempModel(spec);
  const model = await loadModel(dir, { processing: 'transformerlens', device: DEVICE });
  return { model, dir, transcoders: await randomTranscoders(model) };
}
