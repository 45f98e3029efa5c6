/**
 * The viewer in a real browser (Debian's chromium driven by playwright-core; test/helpers/browser.ts).
 *
 * Served: `transcoders serve`'s app on the shipped model, cards computed on demand. From the prompt
 * box a graph is computed (its progress shown), a feature node clicked shows its card with top
 * examples, the pruning slider changes the node count, an intervention changes the logits, and the
 * edits are saved into the graph's qParams. Static: a graph written by `transcoders graph`, put in a
 * viewer folder by `transcoders viewer`, opens from file:// with the network disabled (no request
 * leaves the page), and a bare viewer opens a graph file from its file picker. Screenshots go to
 * test-artifacts/viewer/.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import type { FastifyInstance } from 'fastify';
import { ReplacementModel } from '../lib/circuits/replacement-model.js';
import { FeatureFiles } from '../lib/features/feature-files.js';
import { validateGraphJson, type GraphJson } from '../lib/graphs/graph-json.js';
import { VIEWER_FILES, viewerAssetsDir } from '../lib/graphs/viewer-folder.js';
import { createServer, listen } from '../lib/service/server.js';
import { artifact, launchChromium } from './helpers/browser.js';
import { ensureDist, runCli } from './helpers/cli.js';
import { tempDir } from './helpers/fixtures.js';

const SHIPPED = new URL('../models/greater-than', import.meta.url).pathname;
const PROMPT = 'The war lasted from the year 1732 to the year 17';

let browser: Browser;
let replacement: ReplacementModel;
let app: FastifyInstance;
let origin: string;
let graphsDir: string;

/** Fails on any error the page logs or throws. */
function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  page.on('pageerror', (e) => errors.push(e.message));
  return errors;
}

const count = async (page: Page) => {
  const m = /^(\d+) nodes, (\d+) links$/.exec((await page.locator('#node-count').textContent()) ?? '');
  expect(m, 'the #node-count text').not.toBeNull();
  return { nodes: Number(m![1]), links: Number(m![2]) };
};

beforeAll(async () => {
  ensureDist(); // the bundle (dist/viewer) and the CLI
  expect(viewerAssetsDir(), 'dist/viewer is built').not.toBeNull();
  browser = await launchChromium();
  replacement = await ReplacementModel.load(SHIPPED, [join(SHIPPED, 'transcoders')]);
  graphsDir = join(tempDir('transcoders-viewer-'), 'graphs');
  app = createServer(replacement, { graphsDir, maxPromptTokens: 40 });
  origin = await listen(app, { port: 0 });
});

afterAll(async () => {
  await browser?.close();
  await app?.close();
});

