/**
 * A tiny command framework over node:util parseArgs: typed options, `--help` for every command,
 * required options and arguments declared in the spec (every missing one reported at once), "did you
 * mean" for mistyped flags, and checks of input and output paths before any work starts.
 */
import { accessSync, constants, existsSync, statSync, type Stats } from 'node:fs';
import { isWrittenAsPath, resolveModelSource, resolveTranscoderSource } from '../io/hf-cache.js';
import { dirname, resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { InvalidArgumentError } from '../errors.js';
import { setNumThreads } from '../runtime.js';

/**
 * When an option or argument is required: always (`true`), or only when another option is absent
 * (`{ unless: 'activations' }`: required unless `--activations` is given).
 */
export type Requirement = boolean | { unless: string };

export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** Shown in --help; the value name after the flag, e.g. 'FILE'. */
  value?: string;
  description: string;
  multiple?: boolean;
  /** The command cannot run without it; shown in --help and checked by {@link parseCommand}. */
  required?: Requirement;
}

/** A positional argument, e.g. `<model-dir>`. */
export interface ArgumentSpec {
  /** Shown in messages, e.g. 'model-dir' (printed as `<model-dir>`). */
  name: string;
  required?: Requirement;
}

export type OptionValues = Record<string, string | boolean | string[] | undefined>;

export interface Command {
  name: string;
  summary: string;
  usage: string;
  /** Extra paragraphs after the option list. */
  details?: string;
  options: Record<string, OptionSpec>;
  /**
   * The positional arguments in order. When given, parseCommand reports missing required ones and
   * rejects extra ones; commands without it check their positionals themselves.
   */
  arguments?: ArgumentSpec[];
  /** Groups of options of which exactly one must be given (e.g. `[['prompt', 'tokens']]`). */
  oneOf?: string[][];
  run(values: OptionValues, positionals: string[]): Promise<void>;
}

const HELP_OPTION: OptionSpec = { type: 'boolean', short: 'h', description: 'show this help' };

function requirementText(required: Requirement | undefined): string {
  if (required === true) return ' (required)';
  if (required && typeof required === 'object') return ` (required unless --${required.unless})`;
  return '';
}

/** Help text of a command. */
export function helpText(cmd: Command): string {
  const rows = Object.entries({ ...cmd.options, help: HELP_OPTION }).map(
    ([name, o]) => [`${o.short ? `-${o.short}, ` : '    '}--${name}${o.type === 'string' ? ` ${o.value ?? 'VALUE'}` : ''}`, `${o.description}${requirementText(o.required)}`],
  );
  const width = Math.max(...rows.map(([flag]) => flag!.length)) + 2;
  const lines = [`Usage: transcoders ${cmd.usage}`, '', cmd.summary, '', 'Options:', ...rows.map(([f, d]) => `  ${f!.padEnd(width)}${d}`)];
  for (const group of cmd.oneOf ?? []) lines.push(`  (give exactly one of ${group.map((o) => `--${o}`).join(', ')})`);
  if (cmd.details) lines.push('', cmd.details);
  return lines.join('\n');
}

/** Levenshtein distance between two strings (insertions, deletions and substitutions cost 1). */
export function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}

/**
 * The candidate `word` was most likely meant to be: the nearest by edit distance when it is close
 * (at most 1 edit for words up to 4 letters, 2 up to 8, 3 beyond), else the only candidate that
 * starts with it (an abbreviation such as `--context`); null when nothing is convincing.
 */
export function didYouMean(word: string, candidates: readonly string[]): string | null {
  const limit = word.length <= 4 ? 1 : word.length <= 8 ? 2 : 3;
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(word, c);
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  if (best !== null && bestDistance <= limit) return best;
  const prefixed = word.length >= 3 ? candidates.filter((c) => c.startsWith(word)) : [];
  return prefixed.length === 1 ? prefixed[0]! : null;
}

function isGiven(value: unknown): boolean {
  return Array.isArray(value) ? value.length > 0 : value !== undefined;
}

function isRequired(required: Requirement | undefined, values: OptionValues): boolean {
  if (required === true) return true;
  if (required && typeof required === 'object') return !isGiven(values[required.unless]);
  return false;
}

function flagText(cmd: Command, name: string): string {
  const o = cmd.options[name];
  return o?.type === 'string' ? `--${name} ${o.value ?? 'VALUE'}` : `--${name}`;
}

/** "a", "a and b", "a, b and c". */
export function listText(items: string[]): string {
  return items.length <= 1 ? (items[0] ?? '') : `${items.slice(0, -1).join(', ')} and ${items.at(-1)}`;
}

