/**
 * `npm run bench`: runs every benchmark against its PyTorch baseline in the same run and writes
 * bench/results/latest.json. Options: --iters N (timed forwards per round), --rounds N (alternations
 * of ours and PyTorch), --threads N, --cache DIR (where generated
 * benchmark models are kept; default .cache/bench).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { benchForward } from './forward.js';

const { values } = parseArgs({
  options: {
    iters: { type: 'string' },
    rounds: { type: 'string' },
    threads: { type: 'string' },
    cache: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  console.log('Usage: npm run bench -- [--iters N] [--rounds N] [--threads N] [--cache DIR]');
  process.exit(0);
}
const root = new URL('..', import.meta.url).pathname;
const cacheDir = values.cache ?? join(root, '.cache', 'bench');
mkdirSync(cacheDir, { recursive: true });

const forward = await benchForward({
  cacheDir,
  ...(values.iters ? { iters: Number(values.iters) } : {}),
  ...(values.threads ? { threads: Number(values.threads) } : {}),
  ...(values.rounds ? { rounds: Number(values.rounds) } : {}),
});
console.log(`${forward.name} (${forward.threads} threads; libtorch ${forward.torch.ours}, python torch ${forward.torch.python})`);
console.log(`  ${forward.oursTokensPerS.toFixed(0).padStart(8)} tokens/s   ${forward.oursMsMedian.toFixed(1)} ms/forward   ours`);
for (const b of forward.baselines) {
  console.log(`  ${b.tokensPerS.toFixed(0).padStart(8)} tokens/s   ${b.msMedian.toFixed(1)} ms/forward   ${b.label} (ours: ${(forward.oursTokensPerS / b.tokensPerS).toFixed(2)}x)`);
}
console.log(`  ratio    ${forward.ratio.toFixed(2)}x (ours / the fastest PyTorch eager)`);

const resultsDir = join(root, 'bench', 'results');
mkdirSync(resultsDir, { recursive: true });
writeFileSync(join(resultsDir, 'latest.json'), JSON.stringify({ date: new Date().toISOString(), forward }, null, 2));
