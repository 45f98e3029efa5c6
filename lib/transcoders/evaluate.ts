/**
 * Evaluating transcoders on a model: reconstruction (MSE, FVU, explained variance), sparsity (L0,
 * dead and dense features), and the model's next-token loss with the MLPs really replaced by the
 * transcoders (the model's own forward, not a proxy), relative to zero-ablating those MLPs, plus the
 * KL divergence from the clean model. Several layers are evaluated together and one at a time.
 */
import type { ReplacementModel } from '../circuits/replacement-model.js';
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import { native } from '../native.js';
import type { MlpReplacement } from '../models/model.js';
import { Tensor } from '../tensor.js';

export interface LayerEvaluation {
  layer: number;
  /** Mean number of active features per token. */
  l0: number;
  /** Mean squared error per element. */
  mse: number;
  /** Fraction of variance unexplained: sum ||y - y_hat||^2 / sum ||y - mean(y)||^2. */
  fvu: number;
  explainedVariance: number;
  /** Fraction of features that never fired on the data. */
  deadFraction: number;
  /** Fraction of features active on more than 10% of tokens. */
  denseFraction: number;
  /** Next-token loss with only this layer's MLP replaced. */
  ceLoss: number;
  /** Next-token loss with only this layer's MLP zero-ablated. */
  ceLossZeroAblated: number;
  /** (ceLossZeroAblated - ceLoss) / (ceLossZeroAblated - ceLossClean): 1 is perfect, 0 no better than ablation. */
  ceLossRecovered: number;
}

export interface Evaluation {
  sequences: number;
  tokens: number;
  ceLossClean: number;
  /** Next-token loss with every evaluated MLP replaced at once. */
  ceLossReplaced: number;
  ceLossZeroAblated: number;
  ceLossRecovered: number;
  /** Mean KL(clean || all replaced) of the next-token distributions, in nats. */
  klDivergence: number;
  layers: LayerEvaluation[];
}

export interface EvaluateOptions {
  /** Sequences per forward pass (default 8). */
  batchSize?: number;
  onProgress?: (done: number, total: number) => void;
}

interface Accumulator {
  rows: number;
  sumSquaredError: number;
  sumSquaredY: number;
  activeSum: number;
  sumY: Float64Array;
  fireCounts: Float64Array;
}

/** Evaluates the replacement model's transcoders on token sequences `rows` (equal lengths, >= 2 tokens). */
export async function evaluate(replacement: ReplacementModel, rows: readonly (readonly number[])[], options: EvaluateOptions = {}): Promise<Evaluation> {
  const { model } = replacement;
  const layers = replacement.transcoders;
  const batchSize = options.batchSize ?? 8;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new InvalidArgumentError(`batchSize must be a positive integer, got ${batchSize}`);
  if (rows.length === 0) throw new InvalidArgumentError('evaluate needs at least one token sequence');
  const all = replacement.replacements();
  const zeroAll: Record<number, MlpReplacement> = Object.fromEntries([...layers.keys()].map((l) => [l, 'zero' as const]));
  const d = model.config.dModel;
  const acc = new Map<number, Accumulator>(
    [...layers].map(([l, tc]) => [l, { rows: 0, sumSquaredError: 0, sumSquaredY: 0, activeSum: 0, sumY: new Float64Array(d), fireCounts: new Float64Array(tc.config.dSae) }]),
  );
  const ce = { clean: 0, replaced: 0, zero: 0, kl: 0, perLayer: new Map([...layers.keys()].map((l) => [l, { replaced: 0, zero: 0 }])) };
  let weight = 0;
  let tokens = 0;

  for (let start = 0; start < rows.length; start += batchSize) {
    const batch = rows.slice(start, start + batchSize);
    // The statistics read every position of the activations: a padded batch would count its pads.
    const ragged = batch.findIndex((r) => r.length !== batch[0]!.length);
    if (ragged >= 0) {
      throw new InvalidArgumentError(`evaluate: row ${start + ragged} has ${batch[ragged]!.length} tokens but row ${start} has ${batch[0]!.length}; rows evaluated in one batch (batchSize ${batchSize}) must have equal length`);
    }
    const clean = await model.run(batch, { cache: replacement.hooks() });
    for (const [l, tc] of layers) {
      const { hookIn, hookOut } = replacement.placement(l);
      const s = await runOnDevice(tc.device, () => tc.handle.batchStats(clean.cache[hookIn]!.handle, clean.cache[hookOut]!.handle));
      const a = acc.get(l)!;
      a.rows += s.rows;
      a.sumSquaredError += s.sumSquaredError;
      a.sumSquaredY += s.sumSquaredY;
      a.activeSum += s.activeSum;
      new Tensor(s.sumY).toTypedArray().forEach((v, i) => (a.sumY[i]! += Number(v)));
      new Tensor(s.fireCounts).toTypedArray().forEach((v, i) => (a.fireCounts[i]! += Number(v)));
    }
    // Loss terms are means over B x (T - 1) predictions: weight batches by their prediction count.
    const w = batch.length * (batch[0]!.length - 1);
    const spliced = await model.run(batch, { replaceMlp: all });
    ce.kl += w * (await runOnDevice(model.device, () => native().klDivergence(clean.logits!.handle, spliced.logits!.handle)));
    ce.clean += w * (await model.loss(batch));
    ce.replaced += w * (await model.loss(batch, { replaceMlp: all }));
    ce.zero += w * (await model.loss(batch, { replaceMlp: zeroAll }));
    for (const l of layers.keys()) {
      const per = ce.perLayer.get(l)!;
      per.replaced += w * (await model.loss(batch, { replaceMlp: replacement.replacements({ layers: [l] }) }));
      per.zero += w * (await model.loss(batch, { replaceMlp: { [l]: 'zero' } }));
    }
    weight += w;
    tokens += batch.length * batch[0]!.length;
    options.onProgress?.(Math.min(start + batchSize, rows.length), rows.length);
  }

  const ceClean = ce.clean / weight;
  const recovered = (zero: number, replaced: number) => (zero - replaced) / (zero - ceClean);
  return {
    sequences: rows.length,
    tokens,
    ceLossClean: ceClean,
    ceLossReplaced: ce.replaced / weight,
    ceLossZeroAblated: ce.zero / weight,
    ceLossRecovered: recovered(ce.zero / weight, ce.replaced / weight),
    klDivergence: ce.kl / weight,
    layers: [...layers.keys()].sort((a, b) => a - b).map((l) => {
      const a = acc.get(l)!;
      const meanSq = a.sumY.reduce((s, v) => s + v * v, 0) / a.rows;
      const fvu = a.sumSquaredError / (a.sumSquaredY - meanSq);
      const per = ce.perLayer.get(l)!;
      const fired = Array.from(a.fireCounts);
      return {
        layer: l,
        l0: a.activeSum / a.rows,
        mse: a.sumSquaredError / (a.rows * d),
        fvu,
        explainedVariance: 1 - fvu,
        deadFraction: fired.filter((c) => c === 0).length / fired.length,
        denseFraction: fired.filter((c) => c / a.rows > 0.1).length / fired.length,
        ceLoss: per.replaced / weight,
        ceLossZeroAblated: per.zero / weight,
        ceLossRecovered: recovered(per.zero / weight, per.replaced / weight),
      };
    }),
  };
}