/** Parses argv for `cmd`; returns null when --help was printed. Every usage error is one line. */
export function parseCommand(cmd: Command, argv: string[]): { values: OptionValues; positionals: string[] } | null {
  const options: ParseArgsConfig['options'] = { help: { type: 'boolean', short: 'h' } };
  for (const [name, o] of Object.entries(cmd.options)) {
    options[name] = { type: o.type, ...(o.short ? { short: o.short } : {}), ...(o.multiple ? { multiple: true } : {}) };
  }
  const seeHelp = `run 'transcoders ${cmd.name} --help' for the options`;
  // A lenient pass first: it finds --help anywhere and every unknown flag (strict parsing stops at the first).
  const { tokens } = parseArgs({ args: argv, options, allowPositionals: true, strict: false, tokens: true });
  if (tokens.some((t) => t.kind === 'option' && t.name === 'help')) {
    console.log(helpText(cmd));
    return null;
  }
  const known = Object.keys(options);
  const unknown = [...new Set(tokens.flatMap((t) => (t.kind === 'option' && !(t.name in options) ? [t.rawName] : [])))].map((raw) => {
    const guess = raw.startsWith('--') ? didYouMean(raw.slice(2), known) : null;
    return guess ? `${raw} (did you mean --${guess}?)` : raw;
  });
  if (unknown.length > 0) throw new InvalidArgumentError(`unknown option${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}; ${seeHelp}`);
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new InvalidArgumentError(`${(err as Error).message.replace(/^TypeError \[\w+\]: /, '').replace(/\s*\n\s*/g, ' ')}; ${seeHelp}`);
  }
  const values = parsed.values as OptionValues;
  const positionals = parsed.positionals;

  const missing: string[] = [];
  (cmd.arguments ?? []).forEach((a, i) => {
    if (positionals[i] === undefined && isRequired(a.required, values)) missing.push(`<${a.name}>`);
  });
  for (const [name, o] of Object.entries(cmd.options)) {
    if (!isGiven(values[name]) && isRequired(o.required, values)) missing.push(flagText(cmd, name));
  }
  for (const group of cmd.oneOf ?? []) {
    const given = group.filter((name) => isGiven(values[name]));
    if (given.length === 0) missing.push(`one of ${group.map((name) => flagText(cmd, name)).join(' or ')}`);
    if (given.length > 1) throw new InvalidArgumentError(`give only one of ${given.map((name) => `--${name}`).join(', ')}`);
  }
  if (missing.length > 0) throw new InvalidArgumentError(`missing ${listText(missing)}; ${seeHelp}`);
  if (cmd.arguments && positionals.length > cmd.arguments.length) {
    throw new InvalidArgumentError(`unexpected argument '${positionals[cmd.arguments.length]}' (usage: transcoders ${cmd.usage})`);
  }
  return { values, positionals };
}

/** Parses an integer option, naming the flag in the error. */
export function intOption(value: unknown, flag: string, min = 0): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`--${flag} must be an integer >= ${min}, got '${value}'`);
  return n;
}

/** Parses a number option, naming the flag in the error. */
export function numberOption(value: unknown, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`--${flag} must be a number, got '${value}'`);
  return n;
}

/** Checks that a string option is one of `choices`. */
export function choiceOption<T extends string>(value: unknown, flag: string, choices: readonly T[]): T | undefined {
  if (value === undefined) return undefined;
  if (!choices.includes(value as T)) {
    const guess = didYouMean(String(value), choices);
    throw new InvalidArgumentError(`--${flag} must be one of ${choices.join(', ')}, got '${value}'${guess ? ` (did you mean ${guess}?)` : ''}`);
  }
  return value as T;
}

/** The `--device D` option of the commands that compute. */
export const DEVICE_OPTION: OptionSpec = { type: 'string', value: 'D', description: 'cpu (default), cuda, cuda:N' };

/** The `--threads N` option every heavy command takes. */
export const THREADS_OPTION: OptionSpec = { type: 'string', value: 'N', description: 'CPU threads for libtorch (default: all cores)' };

/** Applies `--threads` when given. */
export function applyThreads(values: Record<string, unknown>): void {
  const threads = intOption(values.threads, 'threads', 1);
  if (threads) setNumThreads(threads);
}

/** A repeatable option whose values may also be comma-separated: `--data a.txt,b.txt --data c.txt`. */
export function listOption(values: Record<string, unknown>, flag: string): string[] {
  const raw = values[flag];
  const list = raw === undefined ? [] : Array.isArray(raw) ? (raw as string[]) : [String(raw)];
  return list.flatMap((v) => v.split(',')).filter(Boolean);
}

/** Throws when `flags` (option names without `--`) are given: they do not apply, and `why` says why. */
export function rejectOptions(values: Record<string, unknown>, flags: string[], why: string): void {
  const given = flags.filter((f) => isGiven(values[f]));
  if (given.length > 0) throw new InvalidArgumentError(`${listText(given.map((f) => `--${f}`))} ${given.length > 1 ? 'do' : 'does'} not apply ${why}`);
}

