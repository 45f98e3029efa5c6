/**
 * Our graph viewer as files: the bundle `npm run build` makes from lib/viewer/ (dist/viewer/:
 * index.html, viewer.js, viewer.css; no script from anywhere else), which the service serves at `/`,
 * and a self-contained copy of it with graphs (and feature cards) embedded that opens from `file://`
 * without a network: `data.js` beside index.html sets `window.TRANSCODERS_DATA`, because a page opened
 * from a file may not fetch other files.
 */
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import type { FeatureCardJson, FeatureFiles } from '../features/feature-files.js';
import { FEATURE_TYPES, validateGraphJson, type GraphJson } from './graph-json.js';

/** The bundle's files. */
export const VIEWER_FILES = ['index.html', 'viewer.js', 'viewer.css'] as const;
/** The data file a viewer folder's index.html loads before the viewer. */
export const VIEWER_DATA_FILE = 'data.js';

/** The bundle's folder (the package's dist/viewer, the same from lib/ and dist/), or null when it was not built. */
export function viewerAssetsDir(): string | null {
  const dir = fileURLToPath(new URL('../../dist/viewer/', import.meta.url));
  return VIEWER_FILES.every((f) => existsSync(join(dir, f))) ? dir : null;
}

function requireAssets(): string {
  const dir = viewerAssetsDir();
  if (!dir) throw new InvalidArgumentError('the viewer is not built (dist/viewer is missing): run `npm run build`');
  return dir;
}

export interface ViewerFolderOptions {
  /** Feature cards to embed, shown in the feature panel (keyed by layer and feature). */
  features?: readonly FeatureCardJson[];
}

/**
 * Writes the viewer into `dir` with `graphs` embedded (each validated first); returns the path of its
 * index.html. Open `index.html?slug=SLUG` for one graph.
 */
export function writeViewerFolder(dir: string, graphs: readonly GraphJson[], options: ViewerFolderOptions = {}): string {
  if (graphs.length === 0) throw new InvalidArgumentError('writeViewerFolder: give at least one graph');
  graphs.forEach((g) => validateGraphJson(g));
  const assets = requireAssets();
  mkdirSync(dir, { recursive: true });
  for (const f of VIEWER_FILES) copyFileSync(join(assets, f), join(dir, f));
  const features: Record<string, FeatureCardJson> = {};
  for (const card of options.features ?? []) features[`${card.layer}/${card.feature}`] = card;
  // JSON is a JavaScript expression; '<' escaped so that no token text can close the script element.
  const data = JSON.stringify({ graphs, features }).replaceAll('<', '\\u003c');
  writeFileAtomic(join(dir, VIEWER_DATA_FILE), [`window.TRANSCODERS_DATA = ${data};\n`]);
  return join(dir, 'index.html');
}

/**
 * The cards of the graphs' feature nodes that `features` holds. A node's feature index is the middle
 * field of its node_id (`{layer}_{index}_{position}`): its `feature` is the Cantor pairing of the two.
 */
export function cardsOfGraphs(graphs: readonly GraphJson[], features: FeatureFiles): FeatureCardJson[] {
  const wanted = new Map<string, [number, number]>();
  for (const g of graphs) {
    for (const n of g.nodes) {
      if (n.feature_type !== FEATURE_TYPES.feature) continue;
      const [layer, index] = n.node_id.split('_').map(Number) as [number, number];
      if (Number.isInteger(layer) && Number.isInteger(index)) wanted.set(`${layer}/${index}`, [layer, index]);
    }
  }
  const cards: FeatureCardJson[] = [];
  for (const [layer, index] of [...wanted.values()].sort((a, b) => a[0] - b[0] || a[1] - b[1])) {
    if (index < features.features(layer)) cards.push(features.read(layer, index));
  }
  return cards;
}
