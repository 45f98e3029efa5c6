/** `transcoders demo`: the whole pipeline on the shipped greater-than model (see lib/demo/demo.ts). */
import { relative } from 'node:path';
import { DEMO_MODEL_DIR, DEMO_TRANSCODERS, runDemo, type DemoProgress, type DemoStage } from '../demo/demo.js';
import { applyThreads, checkInputPaths, checkOutputPaths, intOption, rejectOptions, THREADS_OPTION, type Command } from './command.js';
import { ProgressBar } from './progress.js';

const STAGE_LABELS: Record<DemoStage, string> = {
  data: 'token data        ',
  train: 'train transcoders ',
  evaluate: 'evaluate          ',
  circuit: 'circuit search    ',
  experiment: 'greater-than test ',
  features: 'feature cards     ',
  graph: 'graph viewer      ',
  report: 'report            ',
};

export const demoCommand: Command = {
  name: 'demo',
  summary: 'Train transcoders on the shipped greater-than model, find its circuit and write an HTML report.',
  usage: 'demo [--out DIR] [--pretrained] [--model DIR] [options]',
  details:
    `The shipped model (${relative(process.cwd(), DEMO_MODEL_DIR) || DEMO_MODEL_DIR}) is a 3-layer GPT-2 this project trained on\n` +
    'templated text ("The war lasted from the year 1732 to the year 1756."); docs/demo-model.md is its model card.\n' +
    'The demo trains a transcoder per layer (or loads the shipped ones with --pretrained), evaluates them, searches\n' +
    'the circuit of the end-year preference, runs the paper\'s greater-than experiment and writes OUT/report.html\n' +
    '(with graph.json, feature-graph.json and demo.json beside it). About a minute on 2 CPU cores (25 s with --pretrained).',
  arguments: [],
  options: {
    out: { type: 'string', short: 'o', value: 'DIR', description: 'output folder (default transcoders-demo)' },
    pretrained: { type: 'boolean', description: 'use the shipped transcoders instead of training new ones' },
    model: { type: 'string', value: 'DIR', description: 'model folder (default: the shipped greater-than model)' },
    tokens: { type: 'string', value: 'N', description: `activations per layer to train on (default ${DEMO_TRANSCODERS.tokens}; not with --pretrained)` },
    'd-sae': { type: 'string', value: 'N', description: `features per transcoder (default ${DEMO_TRANSCODERS.dSae}; not with --pretrained)` },
    'start-year': { type: 'string', value: 'YY', description: 'start year of the traced prompt, 2..97 (default 32)' },
    'experiment-layer': { type: 'string', value: 'L', description: 'MLP layer whose features the experiment removes (default: the circuit\'s main MLP layer)' },
    threads: THREADS_OPTION,
  },
  async run(values) {
    applyThreads(values);
    const tokens = intOption(values.tokens, 'tokens', 1024);
    const dSae = intOption(values['d-sae'], 'd-sae', 1);
    const startYear = intOption(values['start-year'], 'start-year', 2);
    const experimentLayer = intOption(values['experiment-layer'], 'experiment-layer', 0);
    if (values.pretrained === true) rejectOptions(values, ['tokens', 'd-sae'], 'with --pretrained (the shipped transcoders are already trained)');
    const out = (values.out as string | undefined) ?? 'transcoders-demo';
    checkOutputPaths({ out }, { out: 'folder' });
    checkInputPaths(values, ['model']);
    let bar: ProgressBar | null = null;
    let stage: DemoStage | null = null;
    const onProgress = (p: DemoProgress) => {
      if (p.stage !== stage) {
        // A stage can end before its bar is full: end its line before the next stage's bar starts.
        bar?.close();
        bar = new ProgressBar(STAGE_LABELS[p.stage], p.total);
        stage = p.stage;
      }
      bar!.update(p.done, p.detail);
    };
    let result;
    try {
      result = await runDemo({
        out,
        ...(typeof values.model === 'string' ? { model: values.model } : {}),
        pretrained: values.pretrained === true,
        transcoders: { ...(tokens ? { tokens } : {}), ...(dSae ? { dSae } : {}) },
        ...(startYear ? { startYear } : {}),
        ...(experimentLayer !== undefined ? { experimentLayer } : {}),
        onProgress,
      });
    } finally {
      (bar as ProgressBar | null)?.close();
    }
    const e = result.evaluation;
    const x = result.experiment;
    const top = result.logitCircuit.topPaths[0];
    const removed = x.ablations.at(-1);
    console.log(
      [
        `prompt: ${JSON.stringify(result.prompt)}`,
        `transcoders: ${e.layers.map((l) => `layer ${l.layer} FVU ${l.fvu.toFixed(3)} L0 ${l.l0.toFixed(1)}`).join(' · ')}`,
        `CE loss ${e.ceLossClean.toFixed(3)} -> ${e.ceLossReplaced.toFixed(3)} with every MLP replaced (${(100 * e.ceLossRecovered).toFixed(1)}% recovered)`,
        `probability difference: model ${x.original.meanProbDiff.toFixed(3)}, ` +
          x.splicedByLayer.map((s) => `MLP ${s.layer} -> transcoder ${s.result.meanProbDiff.toFixed(3)}`).join(', ') +
          `, all ${x.splicedAll.meanProbDiff.toFixed(3)}` +
          (removed ? `; MLP ${x.layer} without features ${removed.removed.join(',')} ${removed.result.meanProbDiff.toFixed(3)}` : ''),
        top ? `strongest path to the input: ${top.nodes.join(' <- ')} (${top.contribution.toFixed(3)})` : 'no paths found',
        `report: ${result.report}`,
      ].join('\n'),
    );
  },
};
