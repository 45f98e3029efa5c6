/**
 * What a new user hits on the command line: options of another architecture, output paths that
 * fail after the work, the shipped model's 64-token context, runs shorter than a batch, typos,
 * missing options one at a time, and progress lines wider than the terminal. Each error must be one
 * line (`transcoders CMD: ...`), exit 2 for usage errors, and come before any work.
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkOutputPath, checkOutputPaths, didYouMean, editDistance, parseCommand, type Command } from '../lib/cli/command.js';
import { tokenFileFor, withTokenFile } from '../lib/cli/data.js';
import { describeError } from '../lib/cli/main.js';
import { ProgressBar, StatusLine, type ProgressStream } from '../lib/cli/progress.js';
import { ARCH_SPECIFIC_OPTIONS, planTraining } from '../lib/cli/train.js';
import { readTokenFileHeader } from '../lib/data/token-file.js';
import { tokenizeToFile } from '../lib/data/tokenize.js';
import { FormatError, InvalidArgumentError } from '../lib/errors.js';
import { loadModel } from '../lib/models/model.js';
import { SHIPPED_MODEL_DIR } from '../lib/models/shipped.js';
import { ensureDist, runCli } from './helpers/cli.js';
import { makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';

let work: string;
let modelDir: string;
let text: string;

beforeAll(() => {
  ensureDist();
  work = tempDir('transcoders-cli-usability-');
  // Context 64, like the shipped model: the old default of 128 tokens per row does not fit.
  modelDir = makeTempModel({ ...TINY_GPT2, nCtx: 64, std: 0.1 });
  text = join(work, 'data.txt');
  writeFileSync(text, Array.from({ length: 120 }, (_, i) => `The war lasted from the year 17${10 + (i % 80)} to the year 17${20 + ((i * 7) % 70)}.`).join('\n\n'));
});

/** Runs the CLI and checks that it failed with `status` and exactly one error line without a stack trace. */
function failsWithOneLine(args: string[], status: number): string {
  const r = runCli(args);
  expect(r.status, `${args.join(' ')}\n${r.stderr}`).toBe(status);
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  return lines[0]!;
}

