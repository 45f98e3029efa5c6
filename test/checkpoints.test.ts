/**
 * No checkpoint is ever lost: broken or half-written checkpoints are skipped on resume (with a
 * warning), a rewritten step always has a complete copy, write failures (disk full, file-size
 * limit) are IoErrors naming the file and leave the earlier checkpoints intact, one run per output
 * folder (a lock), conflicting resume options are errors, and training processes SIGKILLed at
 * random moments (also inside checkpoint writes and pruning) resume to bit-identical weights.
 *
 * The runs train from a small synthetic activation cache (no model forward), so each child process
 * costs little more than its start-up.
 */
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { IoError, InvalidArgumentError } from '../lib/errors.js';
import { writeSafetensors } from '../lib/io/safetensors.js';
import { LOCK_FILE } from '../lib/io/lock.js';
import { Tensor } from '../lib/tensor.js';
import { CACHE_FORMAT } from '../lib/transcoders/activation-cache.js';
import { findResumePoint, listCheckpoints, MANIFEST_FILE, readTrainerState, STATE_FILE, TRAINER_STATE_FILE } from '../lib/transcoders/checkpoints.js';
import { CONFIG_FILE, loadNativeTranscoder, WEIGHTS_FILE } from '../lib/transcoders/formats/native.js';
import { trainTranscoders, type TrainRunOptions } from '../lib/transcoders/training-run.js';
import { tempDir } from './helpers/fixtures.js';

const D = 16;
const ROWS = 2048;
let cacheDir: string;

/** A deterministic pseudo-random stream (mulberry32), for the data and the trial plan. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

beforeAll(() => {
  // An activation cache of one layer: inputs uniform, targets a ReLU of two input dimensions.
  cacheDir = join(tempDir(), 'layer_0');
  mkdirSync(cacheDir, { recursive: true });
  const r = rng(7);
  const x = Float32Array.from({ length: ROWS * D }, () => r() - 0.5);
  const y = Float32Array.from({ length: ROWS * D }, (_, i) => Math.max(0, x[i]! + x[i - (i % D) + ((i + 1) % D)]!));
  writeSafetensors(join(cacheDir, 'shard_00000.safetensors'), { input: Tensor.from(x, [ROWS, D]), target: Tensor.from(y, [ROWS, D]) });
  writeFileSync(join(cacheDir, 'meta.json'), JSON.stringify({
    format: CACHE_FORMAT, version: 1, model: 'synthetic', processing: 'none', layer: 0, hookIn: 'blocks.0.ln2.hook_normalized', hookOut: 'blocks.0.hook_mlp_out',
    dtype: 'float32', dIn: D, dOut: D, count: ROWS, contextSize: 16, tokenFile: '', shards: [{ file: 'shard_00000.safetensors', rows: ROWS }],
  }));
});

function base(out: string): TrainRunOptions {
  return { data: { activations: cacheDir }, layers: [0], arch: 'relu', dSae: 32, batchSize: 32, steps: 12, checkpointEveryTokens: 96, lr: 3e-3, l1Coefficient: 1e-4, schedule: 'constant', noShuffle: true, out };
}

function weightBytes(dir: string): Buffer {
  return readFileSync(join(dir, 'layer_0', WEIGHTS_FILE));
}

/** Every file or folder name under `dir`, recursively. */
function allNames(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' });
}

const TSX = 'tsx';
const href = (rel: string) => JSON.stringify(new URL(rel, import.meta.url).href);

