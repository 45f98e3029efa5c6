/** A tiny command framework over node:util parseArgs: typed options, `--help` for every command. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { InvalidArgumentError } from '../errors.js';
import { setNumThreads } from '../runtime.js';

export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** Shown in --help; the value name after the flag, e.g. 'FILE'. */
  value?: string;
  description: string;
  multiple?: boolean;
}

export interface Command {
  name: string;
  summary: string;
  usage: string;
  /** Extra paragraphs after the option list. */
  details?: string;
  options: Record<string, OptionSpec>;
  run(values: Record<string, string | boolean | string[] | undefined>, positionals: string[]): Promise<void>;
}

/** Help text of a command. */
export function helpText(cmd: Command): string {
  const rows = Object.entries({ ...cmd.options, help: { type: 'boolean', short: 'h', description: 'show this help' } as OptionSpec }).map(
    ([name, o]) => [`${o.short ? `-${o.short}, ` : '    '}--${name}${o.type === 'string' ? ` ${o.value ?? 'VALUE'}` : ''}`, o.description],
  );
  const width = Math.max(...rows.map(([flag]) => flag!.length)) + 2;
  const lines = [`Usage: transcoders ${cmd.usage}`, '', cmd.summary, '', 'Options:', ...rows.map(([f, d]) => `  ${f!.padEnd(width)}${d}`)];
  if (cmd.details) lines.push('', cmd.details);
  return lines.join('\n');
}

/** Parses argv for `cmd`; returns null when --help was printed. */
export function parseCommand(cmd: Command, argv: string[]): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } | null {
  const options: ParseArgsConfig['options'] = { help: { type: 'boolean', short: 'h' } };
  for (const [name, o] of Object.entries(cmd.options)) {
    options[name] = { type: o.type, ...(o.short ? { short: o.short } : {}), ...(o.multiple ? { multiple: true } : {}) };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new InvalidArgumentError(`${(err as Error).message.replace(/^TypeError \[\w+\]: /, '')}\nRun 'transcoders ${cmd.name} --help' for the options.`);
  }
  if (parsed.values.help) {
    console.log(helpText(cmd));
    return null;
  }
  return { values: parsed.values as Record<string, string | boolean | string[] | undefined>, positionals: parsed.positionals };
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
  if (!choices.includes(value as T)) throw new InvalidArgumentError(`--${flag} must be one of ${choices.join(', ')}, got '${value}'`);
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
  return ((values[flag] as string[] | undefined) ?? []).flatMap((v) => v.split(',')).filter(Boolean);
}
