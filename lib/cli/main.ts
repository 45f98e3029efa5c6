/** The `transcoders` command line: dispatches to one module per command. */
import { readFileSync } from 'node:fs';
import { TranscodersError } from '../errors.js';
import { parseCommand, type Command } from './command.js';
import { infoCommand } from './info.js';
import { makeModelCommand } from './make-model.js';
import { runCommand } from './run.js';
import { trainCommand } from './train.js';
import { evalCommand } from './eval.js';
import { cacheCommand } from './cache.js';
import { convertCommand } from './convert.js';
import { tokenizeCommand } from './tokenize.js';
import { circuitCommand } from './circuit.js';
import { connectionsCommand } from './connections.js';
import { demoCommand } from './demo.js';

const COMMANDS: Command[] = [demoCommand, runCommand, trainCommand, evalCommand, cacheCommand, tokenizeCommand, convertCommand, circuitCommand, connectionsCommand, infoCommand, makeModelCommand];

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

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(usage());
    return name === undefined ? 1 : 0;
  }
  if (name === '--version' || name === '-v') {
    console.log(version());
    return 0;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    console.error(`transcoders: unknown command '${name}'\n\n${usage()}`);
    return 2;
  }
  try {
    const parsed = parseCommand(cmd, rest);
    if (parsed) await cmd.run(parsed.values, parsed.positionals);
    return 0;
  } catch (err) {
    if (err instanceof TranscodersError) {
      console.error(`transcoders ${cmd.name}: ${err.message}`);
      return err.name === 'InvalidArgumentError' ? 2 : 1;
    }
    throw err;
  }
}