describe('the viewer, served', () => {
  let context: BrowserContext;
  let page: Page;
  let errors: string[];
  beforeAll(async () => {
    context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    page = await context.newPage();
    errors = watchErrors(page);
    await page.goto(`${origin}/`);
  });
  afterAll(async () => {
    await context?.close();
  });

  it('computes a graph from the prompt box, showing its progress', async () => {
    await page.locator('#prompt-input').fill(PROMPT);
    await page.locator('#prompt-slug').fill('from-the-browser');
    await page.locator('#prompt-submit').click();
    await expect.poll(async () => (await page.locator('#progress').textContent()) ?? '', { timeout: 30_000 }).toMatch(/attribution|pruning|saving|queued/);
    await page.locator('#graph-svg .node').first().waitFor({ timeout: 60_000 });
    const saved = JSON.parse(readFileSync(join(graphsDir, 'from-the-browser.json'), 'utf8')) as GraphJson;
    validateGraphJson(saved);
    const shown = await page.locator('#graph-svg .node').count();
    const { nodes } = await count(page);
    expect(shown).toBe(nodes);
    expect(nodes).toBe(saved.nodes.length);
    expect((await count(page)).links).toBe(saved.links.length);
    expect(await page.locator('#graph-svg .node[data-kind="error"]').count()).toBeGreaterThan(0);
    expect(await page.locator('#graph-svg .link').count()).toBeGreaterThan(0);
    // The prompt's tokens label the x axis.
    const svgText = (await page.locator('#graph-svg').textContent()) ?? '';
    expect(svgText).toContain('1732'.slice(2));
    await page.screenshot({ path: artifact('served-graph.png') });
  });

  it('moving the pruning slider changes the node count', async () => {
    const before = await count(page);
    await page.locator('#node-threshold').fill('0.3');
    await expect.poll(async () => (await count(page)).nodes).toBeLessThan(before.nodes);
    expect(await page.locator('#graph-svg .node').count()).toBe((await count(page)).nodes);
    await page.locator('#node-threshold').fill('1');
    await expect.poll(async () => (await count(page)).nodes).toBeGreaterThanOrEqual(before.nodes);
    await page.screenshot({ path: artifact('served-pruned.png') });
  });

  it('clicking a feature node shows its card with top examples', async () => {
    const node = page.locator('#graph-svg .node[data-kind="feature"]').first();
    const id = await node.getAttribute('data-node-id');
    await node.click();
    await page.locator('#node-details').waitFor();
    expect(await page.locator('#node-title').textContent()).toBeTruthy();
    await page.locator('#feature-panel .feature-example').first().waitFor({ timeout: 60_000 }); // computed on demand
    expect(await page.locator('#feature-panel .feature-example').count()).toBeGreaterThan(0);
    expect(await page.locator('#feature-panel .feature-example .tok').count()).toBeGreaterThan(0);
    expect(await page.locator('#feature-histogram').count()).toBe(1);
    expect(((await page.locator('#feature-logits').textContent()) ?? '').length).toBeGreaterThan(0);
    expect(id).toMatch(/^\d+_\d+_\d+$/);
    await page.screenshot({ path: artifact('served-feature-card.png') });
  });

  it('an intervention on the selected feature changes the logits; a steered generation is shown', async () => {
    await page.locator('#intervene-section').waitFor();
    await page.locator('#intervene-mode').selectOption('set');
    await page.locator('#intervene-value').fill('40');
    await page.locator('#intervene-submit').click();
    await page.locator('#intervene-result .intervene-intervened').waitFor({ timeout: 30_000 });
    const baseline = await page.locator('#intervene-result .intervene-baseline').textContent();
    const intervened = await page.locator('#intervene-result .intervene-intervened').textContent();
    expect(await page.locator('#intervene-result .intervene-intervened li').count()).toBe(10);
    expect(baseline).toBeTruthy();
    expect(intervened).not.toBe(baseline);
    await page.locator('#steer-value').fill('40');
    await page.locator('#steer-tokens').fill('3');
    await page.locator('#steer-submit').click();
    await page.locator('#steer-result .steer-steered').waitFor({ timeout: 30_000 });
    expect(await page.locator('#steer-result .steer-baseline').count()).toBe(1);
    await page.screenshot({ path: artifact('served-intervention.png') });
  });

  it('pins, a supernode and a label are saved into the graph\'s qParams', async () => {
    const node = page.locator('#graph-svg .node[data-kind="feature"]').first();
    const id = (await node.getAttribute('data-node-id'))!;
    await node.click();
    await page.locator('#pin-node').click();
    await page.locator('#label-input').fill('a start-year feature');
    await page.locator('#label-save').click();
    await page.locator('#supernode-label').fill('years');
    await page.locator('#group-supernode').click();
    await page.locator('#save-qparams').click();
    await expect.poll(() => (JSON.parse(readFileSync(join(graphsDir, 'from-the-browser.json'), 'utf8')) as GraphJson).qParams.pinnedIds, { timeout: 10_000 }).toContain(id);
    const saved = JSON.parse(readFileSync(join(graphsDir, 'from-the-browser.json'), 'utf8')) as GraphJson;
    validateGraphJson(saved);
    expect(saved.qParams.clickedId).toBe(id);
    expect(saved.qParams.clerps).toContainEqual([id, 'a start-year feature']);
    expect(saved.qParams.supernodes.some((s) => s[0] === 'years' && s.includes(id))).toBe(true);
    // Reloading the graph restores them.
    await page.goto(`${origin}/?slug=from-the-browser`);
    await page.locator(`#graph-svg .node.pinned[data-node-id="${id}"]`).waitFor();
    expect(errors).toEqual([]);
  });

  it('with a token, the page takes it from #token= once and sends it on every call', async () => {
    const secured = createServer(replacement, { graphsDir, token: 'open-sesame-123' });
    const securedOrigin = await listen(secured, { port: 0, token: 'open-sesame-123' });
    const context2 = await browser.newContext();
    const page2 = await context2.newPage();
    await page2.goto(`${securedOrigin}/?slug=from-the-browser#token=open-sesame-123`);
    await page2.locator('#graph-svg .node').first().waitFor({ timeout: 30_000 });
    expect(page2.url()).not.toContain('open-sesame');
    expect(await page2.locator('#graph-select option').count()).toBeGreaterThan(0);
    // Without the token the calls are refused, and the page says so.
    const page3 = await (await browser.newContext()).newPage();
    await page3.goto(`${securedOrigin}/?slug=from-the-browser`);
    await page3.locator('#progress .error').waitFor({ timeout: 30_000 });
    expect(await page3.locator('#progress .error').textContent()).toMatch(/bearer token/);
    await context2.close();
    await page3.context().close();
    await secured.close();
  });
});