describe('train options that do not apply to the architecture', () => {
  const base = (out: string) => [modelDir, '--data', text, '--layers', '0', '--d-sae', '32', '--steps', '2', '--batch-size', '32', '--out', out];

  it('--k without --arch topk is an error naming the option and the architecture, before any work', () => {
    const out = join(work, 'k-without-topk');
    const line = failsWithOneLine(['train', ...base(out), '--k', '4'], 2);
    expect(line).toMatch(/^transcoders train: /);
    expect(line).toContain('--k is for --arch topk');
    expect(line).toContain('relu (the default --arch)');
    expect(existsSync(out)).toBe(false);
  });

  it('every architecture-specific option is refused with the other architectures', () => {
    const values = { 'd-sae': '64', steps: '1', 'batch-size': '32' };
    const sample: Record<string, string> = {
      k: '4', 'auxk-alpha': '0.1', l1: '1e-4', 'ghost-grads': 'on', 'compute-dtype': 'bfloat16', l0: '1e-3', bandwidth: '0.01', 'l1-warmup-steps': '10',
      recipe: 'standard', 'resample-every': '10', init: 'w', sparsity: 'tanh', 'sparsity-coefficient': '1e-3', 'tanh-scale': '2', preact: '1e-3',
    };
    expect(Object.keys(sample).sort()).toEqual(Object.keys(ARCH_SPECIFIC_OPTIONS).sort());
    for (const [flag, archs] of Object.entries(ARCH_SPECIFIC_OPTIONS)) {
      for (const arch of ['relu', 'topk', 'jumprelu', 'clt-relu', 'clt-topk', 'clt-jumprelu', 'clt-batchtopk'] as const) {
        const needsK = (arch === 'topk' || arch === 'clt-topk' || arch === 'clt-batchtopk') && flag !== 'k';
        const given = { ...values, arch, [flag]: sample[flag], ...(needsK ? { k: '4' } : {}), ...(flag === 'tanh-scale' && arch.startsWith('clt-') ? { sparsity: 'tanh' } : {}) };
        if (archs.includes(arch)) {
          expect(planTraining(given).arch, `${flag} with ${arch}`).toBe(arch);
        } else {
          expect(() => planTraining(given), `${flag} with ${arch}`).toThrow(InvalidArgumentError);
          expect(() => planTraining(given)).toThrow(`--${flag} is for --arch ${archs.join(' or ')}; the architecture is ${arch}`);
        }
      }
    }
  });

  it('refuses the other inconsistent combinations with a reason', () => {
    const ok = { 'd-sae': '64', steps: '1', 'batch-size': '32' };
    const cases: [Record<string, string | boolean>, string][] = [
      [{ arch: 'topk' }, '--arch topk needs --k K'],
      [{ arch: 'topk', k: '65' }, '--k 65 exceeds --d-sae 64'],
      [{ arch: 'topk', k: '4', recipe: 'paper' }, '--recipe paper trains relu transcoders'],
      [{ arch: 'topk', k: '4', 'warmup-steps': '10' }, '--warmup-steps does not apply to the constant learning-rate schedule (the default of the standard recipe)'],
      [{ 'lr-schedule': 'constant', 'warmup-steps': '10' }, '--warmup-steps does not apply to the constant learning-rate schedule;'],
      [{ 'buffer-rows': '40' }, '--buffer-rows 40 must hold at least two batches (64 rows at --batch-size 32)'],
      [{ activations: 'cache/layer_0', 'context-size': '32' }, '--context-size does not apply to training from --activations'],
      [{ activations: 'cache/layer_0', 'resample-every': '100' }, '--resample-every does not apply to training from --activations'],
      [{ resume: true, init: 'w' }, '--init does not apply with --resume'],
      [{ init: 'w', 'bias-init': 'zeros' }, '--bias-init does not apply with --init'],
      [{ 'ghost-grads': 'yes' }, "--ghost-grads must be on or off, got 'yes'"],
      [{ 'compute-dtype': 'bf16' }, "--compute-dtype must be one of float32, bfloat16, got 'bf16'"],
      [{ arch: 'jumprelu', bandwidth: '0' }, '--bandwidth must be positive'],
    ];
    for (const [extra, message] of cases) expect(() => planTraining({ ...ok, ...extra }), message).toThrow(message);
    // The same options where they apply.
    expect(planTraining({ ...ok, 'lr-schedule': 'linearwarmupdecay', 'warmup-steps': '10' })).toMatchObject({ arch: 'relu', recipe: 'paper' });
    expect(planTraining({ ...ok, 'warmup-steps': '10' }).recipe).toBe('paper'); // the paper recipe warms up by default
    expect(planTraining({ ...ok, 'no-shuffle': true, 'buffer-rows': '40' }).batchSize).toBe(32);
  });
});

