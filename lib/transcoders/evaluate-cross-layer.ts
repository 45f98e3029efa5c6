/**
 * Evaluating a cross-layer transcoder on a model: per layer reconstruction (of each layer's MLP
 * output from the features of that layer and every earlier one) and sparsity (of each source
 * layer's features), and the model's next-token loss with every MLP replaced by the CLT — its own
 * forward, layer by layer, not a proxy — relative to zero-ablating every MLP, plus the KL divergence
 * from the clean model.
 */
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import type { Model, MlpReplacement } from '../models/model.js';
import type { LayerEvaluation } from './evaluate.js';
import { native } from '../native.js';
import { stackLayers, type CrossLayerTranscoder } from './cross-layer.js';

/**
 * Per layer: the L0 of its features (source), and the MSE, FVU and explained variance of its MLP
 * output (target); dead and dense fractions of its features. (A CLT has no "this layer alone" CE.)
 */
export type CrossLayerLayerEvaluation = Omit<LayerEvaluation, 'ceLoss' | 'ceLossZeroAblated' | 'ceLossRecovered'>;

export interface CrossLayerEvaluation {
  sequences: number;
  tokens: number;
  ceLossClean: number;
  /** Next-token loss with every MLP replaced by the CLT. */
  ceLossReplaced: number;
  /** Next-token loss with every MLP zero-ablated. */
  ceLossZeroAblated: number;
  /** (zero-ablated - replaced) / (zero-ablated - clean). */
  ceLossRecovered: number;
  /** Mean KL(clean || replaced) of the next-token distributions, in nats. */
  klDivergence: number;
  /** Mean over layers of each layer's L0 (source) and FVU (target). */
  meanL0: number;
  meanFvu: number;
  layers: CrossLayerLayerEvaluation[];
}

/** Evaluates `clt` on `model` over token sequences `rows` (equal lengths within a batch, >= 2 tokens). */
export async function evaluateCrossLayer(model: Model, clt: CrossLayerTranscoder, rows: readonly (readonly number[])[], options: { batchSize?: number; onProgress?: (done: number, total: number) => void } = {}): Promise<CrossLayerEvaluation> {
  const batchSize = options.batchSize ?? 8;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new InvalidArgumentError(`batchSize must be a positive integer, got ${batchSize}`);
  if (rows.length === 0) throw new InvalidArgumentError('evaluate needs at least one token sequence');
  const { nLayers: L, dOut: d, dSae: F, hookIn, hookOut } = clt.config;
  if (L !== model.config.nLayers) throw new InvalidArgumentError(`a cross-layer transcoder of ${L} layers, but the model has ${model.config.nLayers}`);
  const zeroAll: Record<number, MlpReplacement> = Object.fromEntries(Array.from({ length: L }, (_, l) => [l, 'zero' as const]));
  const sums = { rows: 0, sse: new Float64Array(L), sumSqY: new Float64Array(L), sumY: new Float64Array(L * d), active: new Float64Array(L), fired: new Float64Array(L * F) };
  const ce = { clean: 0, replaced: 0, zero: 0, kl: 0 };
  let weight = 0;
  let tokens = 0;
  for (let start = 0; start < rows.length; start += batchSize) {
    const batch = rows.slice(start, start + batchSize);
    const ragged = batch.findIndex((r) => r.length !== batch[0]!.length);
    if (ragged >= 0) throw new InvalidArgumentError(`evaluate: row ${start + ragged} has ${batch[ragged]!.length} tokens but row ${start} has ${batch[0]!.length}; rows evaluated in one batch (batchSize ${batchSize}) must have equal length`);
    const clean = await model.run(batch, { cache: [...hookIn, ...hookOut] });
    const x = await stackLayers(hookIn.map((h) => clean.cache[h]!));
    const y = await stackLayers(hookOut.map((h) => clean.cache[h]!));
    const s = await clt.batchStats(x, y);
    x.dispose();
    y.dispose();
    sums.rows += s.rows;
    for (const [into, from] of [[sums.sse, s.sumSquaredError], [sums.sumSqY, s.sumSquaredY], [sums.sumY, s.sumY], [sums.active, s.activeSum], [sums.fired, s.fireCounts]] as const) {
      from.toTypedArray().forEach((v, i) => (into[i]! += Number(v)));
    }
    const w = batch.length * (batch[0]!.length - 1);
    const spliced = await model.run(batch, { crossLayer: clt });
    ce.kl += w * (await runOnDevice(model.device, () => native().klDivergence(clean.logits!.handle, spliced.logits!.handle)));
    ce.clean += w * (await model.loss(batch));
    ce.replaced += w * (await model.loss(batch, { crossLayer: clt }));
    ce.zero += w * (await model.loss(batch, { replaceMlp: zeroAll }));
    weight += w;
    tokens += batch.length * batch[0]!.length;
    options.onProgress?.(Math.min(start + batchSize, rows.length), rows.length);
  }
  const ceClean = ce.clean / weight;
  const layers = Array.from({ length: L }, (_, l): CrossLayerLayerEvaluation => {
    let meanSq = 0;
    for (let i = 0; i < d; i++) meanSq += sums.sumY[l * d + i]! ** 2;
    const fvu = sums.sse[l]! / (sums.sumSqY[l]! - meanSq / sums.rows);
    const fired = sums.fired.subarray(l * F, (l + 1) * F);
    return {
      layer: l,
      l0: sums.active[l]! / sums.rows,
      mse: sums.sse[l]! / (sums.rows * d),
      fvu,
      explainedVariance: 1 - fvu,
      deadFraction: fired.filter((c) => c === 0).length / F,
      denseFraction: fired.filter((c) => c / sums.rows > 0.1).length / F,
    };
  });
  return {
    sequences: rows.length,
    tokens,
    ceLossClean: ceClean,
    ceLossReplaced: ce.replaced / weight,
    ceLossZeroAblated: ce.zero / weight,
    ceLossRecovered: (ce.zero / weight - ce.replaced / weight) / (ce.zero / weight - ceClean),
    klDivergence: ce.kl / weight,
    meanL0: layers.reduce((a, b) => a + b.l0, 0) / L,
    meanFvu: layers.reduce((a, b) => a + b.fvu, 0) / L,
    layers,
  };
}
