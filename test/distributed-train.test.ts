/**
 * Data-parallel training (`transcoders train --nproc N`, or one process per rank from the launcher
 * variables): the identity that defines it is that N processes, each training on its slice of every
 * global batch and summing gradients over gloo, reach the weights one process reaches on the same
 * global batches. Checked for relu (the paper recipe, with ghost gradients active) and topk (AuxK
 * active), from the model and from an activation cache, and for runs stopped on one world size and
 * resumed on another. A rank killed mid-run ends the others with a DistributedError and leaves every
 * checkpoint complete.
 *
 * Tolerance: 1e-5 of each tensor's largest magnitude (the ranks' partial sums are added in another
 * order than one process adds them; the differences measured are ~2e-7).
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { writeTokenFile } from '../lib/data/token-file.js';
import { loadTranscoder } from '../lib/transcoders/formats/index.js';
import { checkCheckpoint, findResumePoint } from '../lib/transcoders/checkpoints.js';
import type { Tensor } from '../lib/tensor.js';
import { Rng } from '../lib/util/random.js';
import { ensureDist, ROOT, runCli } from './helpers/cli.js';
import { maxDiff } from './helpers/reference.js';
import { makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';

const CONTEXT = 16;
let model: string;
let tokens: string;
let work: string;

beforeAll(async () => {
  ensureDist();
  model = makeTempModel(TINY_GPT2);
  work = tempDir('transcoders-dp-');
  tokens = join(work, 'tokens.safetensors');
  const rng = new Rng(3);
  await writeTokenFile(tokens, (function* () {
    for (let r = 0; r < 4000; r++) yield Int32Array.from({ length: CONTEXT }, () => rng.int(TINY_GPT2.vocabSize));
  })(), { contextSize: CONTEXT, tokenizer: 'random', bos: 'none', sources: [], documents: 4000 });
}, 60_000);

/** `transcoders train` with these arguments (one process unless they include --nproc); fails the test on a non-zero exit. */
function train(args: string[]): string {
  const r = runCli(['train', ...args, '-q']);
  if (r.status !== 0) throw new Error(`transcoders train ${args.join(' ')} exited ${r.status}:\n${r.stderr}`);
  return r.stdout;
}

/** The largest difference between the two runs' final weights, relative to each tensor's largest magnitude. */
async function weightDifference(a: string, b: string, layers = [0, 1]): Promise<number> {
  let worst = 0;
  for (const l of layers) {
    const ta = (await loadTranscoder(join(a, `layer_${l}`))).parameters();
    const tb: Record<string, Tensor> = (await loadTranscoder(join(b, `layer_${l}`))).parameters();
    expect(Object.keys(tb).sort()).toEqual(Object.keys(ta).sort());
    for (const [name, t] of Object.entries(ta)) {
      const { diff, scale } = maxDiff(tb[name]!, t);
      worst = Math.max(worst, scale > 0 ? diff / scale : diff);
    }
  }
  return worst;
}

