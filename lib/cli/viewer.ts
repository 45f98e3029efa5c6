/**
 * `transcoders viewer`: our graph viewer as a folder that opens from `file://` with no network, with
 * graphs (files written by `transcoders graph`/`circuit`, or their folders) and, optionally, the feature
 * cards of their feature nodes embedded (lib/graphs/viewer-folder.ts).
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { FeatureFiles } from '../features/feature-files.js';
import { GRAPH_METADATA_FILE, validateGraphJson, type GraphJson } from '../graphs/graph-json.js';
import { cardsOfGraphs, writeViewerFolder } from '../graphs/viewer-folder.js';
import { readJsonFile } from '../io/json.js';
import { checkOutputPath, type Command } from './command.js';

/** The graph files of a path: the file itself, or every `*.json` of a folder but its index. */
function graphFiles(path: string): string[] {
  if (!existsSync(path)) throw new InvalidArgumentError(`${path}: no such file or folder`);
  if (!statSync(path).isDirectory()) return [path];
  const files = readdirSync(path).filter((f) => f.endsWith('.json') && f !== GRAPH_METADATA_FILE).sort().map((f) => join(path, f));
  if (files.length === 0) throw new InvalidArgumentError(`${path}: the folder holds no graph files (*.json)`);
  return files;
}

function readGraph(file: string): GraphJson {
  const json = readJsonFile(file);
  try {
    validateGraphJson(json);
  } catch (err) {
    throw new FormatError(`${file}: ${(err as Error).message}`, file);
  }
  return json;
}

export const viewerCommand: Command = {
  name: 'viewer',
  summary: 'Write our graph viewer with graphs (and their feature cards) embedded: a folder that opens offline from file://.',
  usage: 'viewer <graph.json | graph-dir>... --out DIR [--features DIR]',
  details: 'Graphs: files written by `transcoders graph` or `transcoders circuit`, or their folders (every *.json but\n' +
    'graph-metadata.json). Writes DIR/index.html, viewer.js, viewer.css and data.js (the graphs and cards); open\n' +
    'DIR/index.html?slug=SLUG in a browser. The viewer also opens other graph files from its file picker.',
  options: {
    out: { type: 'string', short: 'o', value: 'DIR', description: 'folder for the viewer', required: true },
    features: { type: 'string', value: 'DIR', description: 'feature cards written by `transcoders features`, shown in the feature panel' },
  },
  async run(values, positionals) {
    if (positionals.length === 0) throw new InvalidArgumentError('give at least one graph file or folder (written by `transcoders graph`)');
    const out = values.out as string;
    checkOutputPath(out, '--out', 'folder');
    const files = positionals.flatMap(graphFiles);
    const graphs = files.map(readGraph);
    const slugs = new Set<string>();
    for (const [i, g] of graphs.entries()) {
      if (slugs.has(g.metadata.slug)) throw new InvalidArgumentError(`${files[i]}: a second graph with the slug '${g.metadata.slug}'`);
      slugs.add(g.metadata.slug);
    }
    const features = typeof values.features === 'string' ? cardsOfGraphs(graphs, new FeatureFiles(resolve(values.features))) : [];
    const index = writeViewerFolder(out, graphs, { features });
    console.log(`wrote the viewer with ${graphs.length} graph${graphs.length === 1 ? '' : 's'}${features.length ? ` and ${features.length} feature cards` : ''} to ${out}`);
    console.log(`open: ${pathToFileURL(resolve(index)).href}?slug=${encodeURIComponent(graphs[0]!.metadata.slug)}`);
  },
};