describe('resume selection', () => {
  it('falls back past a broken checkpoint (saying so), recovers a complete temporary copy, cleans leftovers, and resumes exactly', async () => {
    const whole = await trainTranscoders(base(tempDir()));
    const reference = weightBytes(whole.out);

    // Killed while rewriting step 9: the copy in place lost a file, a complete temporary copy exists.
    const a = tempDir();
    await trainTranscoders({ ...base(a), steps: 9 });
    const ckpts = join(a, 'checkpoints');
    cpSync(join(ckpts, 'step_000000009'), join(ckpts, 'step_000000009.tmp-1-abcd'), { recursive: true });
    rmSync(join(ckpts, 'step_000000009', 'layer_0', CONFIG_FILE));
    mkdirSync(join(ckpts, 'step_000000003.del-1-abcd', 'layer_0'), { recursive: true }); // half-pruned
    mkdirSync(join(ckpts, 'step_000000012.tmp-1-ffff', 'layer_0'), { recursive: true }); // half-written
    expect(listCheckpoints(ckpts).map((c) => c.state.step)).toEqual([6]);
    const warnings: string[] = [];
    const resumed = await trainTranscoders({ ...base(a), resume: true, onWarning: (w) => warnings.push(w) });
    expect(resumed.resumed!.step).toBe(9);
    expect(resumed.resumed!.skipped.map((s) => s.step)).toEqual([9]);
    expect(warnings.join('\n')).toMatch(/step_000000009 is broken \(layer_0\/cfg\.json is missing\); falling back/);
    expect(weightBytes(a).equals(reference)).toBe(true);
    expect(readdirSync(ckpts).sort()).toEqual(['step_000000009', 'step_000000012']);

    // Only the broken copy: back to step 6, and still the same weights.
    const b = tempDir();
    await trainTranscoders({ ...base(b), steps: 9 });
    const broken = join(b, 'checkpoints', 'step_000000009', 'layer_0', TRAINER_STATE_FILE);
    writeFileSync(broken, readFileSync(broken).subarray(0, 100)); // truncated
    const fallback = await trainTranscoders({ ...base(b), resume: true });
    expect(fallback.resumed!.step).toBe(6);
    expect(fallback.warnings[0]).toMatch(/trainer\.safetensors has 100 bytes, the manifest says \d+/);
    expect(weightBytes(b).equals(reference)).toBe(true);
  });

  it('a checkpoint counts only with its manifest and every listed file at its size', async () => {
    const out = tempDir();
    await trainTranscoders({ ...base(out), steps: 6 });
    const ckpts = join(out, 'checkpoints');
    const manifest = JSON.parse(readFileSync(join(ckpts, 'step_000000006', MANIFEST_FILE), 'utf8'));
    expect(manifest.files.map((f: { path: string }) => f.path).sort()).toEqual(['layer_0/cfg.json', 'layer_0/trainer.safetensors', 'layer_0/transcoder.safetensors', 'state.json']);
    rmSync(join(ckpts, 'step_000000006', MANIFEST_FILE));
    expect(listCheckpoints(ckpts).map((c) => c.state.step)).toEqual([3]);
    rmSync(join(ckpts, 'step_000000003', 'layer_0', WEIGHTS_FILE));
    expect(findResumePoint(ckpts).latest).toBeUndefined();
    await expect(trainTranscoders({ ...base(out), resume: true })).rejects.toThrow(/no complete checkpoint in .*checkpoints \(2 broken\)/);
  });
});

