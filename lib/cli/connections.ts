/** `transcoders connections`: input-invariant (weights-based) connections of one transcoder feature. */
import { InvalidArgumentError } from '../errors.js';
import { deEmbedding, featureConnections, logitEffects, type Connection, type TokenScore } from '../circuits/connections.js';
import { DEVICE_OPTION, applyThreads, checkModelArgument, checkTranscoderArguments, intOption, THREADS_OPTION, type Command } from './command.js';
import { loadModelWithTranscoders } from './transcoder-paths.js';

function parsePair(value: unknown, flag: string, what: string): [number, number] {
  const m = /^(\d+):(\d+)$/.exec(String(value ?? ''));
  if (!m) throw new InvalidArgumentError(`--${flag} must be ${what}, got '${String(value)}'`);
  return [Number(m[1]), Number(m[2])];
}

function connectionTable(title: string, rows: Connection[], heads: boolean): string[] {
  const lines = [title];
  if (rows.length === 0) return [...lines, '  (none)'];
  lines.push(heads ? '  layer  feature  via head       value' : '  layer  feature       value');
  for (const c of rows) {
    const via = heads ? `  ${`${c.attnLayer}.${c.head}`.padStart(8)}` : '';
    lines.push(`  ${String(c.layer).padStart(5)}  ${String(c.feature).padStart(7)}${via}  ${c.value.toFixed(4).padStart(10)}`);
  }
  return lines;
}

function tokenTable(title: string, rows: TokenScore[]): string[] {
  return [
    title,
    ...rows.map((t) => `  ${String(t.token).padStart(7)}  ${(t.text === null ? '' : JSON.stringify(t.text)).padEnd(18)} ${t.value.toFixed(4).padStart(10)}`),
  ];
}

export const connectionsCommand: Command = {
  name: 'connections',
  summary: 'Input-invariant connections of a feature: upstream/downstream features, de-embedding, logit effects.',
  usage: 'connections <model-dir> --transcoders DIR --feature L:F [--k N] [--through-attention] [--json]',
  details:
    'DIR is a `train` output folder (its layer_L subfolders) or transcoders in any supported format (repeat or comma-separate).\n' +
    'Connections are products of weights only (valid for every prompt): upstream W_dec[l][i] . W_enc[L][:, F] for\n' +
    'earlier layers, downstream W_dec[L][F] . W_enc[l][:, j] for later ones; --through-attention adds the paths\n' +
    "through every attention head's OV circuit. The de-embedding is W_E @ W_enc[:, F] (or through a head with\n" +
    '--deembed-head LA:H), the logit effects W_dec[F] @ W_U. The model is loaded with the processing the\n' +
    'transcoders record (default transformerlens).',
  arguments: [{ name: 'model-dir', required: true }],
  options: {
    transcoders: { type: 'string', value: 'PATH', description: 'the transcoders (a train output folder, or several paths)', multiple: true, required: true },
    feature: { type: 'string', value: 'L:F', description: 'the feature: layer L, index F', required: true },
    k: { type: 'string', value: 'N', description: 'entries per list (default 10)' },
    'through-attention': { type: 'boolean', description: "also connections through every attention head's OV circuit" },
    'deembed-head': { type: 'string', value: 'LA:H', description: 'de-embedding through head H of attention layer LA (<= L)' },
    processing: { type: 'string', value: 'P', description: 'override the model processing' },
    json: { type: 'boolean', description: 'print JSON' },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
  },
  async run(values, positionals) {
    applyThreads(values);
    const modelDir = checkModelArgument(positionals[0], 'model-dir')!;
    checkTranscoderArguments(values, 'transcoders');
    const [layer, feature] = parsePair(values.feature, 'feature', 'L:F (layer and feature index)');
    const head = values['deembed-head'] === undefined ? undefined : parsePair(values['deembed-head'], 'deembed-head', 'LA:H (attention layer and head)');
    const k = intOption(values.k, 'k', 1) ?? 10;
    const throughAttention = values['through-attention'] === true;

    const { replacement, model, paths } = await loadModelWithTranscoders(values, modelDir);
    const byLayer = replacement.transcoders;
    const tc = byLayer.get(layer);
    if (!tc) throw new InvalidArgumentError(`no transcoder for layer ${layer} among ${paths.join(', ')} (layers: ${[...byLayer.keys()].join(', ') || 'none'})`);

    const conn = await featureConnections(replacement, layer, feature, { k, throughAttention });
    const deEmbed = await deEmbedding(replacement, layer, feature, { k, ...(head ? { head: { layer: head[0], head: head[1] } } : {}) });
    const logits = await logitEffects(replacement, layer, feature, { k });

    if (values.json) {
      console.log(JSON.stringify({
        model: model.dir,
        processing: model.processing,
        layers: [...byLayer.keys()],
        ...conn,
        deEmbedding: { ...(head ? { attnLayer: head[0], head: head[1] } : {}), ...deEmbed },
        logitEffects: logits,
      }, null, 2));
      return;
    }
    const lines = [
      `feature ${layer}:${feature} (d_sae ${tc.config.dSae}); transcoders at layers ${[...byLayer.keys()].join(', ')}; input-invariant connections, top ${k}`,
      '',
      ...connectionTable(`Upstream features (W_dec[l][i] . W_enc[${layer}][:, ${feature}]):`, conn.top.upstream, false),
      '',
      ...connectionTable(`Downstream features (W_dec[${layer}][${feature}] . W_enc[l][:, j]):`, conn.top.downstream, false),
    ];
    if (conn.topThroughAttention) {
      lines.push(
        '',
        ...connectionTable('Upstream through attention (W_dec[l][i] W_V W_O . W_enc[:, F], head LA.H):', conn.topThroughAttention.upstream, true),
        '',
        ...connectionTable('Downstream through attention (W_dec[F] W_V W_O . W_enc[l][:, j], head LA.H):', conn.topThroughAttention.downstream, true),
      );
    }
    const via = head ? ` through head ${head[0]}.${head[1]}` : '';
    lines.push(
      '',
      ...tokenTable(`De-embedding${via} (W_E @ ${head ? 'W_V W_O @ ' : ''}W_enc[:, ${feature}]), top tokens:`, deEmbed.top),
      ...tokenTable('  bottom tokens:', deEmbed.bottom),
      '',
      ...tokenTable(`Logit effects (W_dec[${feature}] @ W_U), top tokens:`, logits.top),
      ...tokenTable('  bottom tokens:', logits.bottom),
    );
    console.log(lines.join('\n'));
  },
};