/**
 * What an output names:
 * - `file`: a file in a folder that must already exist (the command creates no folders);
 * - `file-mkdir`: a file whose missing folders the command creates;
 * - `folder`: a folder the command creates (with its parents) or writes into.
 */
export type OutputKind = 'file' | 'file-mkdir' | 'folder';

/** stat, or null when nothing is there (also when a component of the path is a file). */
function statOrNull(path: string): Stats | null {
  try {
    return statSync(path, { throwIfNoEntry: false }) ?? null;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw err;
  }
}

function checkWritable(folder: string, what: string): void {
  try {
    accessSync(folder, constants.W_OK);
  } catch {
    throw new InvalidArgumentError(`${what}: cannot write in ${folder} (permission denied)`);
  }
}

/**
 * Checks, before any work, that the command will be able to write `path`: a file target is not a
 * folder and its folder exists (or can be created, for `file-mkdir`); a folder target is not a file
 * and can be created. `name` is the flag or argument, e.g. `--html` or `<out-dir>`.
 */
export function checkOutputPath(path: string, name: string, kind: OutputKind): void {
  const target = resolve(path);
  const what = `${name} ${path}`;
  const existing = statOrNull(target);
  if (existing) {
    if (kind === 'folder' && !existing.isDirectory()) throw new InvalidArgumentError(`${what}: is a file, not a folder`);
    if (kind !== 'folder' && existing.isDirectory()) throw new InvalidArgumentError(`${what}: is a folder; give a file name`);
    checkWritable(kind === 'folder' ? target : dirname(target), what);
    return;
  }
  const parent = dirname(target);
  if (kind === 'file') {
    const folder = statOrNull(parent);
    if (!folder) throw new InvalidArgumentError(`${what}: the folder ${parent} does not exist`);
    if (!folder.isDirectory()) throw new InvalidArgumentError(`${what}: ${parent} is a file, not a folder`);
    checkWritable(parent, what);
    return;
  }
  // The command creates the missing folders: the nearest existing one must be a writable folder.
  let ancestor = parent;
  let found = statOrNull(ancestor);
  while (!found) {
    ancestor = dirname(ancestor);
    found = statOrNull(ancestor);
  }
  if (!found.isDirectory()) throw new InvalidArgumentError(`${what}: cannot create a folder under ${ancestor}, which is a file`);
  checkWritable(ancestor, what);
}

/** {@link checkOutputPath} for each given option of `outputs` (option name -> kind). */
export function checkOutputPaths(values: Record<string, unknown>, outputs: Record<string, OutputKind>): void {
  for (const [flag, kind] of Object.entries(outputs)) {
    const value = values[flag];
    if (typeof value === 'string') checkOutputPath(value, `--${flag}`, kind);
  }
}

/** Checks that every path given to the options `flags` (list options included) exists. */
export function checkInputPaths(values: Record<string, unknown>, flags: string[]): void {
  for (const flag of flags) {
    for (const path of listOption(values, flag)) {
      if (!existsSync(path)) throw new InvalidArgumentError(`--${flag} ${path}: no such file or folder`);
    }
  }
}

/**
 * A model argument (`name` as in the usage, e.g. `model-dir`): an existing local folder, or a Hugging
 * Face repo id (`org/name[@revision]`) found in the local hub cache, returned as the folder to read.
 * A path written as one that does not exist keeps the plain "no such file or folder" message.
 */
export function checkModelArgument(arg: string | undefined, name: string): string | undefined {
  if (arg === undefined) return undefined;
  if (isWrittenAsPath(arg) && !existsSync(arg)) throw new InvalidArgumentError(`<${name}> ${arg}: no such file or folder`);
  return resolveModelSource(arg);
}

/**
 * The paths given to a transcoder option (`--transcoders`): each an existing local file or folder, or a
 * Hugging Face repo id (`org/name[/subfolder][@revision]`) found in the local hub cache.
 */
export function checkTranscoderArguments(values: Record<string, unknown>, flag: string): string[] {
  return listOption(values, flag).map((path) => checkTranscoderArgument(path, `--${flag}`));
}

/** One transcoder path argument (`label` as in messages, e.g. `<in>`), as {@link checkTranscoderArguments}. */
export function checkTranscoderArgument(path: string, label: string): string {
  if (isWrittenAsPath(path) && !existsSync(path)) throw new InvalidArgumentError(`${label} ${path}: no such file or folder`);
  return resolveTranscoderSource(path);
}

/** Checks that a positional path argument exists (`name` as in the usage, e.g. `model-dir`). */
export function checkInputArgument(path: string | undefined, name: string): void {
  if (path !== undefined && !existsSync(path)) throw new InvalidArgumentError(`<${name}> ${path}: no such file or folder`);
}