describe('resume options', () => {
  it('refuses a different dSae, arch, skip or k, naming the option and both values', async () => {
    const out = tempDir();
    await trainTranscoders({ ...base(out), steps: 3 });
    const resume = (o: Partial<TrainRunOptions>) => trainTranscoders({ ...base(out), resume: true, ...o });
    await expect(resume({ dSae: 64 })).rejects.toThrow(/dSae \(--d-sae\) is 32 in the checkpoint, 64 was given/);
    await expect(resume({ arch: 'topk', k: 4 })).rejects.toThrow(/arch \(--arch\) is "relu" in the checkpoint, "topk" was given/);
    await expect(resume({ skip: true })).rejects.toThrow(InvalidArgumentError);
    await expect(resume({ skip: true })).rejects.toThrow(/skip \(--skip\) is false in the checkpoint, true was given/);
    const topk = tempDir();
    await trainTranscoders({ ...base(topk), arch: 'topk', k: 4, steps: 3 });
    await expect(trainTranscoders({ ...base(topk), arch: 'topk', k: 8, resume: true })).rejects.toThrow(/k \(--k\) is 4 in the checkpoint, 8 was given/);
    expect(existsSync(join(out, LOCK_FILE))).toBe(false); // released on the error too
  });

  it('allows a changed lr and seed and records from which step they apply', async () => {
    const out = tempDir();
    await trainTranscoders({ ...base(out), steps: 6, seed: 1 });
    const r = await trainTranscoders({ ...base(out), resume: true, lr: 1e-3, seed: 2 });
    expect(r.resumed!.changes).toEqual(expect.arrayContaining([
      { step: 6, option: 'lr', from: 3e-3, to: 1e-3 },
      { step: 6, option: 'seed', from: 1, to: 2 },
    ]));
    const last = listCheckpoints(join(out, 'checkpoints')).at(-1)!;
    expect(last.state.step).toBe(12);
    expect(last.state.changes!.filter((c) => c.option === 'lr')).toEqual([{ step: 6, option: 'lr', from: 3e-3, to: 1e-3 }]);
    const log = readFileSync(join(out, 'train.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const event = log.find((l) => l.event === 'resume');
    expect(event.step).toBe(6);
    expect(event.changes).toContainEqual({ step: 6, option: 'lr', from: 3e-3, to: 1e-3 });
    expect(r.transcoders[0]!.config.training!.lr).toBe(1e-3);
  });
});

describe('output folder lock', () => {
  it('refuses a second run into the same folder, naming the owner, and releases at the end', async () => {
    const out = tempDir();
    const controller = new AbortController();
    const first = trainTranscoders({ ...base(out), steps: 100000, signal: controller.signal, onProgress: () => controller.abort() , logEvery: 1 });
    const second = trainTranscoders({ ...base(out) });
    await expect(second).rejects.toThrow(IoError);
    await expect(second).rejects.toThrow(new RegExp(`in use by process ${process.pid} \\(transcoders train`));
    expect((await first).stopped).toBe(true);
    expect(existsSync(join(out, LOCK_FILE))).toBe(false);
  });

  it('refuses a live owner, takes over a stale lock (saying so)', async () => {
    const out = tempDir();
    const sleeper = spawn('sleep', ['30']);
    try {
      writeFileSync(join(out, LOCK_FILE), JSON.stringify({ pid: sleeper.pid, host: hostname(), since: 'then', what: 'transcoders train' }));
      await expect(trainTranscoders({ ...base(out), steps: 3 })).rejects.toThrow(new RegExp(`in use by process ${sleeper.pid} `));
    } finally {
      sleeper.kill('SIGKILL');
    }
    const dead = spawnSync('true').pid; // exited: its pid names no running process
    writeFileSync(join(out, LOCK_FILE), JSON.stringify({ pid: dead, host: hostname(), since: 'then', what: 'transcoders train' }));
    const r = await trainTranscoders({ ...base(out), steps: 3 });
    expect(r.warnings.join('\n')).toMatch(new RegExp(`took over the stale lock of process ${dead}`));
    expect(existsSync(join(out, LOCK_FILE))).toBe(false);
  });
});

/** Runs the CLI in a child process, optionally under a file-size limit (KiB). */
function cliChild(args: string[], fileLimitKb?: number): { status: number | null; stderr: string } {
  const runner = join(tempDir(), 'cli.mjs');
  // With SIGXFSZ handled, a write past the limit fails with EFBIG instead of killing the process.
  writeFileSync(runner, `process.on('SIGXFSZ', () => {});\nconst { main } = await import(${href('../lib/cli/main.ts')});\nprocess.exitCode = await main(process.argv.slice(2));\n`);
  const node = [process.execPath, '--import', TSX, runner, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const script = fileLimitKb !== undefined ? `ulimit -f ${fileLimitKb}; exec ${node}` : `exec ${node}`;
  const r = spawnSync('bash', ['-c', script], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stderr: r.stderr };
}

const cliArgs = (out: string, steps: number) => ['train', '--activations', cacheDir, '--d-sae', '256', '--batch-size', '32', '--steps', String(steps), '--checkpoint-every', '96',
  '--no-shuffle', '--lr', '0.003', '--lr-schedule', 'constant', '--recipe', 'standard', '--out', out, '-q'];

async function expectIntact(out: string, step: number): Promise<void> {
  const last = listCheckpoints(join(out, 'checkpoints')).at(-1)!;
  expect(last.state.step).toBe(step);
  expect((await loadNativeTranscoder(join(last.dir, 'layer_0'))).config.dSae).toBe(256);
  expect(Object.keys(await readTrainerState(last.dir, 0)).length).toBeGreaterThan(0);
  expect(allNames(out).filter((n) => n.includes('.tmp'))).toEqual([]);
  expect(existsSync(join(out, LOCK_FILE))).toBe(false);
}

describe('write failures', () => {
  it('a file-size limit mid-run: an IoError naming the file, exit code 1, the earlier checkpoints intact', async () => {
    const out = tempDir();
    await trainTranscoders({ ...base(out), dSae: 256, recipe: 'standard', steps: 9 });
    await expectIntact(out, 9);
    // The resumed run's first checkpoint (its trainer state is ~70 KB) exceeds a 40 KiB file-size limit.
    const r = cliChild([...cliArgs(out, 18), '--resume'], 40);
    expect(r.stderr).toMatch(/^transcoders train: \S+step_000000012\.tmp-[\w-]+\/layer_0\/trainer\.safetensors: cannot write \(file too large .*EFBIG\)$/m);
    expect(r.status).toBe(1);
    await expectIntact(out, 9);
    // Without the limit the run resumes from there.
    await trainTranscoders({ ...base(out), dSae: 256, recipe: 'standard', steps: 18, resume: true });
    await expectIntact(out, 18);
  });

  it('a full disk mid-run (a small tmpfs; where mounting is not allowed, a file-size limit): the same', async () => {
    const mnt = tempDir();
    const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=320k', 'tmpfs', mnt], { encoding: 'utf8' });
    if (mount.status !== 0) {
      console.warn(`tmpfs not available (${(mount.stderr || String(mount.error)).trim()}): testing a full disk by a file-size limit instead`);
      const out = tempDir();
      const r = cliChild([...cliArgs(out, 30)], 40);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/cannot write \(file too large/);
      expect(existsSync(join(out, 'checkpoints')) ? allNames(out).filter((n) => n.includes('.tmp')) : []).toEqual([]);
      return;
    }
    try {
      const out = join(mnt, 'run');
      const err = await trainTranscoders({ ...base(out), dSae: 256, steps: 30 }).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(IoError);
      expect((err as IoError).code).toBe('ENOSPC');
      expect((err as IoError).path.startsWith(out)).toBe(true);
      expect((err as IoError).message).toMatch(/^\S+: cannot (write|append to the log) \(no space left on the device; ENOSPC\)$/);
      const steps = listCheckpoints(join(out, 'checkpoints')).map((c) => c.state.step);
      expect(steps.length).toBeGreaterThanOrEqual(1);
      await expectIntact(out, steps.at(-1)!);
    } finally {
      spawnSync('umount', [mnt]);
    }
  });
});

describe('kill and resume', () => {
  /**
   * Trials of one run each (24 steps, a checkpoint every 3), killed by fault injection at chosen
   * points (after the n-th file, after a manifest, after setting a step aside, after a switch,
   * mid-prune) or by a timer, then resumed until done. One child process works through all trials
   * in turn (resuming where the last one was killed), so a kill costs one process start. Trial 0
   * is never killed: it is the reference.
   */
  it('runs SIGKILLed at random moments always resume, to bit-identical weights', { timeout: 240_000 }, async () => {
    const random = rng(2024);
    const pick = <T,>(xs: T[]) => xs[Math.floor(random() * xs.length)]!;
    const designed: string[][] = [
      ['file@1'], ['file@7'], ['manifest@1'], ['switch@2'], ['prune@1'], ['prune@5'],
      // Killed after the final checkpoint, then again while its step is rewritten by the resume of the finished run.
      ['switch@8', 'aside@1'], ['manifest@8', 'manifest@1'], ['prune@6', 'switch@1'], ['switch@8', 'file@3', 'aside@1'],
    ];
    const randomFault = () => {
      const point = pick(['file', 'file', 'manifest', 'switch', 'prune', 'timed']);
      const n = point === 'file' ? 1 + Math.floor(random() * 32) : point === 'prune' ? 1 + Math.floor(random() * 6) : 1 + Math.floor(random() * 8);
      return point === 'timed' ? `timed@${Math.floor(100 + random() * 700)}` : `${point}@${n}`;
    };
    const randomTrials = Array.from({ length: 10 }, () => Array.from({ length: 1 + Math.floor(random() * 2) }, randomFault));
    const root = tempDir();
    const trials = [[], ...designed, ...randomTrials].map((faults, i) => ({ out: join(root, `trial_${i}`), faults }));
    const options = { ...base(''), steps: 24, logEvery: 4 };
    delete (options as Partial<TrainRunOptions>).out;
    const plan = join(root, 'plan.json');
    writeFileSync(plan, JSON.stringify({ trials, options }));
    const child = join(root, 'child.mjs');
    writeFileSync(child, `
      import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
      import { join } from 'node:path';
      const { trainTranscoders } = await import(${href('../lib/transcoders/training-run.ts')});
      const { findResumePoint, FAULT_ENV } = await import(${href('../lib/transcoders/checkpoints.ts')});
      const { setNumThreads } = await import(${href('../lib/runtime.ts')});
      const { trials, options } = JSON.parse(readFileSync(process.argv[2], 'utf8'));
      // One thread: the tensors are tiny, and the next child warms up on the other core.
      setNumThreads(1);
      // Loading libtorch and the first run are most of a start: done before the go, while the
      // previous child still works.
      await trainTranscoders({ ...options, steps: 1, out: process.argv[2] + '.warm-' + process.pid });
      await new Promise((go) => process.stdin.once('data', go));
      process.stdin.destroy();
      for (const [t, trial] of trials.entries()) {
        if (existsSync(trial.out + '.done')) continue;
        const attempts = trial.out + '.attempts';
        const n = existsSync(attempts) ? readFileSync(attempts, 'utf8').length : 0;
        appendFileSync(attempts, 'x');
        const fault = trial.faults[n] ?? '';
        // A spec of its own per attempt, so that the fault counters start afresh.
        process.env[FAULT_ENV] = fault.startsWith('timed') ? '' : fault + '@t' + t + 'a' + n;
        const resume = findResumePoint(join(trial.out, 'checkpoints')).latest !== undefined;
        process.stdout.write('start ' + t + ' ' + fault + '\\n');
        const r = await trainTranscoders({ ...options, out: trial.out, resume });
        if (r.steps !== options.steps) throw new Error('trial ' + t + ': ' + r.steps + ' steps');
        writeFileSync(trial.out + '.done', '');
        process.stdout.write('end ' + t + '\\n');
      }`);
    let kills = 0;
    let timedKills = 0;
    const start = () => spawn(process.execPath, ['--import', TSX, child, plan], { stdio: ['pipe', 'pipe', 'pipe'] });
    let spare = start();
    try {
      for (let spawns = 0; ; spawns++) {
        expect(spawns).toBeLessThan(80);
        const proc = spare;
        spare = start();
        let stderr = '';
        let timer: NodeJS.Timeout | undefined;
        proc.stderr!.on('data', (d) => (stderr += d));
        let buffered = '';
        proc.stdout!.on('data', (d) => {
          buffered += d;
          for (let i = buffered.indexOf('\n'); i >= 0; i = buffered.indexOf('\n')) {
            const [what, , fault] = buffered.slice(0, i).split(' ');
            buffered = buffered.slice(i + 1);
            clearTimeout(timer);
            if (what === 'start' && fault?.startsWith('timed@')) {
              timer = setTimeout(() => {
                timedKills++;
                proc.kill('SIGKILL');
              }, Number(fault.split('@')[1]));
            }
          }
        });
        const exited = new Promise<[number | null, string | null]>((res) => proc.on('exit', (c, sig) => res([c, sig])));
        proc.stdin!.end('go\n'); // closed, so that the child can exit when done
        const [code, signal] = await exited;
        clearTimeout(timer);
        if (code === 0) break;
        expect(signal, `the child failed (code ${code}): ${stderr}`).toBe('SIGKILL');
        kills++;
      }
    } finally {
      spare.kill('SIGKILL');
    }
    expect(kills).toBeGreaterThanOrEqual(20);
    const reference = weightBytes(trials[0]!.out);
    const referenceState = readFileSync(join(trials[0]!.out, 'checkpoints', 'step_000000024', 'layer_0', TRAINER_STATE_FILE));
    for (const [i, trial] of trials.entries()) {
      expect(weightBytes(trial.out).equals(reference), `trial ${i} (${trial.faults.join(', ')}): final weights differ`).toBe(true);
      const ckpts = join(trial.out, 'checkpoints');
      expect(readdirSync(ckpts).every((n) => /^step_\d{9}$/.test(n)), `trial ${i}: leftovers ${readdirSync(ckpts)}`).toBe(true);
      const last = listCheckpoints(ckpts).at(-1)!;
      expect(last.state.step).toBe(24);
      expect(readFileSync(join(last.dir, 'layer_0', TRAINER_STATE_FILE)).equals(referenceState)).toBe(true);
      expect(JSON.parse(readFileSync(join(last.dir, STATE_FILE), 'utf8')).position).toBe(24 * 32);
      expect(existsSync(join(trial.out, LOCK_FILE))).toBe(false);
    }
    console.log(`kill and resume: ${trials.length} trials, ${kills} kills (${timedKills} by timer, the rest inside checkpoint writes and pruning)`);
  });
});
