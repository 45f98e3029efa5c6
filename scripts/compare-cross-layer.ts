/**
 * Cross-layer vs per-layer transcoders on the shipped model (docs/cross-layer.md, "Against per-layer
 * transcoders"): for each setting, per-layer transcoders (one per layer, F features each) and one
 * cross-layer transcoder (F features per layer: the same total count) are trained on the same
 * activations of the demo's data, with the same steps, batch, learning rate and schedule, and
 * evaluated on held-out sequences with every MLP replaced at once. TopK settings give both the same
 * L0 by construction; the relu settings report the L0 each reached.
 *
 *   node --import tsx scripts/compare-cross-layer.ts [--tokens N] [--out DIR] [--only topk|relu] [--clt-l1 C]
 *
 * --only runs one kind of setting; --clt-l1 sets the CLT's L1 coefficient of the relu setting (e.g. a
 * little above the per-layer one, to bring its L0 down to theirs).
 *
 * Prints a Markdown table and writes it, with the raw numbers, to OUT/compare-cross-layer.json.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeTokenFile } from '../lib/data/token-file.js';
import { DEMO_MODEL_DIR, DEMO_TRANSCODERS } from '../lib/demo/demo.js';
import { packedRows } from '../lib/demo/tasks.js';
import { DEMO_MODEL, validationRows } from '../lib/demo/train-model.js';
import { loadModel, ReplacementModel } from '../lib/index.js';
import { evaluate } from '../lib/transcoders/evaluate.js';
import { evaluateCrossLayer } from '../lib/transcoders/evaluate-cross-layer.js';
import { trainTranscoders, type TrainRunOptions } from '../lib/transcoders/training-run.js';

const { values } = parseArgs({ options: { tokens: { type: 'string' }, out: { type: 'string' }, only: { type: 'string' }, 'clt-l1': { type: 'string' } } });
const tokens = Number(values.tokens ?? DEMO_TRANSCODERS.tokens);
const out = values.out ?? '/tmp/compare-cross-layer';
mkdirSync(out, { recursive: true });

const model = await loadModel(DEMO_MODEL_DIR, { processing: 'transformerlens' });
const L = model.config.nLayers;
const layers = Array.from({ length: L }, (_, l) => l);
const tokenFile = join(out, 'tokens.bin');
const rowsNeeded = Math.ceil(tokens / DEMO_MODEL.seqLen) + 64;
const source = packedRows((t) => model.tokenize(t, { prependBos: false }), model.config.bosTokenId!, DEMO_MODEL.seqLen, DEMO_TRANSCODERS.seed + 7_000_001);
await writeTokenFile(tokenFile, (function* () {
  for (let i = 0; i < rowsNeeded; i++) yield Int32Array.from(source.next().value as number[]);
})(), { contextSize: DEMO_MODEL.seqLen, tokenizer: join(model.dir, 'tokenizer.json'), bos: 'paper', sources: ['lib/demo/tasks.ts'], documents: rowsNeeded });
const heldOut = validationRows(model, DEMO_MODEL, 128);

const common: Omit<TrainRunOptions, 'arch' | 'out' | 'dSae'> = {
  data: { tokenFile, model }, layers, tokens, batchSize: DEMO_TRANSCODERS.batchSize, lr: DEMO_TRANSCODERS.lr,
  schedule: 'cosineannealingwarmup', warmupSteps: 50, totalSteps: Math.floor(tokens / DEMO_TRANSCODERS.batchSize), seed: 0, sequencesPerForward: 32, checkpointEveryTokens: tokens,
};

interface Row { setting: string; kind: string; features: number; l0: number[]; fvu: number[]; ce: number; recovered: number; kl: number; clean: number; zero: number; seconds: number }
const results: Row[] = [];
const cltL1 = Number(values['clt-l1'] ?? 2e-3);
const allSettings: { name: string; perLayer: Partial<TrainRunOptions>; crossLayer: Partial<TrainRunOptions> }[] = [
  { name: 'topk k=16, F=1024 per layer', perLayer: { arch: 'topk', k: 16, dSae: 1024 }, crossLayer: { arch: 'clt-topk', k: 16, dSae: 1024 } },
  { name: 'topk k=32, F=1024 per layer', perLayer: { arch: 'topk', k: 32, dSae: 1024 }, crossLayer: { arch: 'clt-topk', k: 32, dSae: 1024 } },
  { name: 'relu, F=1024 per layer', perLayer: { arch: 'relu', dSae: 1024, recipe: 'standard', l1Coefficient: 2e-3, ghostGrads: false }, crossLayer: { arch: 'clt-relu', dSae: 1024, sparsity: 'l1', sparsityCoefficient: cltL1 } },
];
const settings = allSettings.filter((s) => !values.only || s.name.startsWith(values.only));
for (const s of settings) {
  for (const kind of ['per-layer', 'cross-layer'] as const) {
    const started = Date.now();
    const run = await trainTranscoders({ ...common, ...(kind === 'per-layer' ? s.perLayer : s.crossLayer), out: join(out, `${s.name.replace(/[^a-z0-9]+/gi, '-')}-${kind}`) } as TrainRunOptions);
    const seconds = (Date.now() - started) / 1000;
    if (run.crossLayer) {
      const ev = await evaluateCrossLayer(model, run.crossLayer, heldOut, { batchSize: 32 });
      results.push({ setting: s.name, kind, features: L * run.crossLayer.config.dSae, l0: ev.layers.map((l) => l.l0), fvu: ev.layers.map((l) => l.fvu), ce: ev.ceLossReplaced, recovered: ev.ceLossRecovered, kl: ev.klDivergence, clean: ev.ceLossClean, zero: ev.ceLossZeroAblated, seconds });
    } else {
      const ev = await evaluate(ReplacementModel.create(model, run.transcoders), heldOut, { batchSize: 32 });
      results.push({ setting: s.name, kind, features: run.transcoders.reduce((a, t) => a + t.config.dSae, 0), l0: ev.layers.map((l) => l.l0), fvu: ev.layers.map((l) => l.fvu), ce: ev.ceLossReplaced, recovered: ev.ceLossRecovered, kl: ev.klDivergence, clean: ev.ceLossClean, zero: ev.ceLossZeroAblated, seconds });
    }
    const r = results.at(-1)!;
    console.error(`${s.name} ${kind}: CE ${r.ce.toFixed(4)} (clean ${r.clean.toFixed(4)}), recovered ${(100 * r.recovered).toFixed(1)}%, L0 ${r.l0.map((v) => v.toFixed(1)).join('/')}, FVU ${r.fvu.map((v) => v.toFixed(3)).join('/')}, ${seconds.toFixed(0)} s`);
  }
}
const lines = [
  `| setting | transcoders | features | L0 per layer | FVU per layer | CE, every MLP replaced | CE recovered | KL (nats) |`,
  `|---|---|---|---|---|---|---|---|`,
  ...results.map((r) => `| ${r.setting} | ${r.kind} | ${r.features} | ${r.l0.map((v) => v.toFixed(1)).join(' / ')} | ${r.fvu.map((v) => v.toFixed(3)).join(' / ')} | ${r.ce.toFixed(4)} | ${(100 * r.recovered).toFixed(1)}% | ${r.kl.toFixed(4)} |`),
  '',
  `clean CE ${results[0]!.clean.toFixed(4)}, every MLP zero-ablated ${results[0]!.zero.toFixed(4)}; ${tokens} activation rows per run, ${heldOut.length} held-out sequences.`,
];
console.log(lines.join('\n'));
writeFileSync(join(out, 'compare-cross-layer.json'), JSON.stringify({ tokens, results }, null, 2));
model.dispose();