/** The step metrics of a run's log (one line per layer and report). */
function logLines(out: string): { step: number; layer: number; total: number; fvu: number; l0: number; ghost: number; sparsity: number; deadFraction: number; collectiveSeconds?: number }[] {
  return readFileSync(join(out, 'train.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((l) => l.step !== undefined);
}

describe('data-parallel training over gloo', () => {
  const common = () => ['--data', tokens, '--layers', '0,1', '--d-sae', '64', '--batch-size', '64', '--no-shuffle', '--dead-feature-window', '2', '--log-every', '1'];
  // A strong L1 at a high learning rate kills features within a few steps: the ghost gradients then run.
  const relu = () => [...common(), '--l1', '1', '--lr', '0.03', '--lr-schedule', 'constant'];
  const topk = () => [...common(), '--arch', 'topk', '--k', '4'];

  it('relu, the paper recipe and the standard one (FVU over the global batch): 2 processes train the weights of 1 process', async () => {
    for (const recipe of ['paper', 'standard']) {
      const one = join(work, `relu-${recipe}-1`);
      const two = join(work, `relu-${recipe}-2`);
      train([model, ...common(), '--recipe', recipe, '--steps', '12', '--out', one, '--threads', '1']);
      const said = train([model, ...common(), '--recipe', recipe, '--steps', '12', '--out', two, '--nproc', '2']);
      expect(said).toMatch(/trained 12 steps, 768 tokens in 2 processes/);
      expect(await weightDifference(one, two), recipe).toBeLessThan(1e-5);
      // Only rank 0 wrote the log: one line per layer and step, with the collectives' time.
      const a = logLines(one);
      const b = logLines(two);
      expect(b.length).toBe(a.length);
      // The metrics are the global batch's: the FVU's variance is over both ranks' rows.
      b.forEach((l, i) => expect(Math.abs(l.fvu - a[i]!.fvu), `fvu at step ${l.step}`).toBeLessThanOrEqual(1e-5 * a[i]!.fvu));
      expect(b.every((l) => typeof l.collectiveSeconds === 'number' && l.collectiveSeconds >= 0)).toBe(true);
    }
  }, 60_000);

  it('relu with ghost gradients: every loss term of every step is the one-process value', () => {
    // A strong L1 at a high learning rate kills features within a few steps: the ghost gradients then run.
    const one = join(work, 'ghost-1');
    const two = join(work, 'ghost-2');
    train([model, ...relu(), '--steps', '18', '--out', one, '--threads', '1']);
    train([model, ...relu(), '--steps', '18', '--out', two, '--nproc', '2']);
    const a = logLines(one);
    const b = logLines(two);
    expect(a.filter((l) => l.ghost !== 0).length).toBeGreaterThanOrEqual(3);
    // The losses agree to 1e-6. (The weights are not compared: Adam scales the tiny ghost gradients
    // of features far below zero up to full steps, and their rounding with them.)
    expect(b.length).toBe(a.length);
    b.forEach((l, i) => {
      for (const key of ['total', 'ghost', 'sparsity', 'deadFraction'] as const) {
        expect(Math.abs(l[key] - a[i]![key]), `${key} at step ${l.step}`).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(a[i]![key])));
      }
    });
  }, 60_000);

  it('topk with AuxK: 2 processes train the weights of 1 process', async () => {
    const one = join(work, 'topk-1');
    const two = join(work, 'topk-2');
    train([model, ...topk(), '--steps', '12', '--out', one, '--threads', '1']);
    train([model, ...topk(), '--steps', '12', '--out', two, '--nproc', '2']);
    expect(await weightDifference(one, two)).toBeLessThan(1e-5);
    expect(logLines(two).filter((l) => l.sparsity > 0).length).toBeGreaterThan(4);  // AuxK was active
  }, 60_000);

  it('jumprelu (the autograd step, L0 with straight-through threshold gradients): 2 processes train the weights of 1 process', async () => {
    const args = [model, ...common(), '--arch', 'jumprelu', '--steps', '10'];
    train([...args, '--out', join(work, 'jump-1'), '--threads', '1']);
    train([...args, '--out', join(work, 'jump-2'), '--nproc', '2']);
    expect(await weightDifference(join(work, 'jump-1'), join(work, 'jump-2'))).toBeLessThan(1e-5);
  }, 60_000);

  it('a run stopped on 2 processes resumes on 1, and one stopped on 1 resumes on 2, exactly', async () => {
    const whole = join(work, 'topk-1');  // 12 steps in one process (previous test)
    const twoThenOne = join(work, 'resume-2-1');
    train([model, ...topk(), '--steps', '5', '--out', twoThenOne, '--nproc', '2']);
    train([model, ...topk(), '--steps', '12', '--out', twoThenOne, '--resume', '--threads', '1']);
    expect(await weightDifference(whole, twoThenOne)).toBeLessThan(1e-5);
    const oneThenTwo = join(work, 'resume-1-2');
    train([model, ...topk(), '--steps', '5', '--out', oneThenTwo, '--threads', '1']);
    train([model, ...topk(), '--steps', '12', '--out', oneThenTwo, '--resume', '--nproc', '2']);
    expect(await weightDifference(whole, oneThenTwo)).toBeLessThan(1e-5);
    // The checkpoint written by the 2-process run says so; the data position is global.
    const { latest } = findResumePoint(join(oneThenTwo, 'checkpoints'));
    expect(latest!.state).toMatchObject({ step: 12, position: 12 * 64, worldSize: 2 });
  }, 90_000);

  it('from an activation cache: each rank keeps its rows of every shard', async () => {
    const cache = join(work, 'cache');
    const c = runCli(['cache', model, '--layers', '0,1', '--data', tokens, '--out', cache, '--shard-rows', '200', '--sequences', '60']);
    expect(c.status, c.stderr).toBe(0);
    // 24 rows per rank and step: slices that straddle the 200-row shards.
    const args = ['--activations', cache, '--d-sae', '64', '--batch-size', '48', '--no-shuffle', '--arch', 'topk', '--k', '4', '--dead-feature-window', '2', '--steps', '15'];
    train([...args, '--out', join(work, 'cache-1'), '--threads', '1']);
    train([...args, '--out', join(work, 'cache-2'), '--nproc', '2']);
    expect(await weightDifference(join(work, 'cache-1'), join(work, 'cache-2'))).toBeLessThan(1e-5);
  }, 60_000);

  it('shuffled: the ranks stop together when the data runs out, and the run resumes', () => {
    const out = join(work, 'shuffled');
    const said = train([model, '--data', tokens, '--layers', '0', '--d-sae', '32', '--batch-size', '64', '--buffer-rows', '256', '--steps', '100000', '--out', out, '--nproc', '2']);
    // 4000 x 16 rows, 32 per rank and step: every rank's slice runs out at the same step.
    const steps = Number(/trained (\d+) steps/.exec(said)![1]);
    expect(said).toContain('(the data ran out)');
    expect(steps).toBeGreaterThan(900);
    expect(steps).toBeLessThanOrEqual(1000);
    const again = train([model, '--data', tokens, '--layers', '0', '--d-sae', '32', '--batch-size', '64', '--buffer-rows', '256', '--steps', String(steps + 5), '--out', out, '--resume', '--threads', '1']);
    expect(again).toMatch(/trained \d+ steps/);
  }, 90_000);

  it('feature-sharded over 2 processes: relu (dense and sparse steps) and topk (AuxK active) train the weights of unsharded training', async () => {
    // relu-sparse: a strong L1 leaves ~1-3 of 64 features active, so the step takes the sparse products;
    // topk clips its gradient (the norm over both ranks' features).
    const runs = [
      ['relu', ['--ghost-grads', 'off']], ['relu-sparse', ['--ghost-grads', 'off', '--l1', '1', '--lr', '0.03', '--lr-schedule', 'constant']], ['topk', ['--arch', 'topk', '--k', '4', '--max-grad-norm', '0.05']],
    ] as const;
    for (const [name, arch] of runs) {
      const one = join(work, `shard-${name}-1`);
      const two = join(work, `shard-${name}-2`);
      train([model, ...common(), ...arch, '--steps', '14', '--out', one, '--threads', '1']);
      const said = train([model, ...common(), ...arch, '--steps', '14', '--out', two, '--nproc', '2', '--shard-features']);
      expect(said).toMatch(/features sharded over 2 processes/);
      expect(await weightDifference(one, two), name).toBeLessThan(1e-5);
      const a = logLines(one);
      const b = logLines(two);
      // The metrics are the whole transcoder's (L1 and L0 summed over the shards).
      b.forEach((l, i) => {
        for (const key of ['total', 'sparsity', 'deadFraction'] as const) {
          expect(Math.abs(l[key] - a[i]![key]), `${name} ${key} at step ${l.step}`).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(a[i]![key])));
        }
      });
      if (name === 'topk') expect(a.filter((l) => l.sparsity > 0).length).toBeGreaterThan(1);  // AuxK ran, across the shards
      if (name === 'relu-sparse') expect(Math.min(...a.map((l) => l.l0))).toBeLessThan(0.02 * 64);
    }
    // The saved transcoder is whole.
    expect((await loadTranscoder(join(work, 'shard-topk-2', 'layer_0'))).config.dSae).toBe(64);
  }, 90_000);

  it('a feature-sharded run resumes unsharded, and an unsharded one resumes sharded, exactly', async () => {
    const whole = join(work, 'shard-topk-1');  // 14 steps unsharded (previous test)
    const args = [model, ...common(), '--arch', 'topk', '--k', '4', '--max-grad-norm', '0.05'];
    const shardedFirst = join(work, 'shard-resume-a');
    train([...args, '--steps', '5', '--out', shardedFirst, '--nproc', '2', '--shard-features']);
    train([...args, '--steps', '14', '--out', shardedFirst, '--resume', '--threads', '1']);
    expect(await weightDifference(whole, shardedFirst)).toBeLessThan(1e-5);
    const shardedSecond = join(work, 'shard-resume-b');
    train([...args, '--steps', '5', '--out', shardedSecond, '--threads', '1']);
    train([...args, '--steps', '14', '--out', shardedSecond, '--resume', '--nproc', '2', '--shard-features']);
    expect(await weightDifference(whole, shardedSecond)).toBeLessThan(1e-5);
  }, 90_000);

  it('refuses what it cannot split, naming the option', () => {
    const cases: [string[], RegExp][] = [
      [['--batch-size', '40', '--nproc', '2'], /multiple of 2 x 16 = 32/],
      [['--batch-size', '63', '--nproc', '2'], /does not split over 2 processes/],
      [['--arch', 'clt-relu', '--layers', '0-1', '--nproc', '2'], /per-layer transcoders/],
      [['--resample-every', '5', '--nproc', '2'], /--resample-every/],
      [['--nproc', '0'], /--nproc/],
      [['--shard-features'], /--shard-features splits the features over processes/],
      [['--shard-features', '--nproc', '2'], /--ghost-grads off/],
      [['--shard-features', '--nproc', '2', '--ghost-grads', 'off', '--d-sae', '33'], /--d-sae 33 does not split over 2/],
      [['--shard-features', '--nproc', '2', '--arch', 'jumprelu'], /relu and topk/],
    ];
    for (const [extra, message] of cases) {
      const r = runCli(['train', model, '--data', tokens, '--layers', '0', '--d-sae', '32', '--steps', '2', '--out', join(work, 'refused'), '-q', '--batch-size', '64', ...extra]);
      expect(r.status, extra.join(' ')).toBe(2);
      expect(r.stderr, extra.join(' ')).toMatch(message);
    }
  }, 60_000);

  it('Ctrl-C to --nproc stops every rank after the same step, and rank 0 writes the checkpoint', async () => {
    const out = join(work, 'interrupted');
    const launcher = spawn(process.execPath, [join(ROOT, 'bin/transcoders.js'), 'train', model, '--data', tokens, '--layers', '0', '--d-sae', '32', '--batch-size', '64', '--steps', '100000', '--checkpoint-every', '64000000', '--out', out, '-q', '--nproc', '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    launcher.stdout!.on('data', (d) => (stdout += d));
    launcher.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((done) => launcher.on('exit', (code) => done(code)));
    const log = join(out, 'train.jsonl');
    const t0 = Date.now();
    while (!(existsSync(log) && readFileSync(log, 'utf8').split('\n').length > 3)) {
      if (Date.now() - t0 > 30_000) throw new Error(`no progress after 30 s: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    launcher.kill('SIGINT');
    expect(await exited, stderr).toBe(0);
    const steps = Number(/trained (\d+) steps/.exec(stdout)![1]);
    expect(stdout).toContain('(stopped; resume with --resume)');
    expect(findResumePoint(join(out, 'checkpoints')).latest!.state.step).toBe(steps);
    const again = train([model, '--data', tokens, '--layers', '0', '--d-sae', '32', '--batch-size', '64', '--steps', String(steps + 2), '--out', out, '--resume', '--nproc', '2']);
    expect(again).toContain(`trained ${steps + 2} steps`);
  }, 90_000);

  it('text data: rank 0 tokenises it once and every rank reads its slice of that file', () => {
    const text = join(work, 'text.jsonl');
    const docs = Array.from({ length: 300 }, (_, i) => JSON.stringify({ text: `document ${i} says the quick brown fox jumps over the lazy dog ${i % 7} times` }));
    writeFileSync(text, docs.join('\n') + '\n');
    const args = ['--data', text, '--context-size', '16', '--layers', '0', '--d-sae', '32', '--batch-size', '64', '--no-shuffle', '--steps', '6'];
    train([model, ...args, '--out', join(work, 'text-1'), '--threads', '1']);
    train([model, ...args, '--out', join(work, 'text-2'), '--nproc', '2']);
    expect(existsSync(join(work, 'text-2', 'tokens.safetensors'))).toBe(true);
    return weightDifference(join(work, 'text-1'), join(work, 'text-2'), [0]).then((diff) => expect(diff).toBeLessThan(1e-5));
  }, 60_000);

  it('a killed rank ends the run on the others with an error, and no checkpoint is broken', async () => {
    const out = join(work, 'killed');
    const port = 20000 + Math.floor(Math.random() * 20000);
    const start = (rank: number) => spawn(process.execPath, [join(ROOT, 'bin/transcoders.js'), 'train', model, '--data', tokens, '--layers', '0,1', '--d-sae', '64', '--batch-size', '64', '--steps', '100000', '--checkpoint-every', '640', '--out', out, '-q', '--threads', '1', '--dist-timeout', '30'], {
      env: { ...process.env, MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), RANK: String(rank), WORLD_SIZE: '2' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const ranks = [start(0), start(1)];
    let stderr0 = '';
    ranks[0]!.stderr!.on('data', (d) => (stderr0 += d));
    const exit0 = new Promise<number | null>((done) => ranks[0]!.on('exit', (code) => done(code)));
    // Once a few checkpoints exist, kill rank 1 (mid-step, or mid-write of nothing: rank 0 writes).
    const checkpoints = join(out, 'checkpoints');
    const t0 = Date.now();
    while (!(existsSync(checkpoints) && readdirSync(checkpoints).filter((d) => d.startsWith('step_')).length >= 2)) {
      if (Date.now() - t0 > 30_000) throw new Error(`no checkpoints after 30 s: ${stderr0}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const killedAt = Date.now();
    ranks[1]!.kill('SIGKILL');
    const code = await exit0;
    const took = (Date.now() - killedAt) / 1000;
    expect(code).toBe(1);
    expect(took).toBeLessThan(30);  // within the timeout (in practice at the next step)
    expect(stderr0).toMatch(/transcoders train: .*allReduce on rank 0/);
    // Every checkpoint left is complete, and the run resumes from the newest.
    const point = findResumePoint(checkpoints);
    expect(point.skipped).toEqual([]);
    for (const dir of readdirSync(checkpoints)) expect(checkCheckpoint(join(checkpoints, dir))).toHaveProperty('state');
    const step = point.latest!.state.step;
    const resumed = train([model, '--data', tokens, '--layers', '0,1', '--d-sae', '64', '--batch-size', '64', '--steps', String(step + 3), '--out', out, '--resume', '--threads', '1']);
    expect(resumed).toMatch(new RegExp(`trained ${step + 3} steps`));
  }, 90_000);
});
