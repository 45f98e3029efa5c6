/** The `transcoders` command line: dispatches to one module per command. */
import { readFileSync } from 'node:fs';
import { InvalidArgumentError, TranscodersError } from '../errors.js';
import { didYouMean, parseCommand, type Command } from './command.js';
import { infoCommand } from './info.js';
import { makeModelCommand } from './make-model.js';
import { runCommand } from './run.js';
import { trainCommand } from './train.js';
import { evalCommand } from './eval.js';
import { cacheCommand } from './cache.js';
import { convertCommand } from './convert.js';
import { tokenizeCommand } from './tokenize.js';
import { circuitCommand } from './circuit.js';
import { graphCommand } from './graph.js';
import { interveneCommand, steerCommand } from './intervene.js';
import { connectionsCommand } from './connections.js';
import { demoCommand } from './demo.js';
import { featuresCommand } from './features.js';
import { serveCommand } from './serve.js';
import { viewerCommand } from './viewer.js';

const COMMANDS: Command[] = [demoCommand, runCommand, trainCommand, evalCommand, cacheCommand, tokenizeCommand, convertCommand, circuitCommand, graphCommand, featuresCommand, serveCommand, viewerCommand, interveneCommand, steerCommand, connectionsCommand, infoCommand, makeModelCommand];

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length)) + 2;
  return [
    'Usage: transcoders <command> [options]',
    '',
    'Train transcoders on language models and find interpretable feature circuits.',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    '',
    "Run 'transcoders <command> --help' for a command's options.",
  ].join('\n');
}

/** Environment variable: set to 1 to print the stack trace of a failed command after its one-line error (for bug reports). */
export const DEBUG_ENV = 'TRANSCODERS_DEBUG';

/** A message on one line: its lines joined, with "; " where a line ends without punctuation. */
function oneLine(message: string): string {
  return message
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .reduce((text, line) => (text === '' ? line : `${text}${/[.:;,]$/.test(text) ? ' ' : '; '}${line}`), '');
}

/**
 * The one line (and exit code) an error of a command becomes: library errors say what is wrong
 * (2 for bad arguments, 1 for other failures); anything else is unexpected and gets a hint. main
 * prints the stack trace too when TRANSCODERS_DEBUG=1.
 */
export function describeError(err: unknown, command: string): { line: string; code: number } {
  const prefix = `transcoders ${command}:`;
  if (err instanceof TranscodersError) return { line: `${prefix} ${oneLine(err.message)}`, code: err instanceof InvalidArgumentError ? 2 : 1 };
  const error = err instanceof Error ? err : new Error(String(err));
  const system = typeof (error as NodeJS.ErrnoException).code === 'string' && typeof (error as NodeJS.ErrnoException).syscall === 'string';
  // System errors (EACCES, ENOSPC, ...) name their path and cause: the message alone is the answer.
  const hint = system ? `(${DEBUG_ENV}=1 shows the stack trace)` : `(unexpected error, please report it; ${DEBUG_ENV}=1 shows the stack trace)`;
  return { line: `${prefix} ${oneLine(error.message) || error.name} ${hint}`, code: 1 };
}

/** Runs the command line `argv` (without node and the script); resolves to the exit code, never rejects. */
export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    if (name === undefined) {
      console.error(usage());
      return 2;
    }
    console.log(usage());
    return 0;
  }
  if (name === '--version' || name === '-v') {
    console.log(version());
    return 0;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    const guess = didYouMean(name, COMMANDS.map((c) => c.name));
    console.error(`transcoders: unknown command '${name}'${guess ? ` (did you mean '${guess}'?)` : ''}; run 'transcoders --help' for the commands`);
    return 2;
  }
  try {
    const parsed = parseCommand(cmd, rest);
    if (parsed) await cmd.run(parsed.values, parsed.positionals);
    return 0;
  } catch (err) {
    const { line, code } = describeError(err, cmd.name);
    console.error(line);
    if (process.env[DEBUG_ENV] === '1' && err instanceof Error && err.stack) console.error(err.stack);
    return code;
  }
}
