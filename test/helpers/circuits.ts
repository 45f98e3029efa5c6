/** Fixtures for circuit tests: a random model (processed or raw) with random transcoders at every layer. */
import { loadModel, ReplacementModel, Tensor, type Model, type Processing } from '../../lib/index.js';
import type { RandomModelSpec } from '../../lib/models/random.js';
import { mlpHooks } from '../../lib/transcoders/config.js';
import { Transcoder } from '../../lib/transcoders/transcoder.js';
import { Rng } from '../../lib/util/random.js';
import { DEVICE, makeTempModel } from './fixtures.js';

export const CIRCUIT_DSAE = 48;

/**
 * What the fixture's transcoders read: the MLP input (`ln2.hook_normalized`, or its alias
 * `mlp.hook_in`), or the residual before the MLP's LayerNorm (`hook_resid_mid`; `hook_resid_pre` in
 * parallel blocks).
 */
export type FixtureInput = 'ln2' | 'mlp.hook_in' | 'residual';

function hooksOf(model: Model, layer: number, input: FixtureInput): { hookIn: string; hookOut: string } {
  const { hookOut } = mlpHooks(layer);
  if (input === 'ln2') return mlpHooks(layer);
  if (input === 'mlp.hook_in') return { hookIn: `blocks.${layer}.mlp.hook_in`, hookOut: `blocks.${layer}.mlp.hook_out` };
  return { hookIn: `blocks.${layer}.${model.config.parallelResidual ? 'hook_resid_pre' : 'hook_resid_mid'}`, hookOut };
}

/** Random transcoders for every layer, scaled so that many features are active. */
export async function randomTranscoders(model: Model, seed = 17, input: FixtureInput = 'ln2'): Promise<Transcoder[]> {
  const rng = new Rng(seed);
  const d = model.config.dModel;
  const m = CIRCUIT_DSAE;
  const r = (n: number, s: number) => Tensor.from(Float32Array.from({ length: n }, () => s * rng.normal()), [n]);
  const mat = (a: number, b: number, s: number) => Tensor.from(Float32Array.from({ length: a * b }, () => s * rng.normal()), [a, b]);
  const out: Transcoder[] = [];
  for (let l = 0; l < model.config.nLayers; l++) {
    out.push(await Transcoder.fromParameters(
      { arch: 'relu', dIn: d, dOut: d, dSae: m, layer: l, ...hooksOf(model, l, input), processing: model.processing },
      { W_enc: mat(d, m, 0.3), b_enc: r(m, 0.2), W_dec: mat(m, d, 0.3), b_dec: r(d, 0.1), b_dec_out: r(d, 0.1) },
      { device: DEVICE },
    ));
  }
  return out;
}

/** A random model folder, loaded (TransformerLens-processed by default), with random transcoders. */
export async function circuitFixture(
  spec: RandomModelSpec,
  options: { processing?: Processing; input?: FixtureInput } = {},
): Promise<{ model: Model; dir: string; transcoders: Transcoder[]; replacement: ReplacementModel }> {
  const dir = makeTempModel(spec);
  const model = await loadModel(dir, { processing: options.processing ?? 'transformerlens', device: DEVICE });
  const transcoders = await randomTranscoders(model, 17, options.input ?? 'ln2');
  return { model, dir, transcoders, replacement: ReplacementModel.create(model, transcoders) };
}
