/**
 * The demo's self-contained HTML report: the transcoders' metrics, the greater-than experiment with
 * its plot, both circuit graphs with their top paths, and a card per feature. Everything is inline
 * (SVG, CSS); the page needs no network and no scripts.
 */
import { escapeHtml, graphSvg } from '../circuits/render.js';
import type { TokenEffects, TokenScore } from '../circuits/connections.js';
import { barChart, lineChart, type Series } from './charts.js';
import type { CircuitResult, DemoResult } from './result.js';
import type { FeatureCard } from './features.js';
import type { GreaterThanResult } from './greater-than.js';
import { EVENTS } from './tasks.js';

const fmt = (x: number, digits = 3) => (Number.isFinite(x) ? x.toFixed(digits) : String(x));
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
const ABLATION_COLORS = ['#f0ad4e', '#e67e22', '#d35400', '#c0392b', '#8e44ad', '#6c3483', '#34495e', '#17202a'];

function tokensLine(tokens: readonly string[], highlight: Record<number, string>): string {
  return tokens
    .map((t, i) => `<span class="tok${highlight[i] ? ' hl' : ''}" title="position ${i}${highlight[i] ? `: ${escapeHtml(highlight[i]!)}` : ''}">${escapeHtml(t)}<sub>${i}</sub></span>`)
    .join('');
}

function metricsSection(r: DemoResult): string {
  const e = r.evaluation;
  const rows = e.layers.map((l) => `<tr><td>${l.layer}</td><td>${fmt(l.l0, 1)}</td><td>${fmt(l.fvu)}</td><td>${fmt(l.ceLoss)}</td><td>${fmt(l.ceLossZeroAblated)}</td><td>${pct(l.ceLossRecovered)}</td><td>${pct(l.deadFraction)}</td></tr>`);
  const how = r.pretrained
    ? `the shipped transcoders (<code>${escapeHtml(r.transcodersDir)}</code>)`
    : `transcoders trained by this run on ${r.training!.tokens.toLocaleString('en')} activations per layer (${r.training!.steps} steps, ${fmt(r.training!.seconds, 0)} s), saved in <code>${escapeHtml(r.transcodersDir)}</code>`;
  return `<h2>1. Transcoders</h2>
<p>One ReLU transcoder per layer (${how}), each approximating its MLP's output from the MLP's input. Evaluated on ${e.sequences} held-out sequences (${e.tokens} tokens).</p>
<table><tr><th>layer</th><th>L0</th><th>FVU</th><th>CE loss, this MLP replaced</th><th>CE loss, this MLP zeroed</th><th>CE loss recovered</th><th>dead features</th></tr>${rows.join('')}</table>
<p>Original CE loss <b>${fmt(e.ceLossClean)}</b> nats; with <b>every</b> MLP replaced by its transcoder <b>${fmt(e.ceLossReplaced)}</b>; with every MLP zeroed ${fmt(e.ceLossZeroAblated)}: CE loss recovered <b>${pct(e.ceLossRecovered)}</b>, KL(original ‖ replaced) ${fmt(e.klDivergence, 4)} nats.</p>`;
}