describe('output paths are checked before any work', () => {
  it('checkOutputPath: files need an existing folder (or one the command creates); folders must not be files', () => {
    const dir = tempDir();
    const file = join(dir, 'file.txt');
    writeFileSync(file, 'x');
    expect(() => checkOutputPath(join(dir, 'g.html'), '--html', 'file')).not.toThrow();
    expect(() => checkOutputPath(file, '--html', 'file')).not.toThrow(); // overwriting a file is fine
    expect(() => checkOutputPaths({ html: '/no/such/dir/g.html' }, { html: 'file' })).toThrow('--html /no/such/dir/g.html: the folder /no/such/dir does not exist');
    expect(() => checkOutputPath(dir, '--out', 'file')).toThrow(`--out ${dir}: is a folder; give a file name`);
    expect(() => checkOutputPath(join(file, 'g.html'), '--out', 'file')).toThrow(`${file} is a file, not a folder`);
    expect(() => checkOutputPath(join(dir, 'a', 'b', 'c.safetensors'), '--out', 'file-mkdir')).not.toThrow();
    expect(() => checkOutputPath(join(file, 'a', 'c.safetensors'), '--out', 'file-mkdir')).toThrow(`cannot create a folder under ${file}, which is a file`);
    expect(() => checkOutputPath(join(dir, 'new', 'run'), '--out', 'folder')).not.toThrow();
    expect(() => checkOutputPath(dir, '--out', 'folder')).not.toThrow();
    expect(() => checkOutputPath(file, '<out-dir>', 'folder')).toThrow(`<out-dir> ${file}: is a file, not a folder`);
    expect(() => checkOutputPath(join(file, 'sub'), '--out', 'folder')).toThrow('which is a file');
    // Options that were not given are not checked.
    expect(() => checkOutputPaths({}, { html: 'file', out: 'folder' })).not.toThrow();
    expect(readdirSync(dir)).toEqual(['file.txt']); // checking creates nothing
  });

  it('the commands refuse an unwritable output in one line, exit 2, before the work', () => {
    const file = join(work, 'a-file');
    writeFileSync(file, 'x');
    let line = failsWithOneLine(['tokenize', modelDir, '--data', text, '--out', '/no/such/dir/t.safetensors'], 2);
    expect(line).toBe('transcoders tokenize: --out /no/such/dir/t.safetensors: the folder /no/such/dir does not exist');
    line = failsWithOneLine(['train', modelDir, '--data', text, '--layers', '0', '--d-sae', '8', '--steps', '1', '--out', file], 2);
    expect(line).toBe(`transcoders train: --out ${file}: is a file, not a folder`);
    line = failsWithOneLine(['run', modelDir, '--prompt', 'The war', '--out', work], 2);
    expect(line).toBe(`transcoders run: --out ${work}: is a folder; give a file name`);
    line = failsWithOneLine(['make-model', file], 2);
    expect(line).toBe(`transcoders make-model: <out-dir> ${file}: is a file, not a folder`);
    line = failsWithOneLine(['eval', modelDir, '--transcoders', join(work, 'nothing-here'), '--data', text], 2);
    expect(line).toBe(`transcoders eval: --transcoders ${join(work, 'nothing-here')}: no such file or folder`);
  });

  it('a file that is not what it claims fails with exit 1 and one line', () => {
    const notAModel = join(work, 'not-a-model');
    mkdirSync(notAModel, { recursive: true });
    writeFileSync(join(notAModel, 'config.json'), '{ not json');
    const line = failsWithOneLine(['info', notAModel], 1);
    expect(line).toMatch(/^transcoders info: .*config\.json/);
  });

  it('describeError: library errors keep their message; any other error is one line with a hint, exit 1', () => {
    expect(describeError(new InvalidArgumentError('--k must be an integer'), 'train')).toEqual({ line: 'transcoders train: --k must be an integer', code: 2 });
    expect(describeError(new FormatError('x.pt: truncated\nre-download it', 'x.pt'), 'convert')).toEqual({ line: 'transcoders convert: x.pt: truncated; re-download it', code: 1 });
    const unexpected = describeError(new TypeError("Cannot read properties of undefined (reading 'shape')"), 'eval');
    expect(unexpected.code).toBe(1);
    expect(unexpected.line).toBe("transcoders eval: Cannot read properties of undefined (reading 'shape') (unexpected error, please report it; TRANSCODERS_DEBUG=1 shows the stack trace)");
    const system = Object.assign(new Error("EACCES: permission denied, open '/x'"), { code: 'EACCES', syscall: 'open' });
    expect(describeError(system, 'run').line).toBe("transcoders run: EACCES: permission denied, open '/x' (TRANSCODERS_DEBUG=1 shows the stack trace)");
    expect(describeError('thrown string', 'run').line).toContain('transcoders run: thrown string (unexpected error');
  });
});