describe('the viewer, offline from file://', () => {
  it('opens a graph written by `transcoders graph` with the network disabled', async () => {
    const work = tempDir('transcoders-viewer-static-');
    const g = runCli(['graph', SHIPPED, '--transcoders', join(SHIPPED, 'transcoders'), '--prompt', PROMPT, '--out', join(work, 'graphs'), '--slug', 'war', '--threads', '2']);
    expect(g.status, g.stderr).toBe(0);
    // Cards over a few templated sentences, embedded for the graph's feature nodes.
    writeFileSync(join(work, 'data.jsonl'), Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: `The war lasted from the year 17${10 + i} to the year 17${60 + (i % 30)}.` })).join('\n'));
    const f = runCli(['features', SHIPPED, '--transcoders', join(SHIPPED, 'transcoders'), '--data', join(work, 'data.jsonl'), '--context-size', '16', '--examples', '3', '--out', join(work, 'features'), '--quiet', '--threads', '2']);
    expect(f.status, f.stderr).toBe(0);
    const v = runCli(['viewer', join(work, 'graphs'), '--out', join(work, 'viewer'), '--features', join(work, 'features')]);
    expect(v.status, v.stderr).toBe(0);
    expect(v.stdout).toContain('index.html?slug=war');
    const saved = JSON.parse(readFileSync(join(work, 'graphs', 'war.json'), 'utf8')) as GraphJson;

    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, offline: true });
    const outside: string[] = [];
    await context.route('**/*', (route) => {
      if (route.request().url().startsWith('file:')) return route.continue();
      outside.push(route.request().url());
      return route.abort();
    });
    const page = await context.newPage();
    const errors = watchErrors(page);
    await page.goto(`${pathToFileURL(join(work, 'viewer', 'index.html')).href}?slug=war`);
    await page.locator('#graph-svg .node').first().waitFor({ timeout: 30_000 });
    // At the file's own thresholds the viewer shows the file's graph as it is.
    const { nodes, links } = await count(page);
    expect(nodes).toBe(saved.nodes.length);
    expect(links).toBe(saved.links.length);
    expect(await page.locator('#graph-svg .link').count()).toBe(links);
    expect(await page.locator('#graph-svg .node[data-kind="logit"]').count()).toBe(saved.nodes.filter((n) => n.feature_type === 'logit').length);
    // The embedded card of a feature node is that node's feature (its node_id's middle field).
    const node = page.locator('#graph-svg .node[data-kind="feature"]').first();
    const [layer, index] = (await node.getAttribute('data-node-id'))!.split('_');
    await node.click();
    await page.locator('#feature-panel .feature-example').first().waitFor({ timeout: 10_000 });
    const card = new FeatureFiles(join(work, 'features')).read(Number(layer), Number(index));
    const firstExample = card.examples_quantiles[0]!.examples[0]!;
    expect(((await page.locator('#feature-panel .feature-example').first().textContent()) ?? '').replace(/\s+/g, '')).toContain(firstExample.tokens.join('').replace(/\s+/g, '').slice(0, 20));
    await page.screenshot({ path: artifact('static-graph.png') });
    await page.locator('#node-threshold').fill('0.4');
    await expect.poll(async () => (await count(page)).nodes).toBeLessThan(nodes);
    expect(outside).toEqual([]);
    expect(errors).toEqual([]);

    // A bare copy of the viewer (no data.js) opens the graph file from its file picker.
    const bare = join(work, 'bare');
    mkdirSync(bare);
    for (const f of VIEWER_FILES) copyFileSync(join(viewerAssetsDir()!, f), join(bare, f));
    const page2 = await context.newPage();
    const errors2: string[] = [];
    page2.on('pageerror', (e) => errors2.push(e.message));
    await page2.goto(pathToFileURL(join(bare, 'index.html')).href);
    await page2.locator('#graph-file').setInputFiles(join(work, 'graphs', 'war.json'));
    await page2.locator('#graph-svg .node').first().waitFor({ timeout: 30_000 });
    expect((await count(page2)).nodes).toBe(nodes); // the same graph at the same thresholds
    expect(errors2).toEqual([]);
    expect(outside).toEqual([]);
    await context.close();
  });
});