function experimentSection(r: DemoResult): string {
  const x = r.experiment;
  const last = x.splicedByLayer[x.splicedByLayer.length - 1]!;
  const chosen = x.splicedByLayer.find((s) => s.layer === x.layer)!;
  const series: Series[] = [
    { label: `original model (mean ${fmt(x.original.meanProbDiff)})`, color: '#2c3e50', values: x.original.probDiff },
    { label: `last MLP (${last.layer}) replaced by its transcoder (mean ${fmt(last.result.meanProbDiff)})`, color: '#27ae60', values: last.result.probDiff, dashed: true },
    ...(chosen.layer !== last.layer ? [{ label: `MLP ${chosen.layer} replaced (mean ${fmt(chosen.result.meanProbDiff)})`, color: '#16a085', values: chosen.result.probDiff, dashed: true }] : []),
    ...x.ablations.map((a, i) => ({ label: `MLP ${x.layer} replaced, without feature${a.removed.length > 1 ? 's' : ''} ${a.removed.join(', ')} (mean ${fmt(a.result.meanProbDiff)})`, color: ABLATION_COLORS[i % ABLATION_COLORS.length]!, values: a.result.probDiff })),
  ];
  const row = (label: string, g: GreaterThanResult) => `<tr><td>${escapeHtml(label)}</td><td>${fmt(g.meanProbDiff)}</td><td>${pct(g.meanValidMass)}</td><td>${pct(g.meanYearMass)}</td></tr>`;
  const rows = [
    row('original model', x.original),
    ...x.splicedByLayer.map((s) => row(`MLP ${s.layer} → transcoder`, s.result)),
    row('every MLP → transcoder', x.splicedAll),
    ...x.ablations.map((a) => row(`MLP ${x.layer} → transcoder, minus features ${a.removed.join(', ')}`, a.result)),
  ];
  const importance = x.importance.slice(0, 10).map((i) => `<tr><td><a href="#f-${x.layer}-${i.feature}">mlp${x.layer}[${i.feature}]</a></td><td>${fmt(i.meanActivation)}</td><td>${fmt(i.drop, 4)}</td></tr>`);
  return `<h2>2. The greater-than experiment</h2>
<p>Prompts “The &lt;event&gt; lasted from the year 17YY to the year 17” for every start year YY = 02…98 and ${EVENTS.length} events. The <b>probability difference</b> is p(end year &gt; YY) − p(end year ≤ YY), summed over the two-digit tokens “00”…“99” (the paper's metric; 1 is perfect). Each MLP is replaced by its transcoder; then, in layer ${x.layer} (by default the MLP layer carrying most of the feature attribution of the circuit in section 3; <code>--experiment-layer</code> picks another), the features whose removal hurts most are removed, one more at a time, at every position.</p>
${lineChart(x.original.startYears, series, { xLabel: 'start year YY', yLabel: 'probability difference', yMin: -1, yMax: 1, width: 760, height: 340 })}
<table><tr><th>model</th><th>mean probability difference</th><th>mass on valid end years</th><th>mass on any two-digit token</th></tr>${rows.join('')}</table>
<h3>How many features does it take? (MLP ${x.layer}, the paper's curve)</h3>
<p>MLP ${x.layer} replaced by only its k transcoder features of highest activation variance at the last position (Σ f<sub>i</sub> W<sub>dec</sub>[i] + b<sub>dec</sub>), against the MLP itself keeping only its k neurons of highest variance; mean probability difference on 5 events (k = 0 keeps only the output bias). Where the features reach the full MLP's value with smaller k than the neurons, the behaviour is sparser in features than in neurons.</p>
<table><tr><th>k</th>${x.topK.k.map((k) => `<th>${k}</th>`).join('')}</tr><tr><td>features</td>${x.topK.features.map((v) => `<td>${fmt(v)}</td>`).join('')}</tr><tr><td>neurons</td>${x.topK.neurons.map((v) => `<td>${fmt(v)}</td>`).join('')}</tr></table>
<h3>Feature importance (MLP ${x.layer})</h3>
<p>${x.importance.length} candidates (the layer's features in the circuit graph, then the most active ones where the graph reads them), each removed alone; “drop” is the fall of the mean probability difference (on 5 events).</p>
<table><tr><th>feature</th><th>mean activation</th><th>drop</th></tr>${importance.join('')}</table>`;
}

