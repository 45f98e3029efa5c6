#!/usr/bin/env node
/**
 * The long fuzz run (`npm run fuzz`): for each parser, N seeded inputs (default 10,000) run in a
 * child process (test/fuzz/worker.ts) that is restarted after a crash, so that a crash is reported
 * with its input saved rather than hidden. An input that takes longer than --timeout seconds
 * (default 10) counts as a hang: the child is killed, the input saved, and the run goes on from the
 * next one. Writes <out>/results.json and prints a table (inputs, outcomes by class, slowest input,
 * peak child memory). Exits 1 when anything but library errors naming the file was seen.
 *
 *   npm run fuzz -- [--inputs 10000] [--parsers safetensors,model] [--seed 1] [--timeout 10] [--out fuzz-out]
 */
import { fork } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PARSERS = ['safetensors', 'token-file', 'torch-pt', 'saelens', 'sparsify', 'native', 'circuit-tracer', 'model', 'activation-cache', 'tokenizer', 'gemma-scope', 'gemma-scope-2'];

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : fallback;
};
const inputs = Number(opt('inputs', '10000'));
const seed = Number(opt('seed', '1'));
const timeoutMs = Number(opt('timeout', '10')) * 1000;
const out = resolve(opt('out', 'fuzz-out'));
const parsers = opt('parsers', PARSERS.join(',')).split(',');
for (const p of parsers) if (!PARSERS.includes(p)) throw new Error(`unknown parser '${p}' (known: ${PARSERS.join(', ')})`);
if (!Number.isInteger(inputs) || inputs < 1) throw new Error(`--inputs must be a positive integer`);

mkdirSync(out, { recursive: true });
const work = mkdtempSync(join(tmpdir(), 'transcoders-fuzz-'));
const WORKER = join(ROOT, 'test', 'fuzz', 'worker.ts');

function spawnWorker(job) {
  // A bounded JS heap: runaway allocation ends the child (reported as a crash), not the machine.
  return fork(WORKER, [], { execArgv: ['--import', 'tsx', '--max-old-space-size=4096'], cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] }).on('spawn', function () {
    this.send(job);
  });
}

/** Saves input `index` of `parser` (regenerated from the seed in a fresh child) under out/<kind>/. */
function saveInput(parser, index, kind) {
  const dir = join(out, kind, `${parser}-${index}`);
  return new Promise((done) => {
    const child = spawnWorker({ parser, seed, start: 0, count: 0, work, dump: { index, dir } });
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('exit', () => (clearTimeout(timer), done(dir)));
  });
}

/** Runs inputs [start, inputs) in one child; resolves with where it stopped and why. */
function runChild(parser, start, result) {
  return new Promise((done) => {
    const child = spawnWorker({ parser, seed, start, count: inputs - start, work });
    let current = -1;
    let timer = null;
    let finished = false;
    let stderr = '';
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
    child.on('message', (m) => {
      if (m.type === 'start') {
        current = m.index;
        clearTimeout(timer);
        timer = setTimeout(() => {
          child.kill('SIGKILL');
          done({ stoppedAt: current, why: 'hang' });
        }, timeoutMs);
      } else if (m.type === 'done') {
        clearTimeout(timer);
        result.inputs++;
        result.outcomes[m.outcome] = (result.outcomes[m.outcome] ?? 0) + 1;
        if (m.ms > result.maxMs) (result.maxMs = m.ms), (result.slowest = m.index);
        result.peakRssMb = Math.max(result.peakRssMb, Math.round(m.rss / 2 ** 20));
        if (m.outcome.startsWith('BAD:') && result.findings.length < 50) result.findings.push({ index: m.index, outcome: m.outcome, message: m.message });
        if (result.inputs % 1000 === 0) console.error(`  ${parser}: ${result.inputs} inputs`);
      } else if (m.type === 'finished') {
        finished = true;
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (finished) done({ stoppedAt: inputs, why: 'finished' });
      else done({ stoppedAt: current, why: `crash (exit ${code ?? signal})`, stderr });
    });
  });
}

const results = [];
const t0 = Date.now();
for (const parser of parsers) {
  const result = { parser, inputs: 0, outcomes: {}, maxMs: 0, slowest: -1, peakRssMb: 0, crashes: [], hangs: [], findings: [] };
  const started = Date.now();
  for (let start = 0; start < inputs; ) {
    const { stoppedAt, why, stderr } = await runChild(parser, start, result);
    if (why === 'finished') break;
    const index = Math.max(stoppedAt, start);
    const saved = await saveInput(parser, index, why === 'hang' ? 'hangs' : 'crashes');
    (why === 'hang' ? result.hangs : result.crashes).push({ index, why, saved, ...(stderr ? { stderr: stderr.slice(-1500) } : {}) });
    result.inputs++;
    result.outcomes[why === 'hang' ? 'HANG' : 'CRASH'] = (result.outcomes[why === 'hang' ? 'HANG' : 'CRASH'] ?? 0) + 1;
    console.error(`  ${parser}: input ${index}: ${why}; saved to ${saved}`);
    start = index + 1;
  }
  result.seconds = Math.round((Date.now() - started) / 1000);
  results.push(result);
  writeFileSync(join(out, 'results.json'), JSON.stringify({ seed, inputsPerParser: inputs, timeoutMs, results }, null, 2) + '\n');
  console.error(`${parser}: ${result.inputs} inputs in ${result.seconds} s, ${JSON.stringify(result.outcomes)}, slowest ${result.maxMs.toFixed(0)} ms (input ${result.slowest})`);
}
rmSync(work, { recursive: true, force: true });

console.log(`\n| parser | inputs | accepted | FormatError | other library errors | findings (BAD) | crashes | hangs | max ms / input | peak RSS MB |`);
console.log(`|---|---|---|---|---|---|---|---|---|---|`);
let bad = 0;
for (const r of results) {
  const o = r.outcomes;
  const findings = Object.entries(o).filter(([k]) => k.startsWith('BAD:')).reduce((a, [, n]) => a + n, 0);
  const otherLib = Object.entries(o).filter(([k]) => k !== 'ok' && k !== 'FormatError' && !k.startsWith('BAD:') && k !== 'HANG' && k !== 'CRASH').map(([k, n]) => `${k} ${n}`).join(', ') || '0';
  bad += findings + r.crashes.length + r.hangs.length;
  console.log(`| ${r.parser} | ${r.inputs} | ${o.ok ?? 0} | ${o.FormatError ?? 0} | ${otherLib} | ${findings} | ${r.crashes.length} | ${r.hangs.length} | ${r.maxMs.toFixed(0)} | ${r.peakRssMb} |`);
}
console.log(`\n${results.length} parsers, ${Math.round((Date.now() - t0) / 1000)} s; results in ${join(out, 'results.json')}`);
process.exit(bad > 0 ? 1 : 0);