describe('context size defaults to the model context when it is shorter than 128', () => {
  it('tokenize on the shipped model (context 64) writes rows of 64 tokens by default', () => {
    const out = join(work, 'shipped-tokens.safetensors');
    const r = runCli(['tokenize', SHIPPED_MODEL_DIR, '--data', text, '--out', out]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/wrote \d+ rows from 120 documents \(64 tokens each\)/);
    expect(readTokenFileHeader(out).contextSize).toBe(64);
    const line = failsWithOneLine(['tokenize', SHIPPED_MODEL_DIR, '--data', text, '--out', out, '--context-size', '128'], 2);
    expect(line).toBe("transcoders tokenize: --context-size 128 exceeds the model's context of 64 tokens");
  });

  it('train and eval from text on a 64-token model work without --context-size', () => {
    const out = join(work, 'default-context');
    let r = runCli(['train', modelDir, '--data', text, '--layers', '0', '--d-sae', '32', '--batch-size', '64', '--steps', '3', '--out', out, '--quiet']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('trained 3 steps, 192 tokens');
    expect(readTokenFileHeader(join(out, 'tokens.safetensors')).contextSize).toBe(64);
    r = runCli(['eval', SHIPPED_MODEL_DIR, '--transcoders', join(SHIPPED_MODEL_DIR, 'transcoders'), '--data', text, '--sequences', '2', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const evaluation = JSON.parse(r.stdout) as { sequences: number; tokens: number };
    expect(evaluation).toMatchObject({ sequences: 2, tokens: 128 });
    const line = failsWithOneLine(['train', modelDir, '--data', text, '--layers', '0', '--d-sae', '32', '--steps', '1', '--out', join(work, 'ctx-128'), '--context-size', '128'], 2);
    expect(line).toBe("transcoders train: --context-size 128 exceeds the model's context of 64 tokens");
    expect(existsSync(join(work, 'ctx-128'))).toBe(false);
  });

  it('a token file written for a run that fails is removed; a given token file is kept', async () => {
    const model = await loadModel(modelDir);
    const dir = tempDir();
    await expect(withTokenFile(model, [text], undefined, dir, async (file) => {
      expect(readTokenFileHeader(file).contextSize).toBe(64);
      throw new InvalidArgumentError('the run failed');
    })).rejects.toThrow('the run failed');
    expect(readdirSync(dir)).toEqual([]);
    // A succeeding run keeps the file it tokenised; a failing run never removes the user's token file.
    const made = await withTokenFile(model, [text], '32', dir, async (file) => file);
    expect(readTokenFileHeader(made).contextSize).toBe(32);
    await expect(withTokenFile(model, [made], undefined, dir, async () => {
      throw new Error('boom');
    })).rejects.toThrow('boom');
    expect(existsSync(made)).toBe(true);
    // A token file's own rows must fit the model, and --context-size must agree with them.
    await expect(tokenFileFor(model, [made], '16', dir)).rejects.toThrow(`--context-size 16 does not apply to the token file ${made}, whose rows are 32 tokens`);
    expect((await tokenFileFor(model, [made], '32', dir)).created).toBe(false);
  });

  it('text that gives no full row writes no token file (and keeps an earlier one)', async () => {
    const model = await loadModel(modelDir);
    const dir = tempDir();
    const short = join(dir, 'short.txt');
    writeFileSync(short, 'Too short.');
    const out = join(dir, 'tokens.safetensors');
    await expect(tokenizeToFile([short], model.tokenizer!, out, { contextSize: 64, minRows: 1 })).rejects.toThrow(`${short}: the text gives 0 full rows of 64 tokens (1 document), fewer than the 1 needed`);
    expect(readdirSync(dir)).toEqual(['short.txt']);
    await tokenizeToFile([text], model.tokenizer!, out, { contextSize: 64 });
    const rows = readTokenFileHeader(out).rows;
    await expect(tokenizeToFile([short], model.tokenizer!, out, { contextSize: 64, minRows: 1 })).rejects.toThrow(InvalidArgumentError);
    expect(readTokenFileHeader(out).rows).toBe(rows);
    expect(readdirSync(dir).sort()).toEqual(['short.txt', 'tokens.safetensors']);
    const line = failsWithOneLine(['tokenize', modelDir, '--data', short, '--out', join(dir, 'none.safetensors')], 2);
    expect(line).toContain('0 full rows of 64 tokens');
    expect(existsSync(join(dir, 'none.safetensors'))).toBe(false);
  });
});

describe('run length', () => {
  it('--tokens below one batch names both numbers', () => {
    const line = failsWithOneLine(['train', modelDir, '--data', text, '--layers', '0', '--d-sae', '32', '--tokens', '2000', '--out', join(work, 'short-run')], 2);
    expect(line).toBe('transcoders train: the run is shorter than one batch: --tokens 2000 is less than the batch size of 4096 tokens (the default --batch-size); give more tokens or a smaller --batch-size');
  });
});

describe('typos and missing options', () => {
  it('editDistance and didYouMean', () => {
    expect(editDistance('kitten', 'sitting')).toBe(3);
    expect(editDistance('', 'abc')).toBe(3);
    expect(editDistance('train', 'train')).toBe(0);
    expect(didYouMean('trian', ['train', 'eval', 'tokenize'])).toBe('train');
    expect(didYouMean('contxt-size', ['context-size', 'data'])).toBe('context-size');
    expect(didYouMean('context', ['context-size', 'data'])).toBe('context-size'); // an abbreviation
    expect(didYouMean('zzz', ['train', 'eval'])).toBeNull();
  });

  it('a mistyped command or flag gets a suggestion in one line', () => {
    expect(failsWithOneLine(['trian', '--help'], 2)).toBe("transcoders: unknown command 'trian' (did you mean 'train'?); run 'transcoders --help' for the commands");
    expect(failsWithOneLine(['eval', modelDir, '--sequence', '8'], 2)).toBe("transcoders eval: unknown option --sequence (did you mean --sequences?); run 'transcoders eval --help' for the options");
    const line = failsWithOneLine(['train', modelDir, '--contxt-size', '32', '--layer', '0', '--zzzz'], 2);
    expect(line).toBe("transcoders train: unknown options --contxt-size (did you mean --context-size?), --layer (did you mean --layers?), --zzzz; run 'transcoders train --help' for the options");
    expect(failsWithOneLine(['train', modelDir, '--data', text, '--layers', '0', '--d-sae', '8', '--steps', '1', '--out', join(work, 'typo'), '--arch', 'topc'], 2)).toContain("--arch must be one of relu, topk, jumprelu, clt-relu, clt-topk, clt-jumprelu, clt-batchtopk, got 'topc' (did you mean topk?)");
  });

  it('every missing required option is reported at once', () => {
    expect(failsWithOneLine(['train', modelDir], 2)).toBe(
      "transcoders train: missing --layers L,.., --d-sae N, --out DIR, one of --data PATH or --activations DIR and one of --tokens N or --steps N; run 'transcoders train --help' for the options",
    );
    expect(failsWithOneLine(['tokenize'], 2)).toBe("transcoders tokenize: missing <model-dir>, --data PATH and --out FILE; run 'transcoders tokenize --help' for the options");
    expect(failsWithOneLine(['cache', modelDir, '--out', join(work, 'c')], 2)).toContain('missing --layers L,.. and --data PATH;');
    expect(failsWithOneLine(['run', '--prompt', 'a', '--tokens', '1,2'], 2)).toBe('transcoders run: give only one of --prompt, --tokens');
    expect(failsWithOneLine(['info', modelDir, 'extra'], 2)).toBe("transcoders info: unexpected argument 'extra' (usage: transcoders info [model-dir] [--json])");
    // --activations brings its own layer and needs no model folder.
    expect(failsWithOneLine(['train', '--activations', join(work, 'no-cache'), '--d-sae', '8', '--steps', '1', '--out', join(work, 'x')], 2)).toContain('--activations');
  });

  it('parseCommand: required options from the spec, shown in --help', () => {
    const cmd: Command = {
      name: 'demo-cmd',
      summary: 'a command',
      usage: 'demo-cmd <in> --a X',
      arguments: [{ name: 'in', required: true }],
      oneOf: [['b', 'c']],
      options: { a: { type: 'string', value: 'X', description: 'needed', required: true }, b: { type: 'boolean', description: 'one' }, c: { type: 'boolean', description: 'other' }, d: { type: 'string', description: 'unless a', required: { unless: 'a' } } },
      run: async () => undefined,
    };
    expect(() => parseCommand(cmd, [])).toThrow("missing <in>, --a X, --d VALUE and one of --b or --c; run 'transcoders demo-cmd --help' for the options");
    expect(parseCommand(cmd, ['file', '--a', '1', '--c'])).toEqual({ values: { a: '1', c: true }, positionals: ['file'] });
    expect(() => parseCommand(cmd, ['file', '--a'])).toThrow("Option '--a <value>' argument missing; run 'transcoders demo-cmd --help'");
    const help = runCli(['train', '--help']).stdout;
    expect(help).toMatch(/--d-sae N\s+number of features \(required\)/);
    expect(help).toMatch(/--layers L,\.\.\s+.*\(required unless --activations\)/);
    expect(help).toContain('(give exactly one of --data, --activations)');
  });
});

/** A stream that records what is written, as a terminal of `columns` or as a log. */
function recorder(columns: number | undefined, isTTY: boolean): ProgressStream & { output: string } {
  return { output: '', isTTY, ...(columns !== undefined && { columns }), write(text: string) { this.output += text; } };
}

describe('progress lines fit the terminal', () => {
  const threeLayers = 'fvu 0.123,0.145,0.167 l0 12.3,13.1,9.8 dead 0.010,0.020,0.030 lr 4.0e-4 and more detail';

  it('on a terminal every redraw is shorter than the width, and the final update ends the line', () => {
    for (const columns of [80, 60, 40, 20]) {
      const stream = recorder(columns, true);
      let clock = 0;
      const bar = new ProgressBar('training', 3000, ' steps', { stream, now: () => clock });
      for (const step of [10, 1500, 2990, 3000]) {
        clock += 7_000;
        bar.update(step, threeLayers);
      }
      expect(stream.output.endsWith('\n')).toBe(true);
      const frames = stream.output.split('\r\x1b[2K').slice(1).map((f) => f.replace(/\n$/, ''));
      expect(frames).toHaveLength(4);
      for (const frame of frames) {
        expect(frame.length, `${columns} columns: ${frame}`).toBeLessThan(columns);
        expect(frame).not.toContain('\n');
        expect(frame.startsWith('training')).toBe(true);
      }
      expect(frames.at(-1)).toMatch(columns >= 40 ? /100% 3000\/3000 steps/ : /^training/);
    }
    // At 80 columns the detail is cut (with an ellipsis) rather than wrapped; the counts and times stay.
    const stream = recorder(80, true);
    const bar = new ProgressBar('training', 3000, ' steps', { stream, now: () => 0 });
    bar.update(1500, threeLayers);
    const frame = stream.output.replace('\r\x1b[2K', '');
    expect(frame).toMatch(/^training \[#{4}-{4}\]  50% 1500\/3000 steps \| fvu 0\.123,0\.145,0\.167 l0… \| 0s eta \?$/);
    expect(frame.length).toBe(79);
  });

  it('assumes 80 columns when the width is unknown, and throttles lines in logs', () => {
    const stream = recorder(undefined, false);
    let clock = 0;
    const bar = new ProgressBar('evaluating', 10, ' sequences', { stream, now: () => clock, interval: 5000 });
    bar.update(1, 'x'.repeat(200)); // first line at once
    clock = 1000;
    bar.update(2, 'y'); // held back: less than 5 s since the last line
    clock = 6000;
    bar.update(3, 'z'); // printed
    clock = 6500;
    bar.update(4, 'w'); // held back
    const lines = stream.output.trimEnd().split('\n');
    expect(lines).toHaveLength(2);
    for (const line of lines) expect(line.length).toBeLessThan(80);
    expect(lines[1]).toContain('3/10 sequences | z');
    bar.close(); // prints the held-back line, so the log ends with the last state
    expect(stream.output.trimEnd().split('\n').at(-1)).toContain('4/10 sequences | w');
    bar.close();
    bar.update(10);
    expect(stream.output.trimEnd().split('\n')).toHaveLength(3); // closed: nothing more
  });

  it('close() ends a partial line before anything else is printed, once', () => {
    const stream = recorder(80, true);
    const bar = new ProgressBar('caching', 100, '', { stream, now: () => 0 });
    bar.update(40);
    expect(stream.output.endsWith('\n')).toBe(false);
    bar.close();
    expect(stream.output.endsWith('\n')).toBe(true);
    const length = stream.output.length;
    bar.close();
    bar.update(100);
    expect(stream.output.length).toBe(length);
    // A status line (the tokenizer's) behaves the same.
    const status = new StatusLine({ stream, now: () => 0 });
    status.show(`tokenizing: ${'9'.repeat(100)} documents`);
    status.close();
    const last = stream.output.slice(length);
    expect(last.endsWith('\n')).toBe(true);
    expect(last.replace('\r\x1b[2K', '').trimEnd().length).toBeLessThan(80);
  });

  it('a training run prints its progress and then the summary on lines of their own', () => {
    const out = join(work, 'progress-run');
    const r = runCli(['train', modelDir, '--data', text, '--layers', '0,1', '--d-sae', '32', '--batch-size', '32', '--steps', '20', '--out', out]);
    expect(r.status, r.stderr).toBe(0);
    const progress = r.stderr.split('\n').filter((l) => l.startsWith('training'));
    expect(progress.length).toBeGreaterThan(0);
    for (const line of progress) expect(line.length).toBeLessThan(80);
    expect(progress.at(-1)).toMatch(/100% 20\/20 steps \| fvu [\d.]+,[\d.]+ l0 [\d.]+,[\d.]+ \| \d+s$/);
    expect(r.stderr.endsWith('\n')).toBe(true);
    expect(r.stdout.split('\n')[0]).toBe('trained 20 steps, 640 tokens');
  });
});