/** A graph in our viewer (the offline folder beside the report), embedded, with a link to open it alone. */
function viewerFrame(r: DemoResult, slug: string): string {
  const g = r.viewer.graphs.find((x) => x.slug === slug)!;
  const src = `${r.viewer.index}?slug=${encodeURIComponent(slug)}`;
  return `<p class="why">${g.nodes} nodes, ${g.links} links. In the viewer below: rows are layers (embeddings at the bottom, logits at the top) and columns the prompt's tokens; error nodes are squares; links are blue when positive and red when negative. Click a node for its feature card; the sliders re-prune. <a href="${escapeHtml(src)}">Open it on its own page</a> (or serve it with <code>transcoders serve ${escapeHtml(r.model)} --transcoders … --graphs ${escapeHtml(r.out)}/graphs</code> to compute new graphs and interventions).</p>
<iframe class="viewer" src="${escapeHtml(src)}" title="${escapeHtml(g.title)}"></iframe>`;
}

function attributionSection(r: DemoResult): string {
  return `<h2>3. Attribution graph of the end-year preference</h2>
<p>circuit-tracer's method on the same prompt and the same logit difference as the circuit below: every active feature's direct effect in the local replacement model (attention patterns and norm scales frozen), pruned to the nodes and edges that carry most of the influence on the target.</p>
${viewerFrame(r, r.viewer.graphs[0]!.slug)}`;
}

function circuitSection(title: string, r: DemoResult, c: CircuitResult, intro: string, viewerSlug?: string): string {
  const highlight: Record<number, string> = { [r.startYearPosition]: 'start year', [r.tokens.length - 1]: 'prediction' };
  const paths = c.topPaths.slice(0, 10).map((p) => {
    const touches = p.positions.includes(r.startYearPosition);
    return `<tr${touches ? ' class="yy"' : ''}><td>${escapeHtml(p.nodes.join(' ← '))}</td><td>${fmt(p.contribution)}</td><td>${touches ? 'yes' : ''}</td></tr>`;
  });
  return `<h2>${escapeHtml(title)}</h2>
<p>${intro}</p>
<p class="tokens">${tokensLine(r.tokens, highlight)}</p>
<p>Root: <b>${escapeHtml(c.rootLabel)}</b> · search iters ${c.graph.metadata.search.iters}, branches ${c.graph.metadata.search.branches} · ${c.graph.nodes.length} nodes, ${c.graph.edges.length} edges.</p>
${viewerSlug ? viewerFrame(r, viewerSlug) : `<div class="graph">${graphSvg(c.graph)}</div>
<p class="why">Error nodes (what the transcoders and the pruned search leave unexplained) are drawn too; red edges are negative. The viewers' format needs a logit target, so this feature-rooted circuit is drawn here, not in the viewer.</p>`}
<h3>Top paths</h3>
<table><tr><th>path (root ← … ← source)</th><th>attribution</th><th>reaches the start year (position ${r.startYearPosition})</th></tr>${paths.join('')}</table>
<details><summary>All paths as text</summary><pre>${escapeHtml(c.pathsText)}</pre></details>`;
}

function effectsList(e: TokenEffects): string {
  const item = (t: TokenScore) => `<span class="pill">${escapeHtml(JSON.stringify(t.text ?? t.token))} ${fmt(t.value, 2)}</span>`;
  return `<div>top: ${e.top.map(item).join(' ')}</div><div>bottom: ${e.bottom.map(item).join(' ')}</div>`;
}

function featureCard(c: FeatureCard, r: DemoResult): string {
  const examples = c.topExamples.map((x) => `<li>${x.tokens.map((t, i) => (i === x.index ? `<mark>${escapeHtml(t)}</mark>` : escapeHtml(t))).join('')} <span class="act">${fmt(x.activation, 2)}</span></li>`);
  const endYears = Array.from({ length: 100 }, (_, i) => i);
  return `<div class="card" id="f-${c.layer}-${c.feature}">
<h3>mlp${c.layer}[${c.feature}] at position ${c.position} (${escapeHtml(r.tokens[c.position] ?? '')})</h3>
<p class="why">${c.reasons.map(escapeHtml).join(' · ')}</p>
<div class="row"><div><b>Activation at position ${c.position} by start year</b>${barChart(c.byStartYear.startYears, c.byStartYear.activation, { xLabel: 'start year YY', markX: r.startYear })}</div>
<div><b>${c.viaHead ? `Effect on end-year tokens through head attn${c.viaHead.layer}.h${c.viaHead.head}` : 'Direct effect on end-year tokens'}</b>${barChart(endYears, c.endYearEffects, { xLabel: 'end-year token ZZ' })}</div></div>
<p><b>Top activating examples</b></p><ol>${examples.join('') || '<li>(never active on the sample)</li>'}</ol>
<p><b>De-embedding</b> (tokens whose embedding drives it directly)</p>${effectsList(c.deEmbedding)}
<p><b>Logit effects</b> (tokens it promotes / suppresses directly)</p>${effectsList(c.logitEffects)}
</div>`;
}

/** The report page. */
export function renderReport(r: DemoResult): string {
  const total = Object.values(r.seconds).reduce((a, b) => a + b, 0);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>transcoders demo: the greater-than circuit</title>
<style>
body{font-family:Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left}th{background:#f5f5f5}
code{background:#f4f4f4;padding:1px 4px}.tok{display:inline-block;border:1px solid #ddd;margin:1px;padding:1px 3px;white-space:pre;font-family:monospace}
.tok.hl{background:#fde9c8;border-color:#e67e22}sub{color:#999;font-size:9px}tr.yy td{background:#fdf3e3}
.graph{overflow-x:auto;border:1px solid #eee}iframe.viewer{width:100%;height:720px;border:1px solid #ddd;border-radius:6px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;margin:12px 0}
.row{display:flex;gap:24px;flex-wrap:wrap}.pill{display:inline-block;background:#eef3fb;border-radius:8px;padding:0 6px;margin:1px;font-family:monospace;font-size:12px;white-space:pre}
.why{color:#666;font-size:13px}.act{color:#3b7dd8;font-size:12px}mark{background:#fde9c8}pre{font-size:11px;overflow-x:auto}
</style></head><body>
<h1>transcoders demo: the greater-than circuit</h1>
<p>Model <code>${escapeHtml(r.model)}</code>: a ${r.evaluation.layers.length}-layer GPT-2 trained by this project on templated text (see <code>docs/demo-model.md</code>). Run time ${fmt(total, 0)} s (${Object.entries(r.seconds).filter(([, s]) => s > 0).map(([k, s]) => `${k} ${fmt(s, 0)} s`).join(', ')}).</p>
<p><b>How to read it.</b> Transcoders replace each MLP with a wide, sparse layer of features. A circuit is a set of paths of attributions (activation × input-invariant weights) from a root — here how much the model prefers a valid end year to an invalid one — back to the tokens. A reader can check the claim “features read the start year and boost larger end years”: the graph's paths reach the start-year position, the feature cards show activations that change with the start year and direct effects that favour end years above it, and removing those features lowers the probability difference.</p>
${metricsSection(r)}
${experimentSection(r)}
${attributionSection(r)}
${circuitSection('4. Circuit of the end-year preference (the paper\'s method)', r, r.logitCircuit, 'Greedy path search from the logit difference between the favourite valid end year and the favourite invalid one. Nodes: <code>mlpL[F]@P</code> a transcoder feature, <code>attnL.hH@P</code> attention head H of layer L reading from position P, <code>embed@P</code> the token + position embedding, <code>err.*</code> what the transcoders do not explain. Edge widths are attributions; in the viewer, attention heads are folded into the edges they carry.', r.viewer.graphs[1]!.slug)}
${circuitSection('5. Circuit of the top feature at the last position', r, r.featureCircuit, 'The same search from the activation of the feature that contributes most to that logit difference.')}
<h2>6. Features</h2>
${r.features.map((c) => featureCard(c, r)).join('\n')}
</body></html>
`;
}
