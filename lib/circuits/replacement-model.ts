/**
 * The replacement model: a language model and its transcoders keyed by layer, each with its
 * placement (the tensor of the block it reads and the one it reconstructs), checked once when it is
 * built. Evaluation, attribution, connections, the greedy search, graphs, the demo and the CLI all
 * take one of these; nothing else pairs models with transcoders.
 *
 * A transcoder replaces layer L's MLP when it reads the MLP's input (`blocks.L.ln2.hook_normalized`
 * or `blocks.L.mlp.hook_in`) or the residual stream before the MLP's LayerNorm (`blocks.L.hook_resid_mid`;
 * `hook_resid_pre` in parallel blocks) and writes what the MLP adds to the residual
 * (`blocks.L.hook_mlp_out` / `blocks.L.mlp.hook_out`). Any other pair is an error at construction.
 *
 * Or one cross-layer transcoder replaces every MLP ({@link ReplacementModel.createCrossLayer}): its
 * placements are per layer as above, `transcoders` is empty and `crossLayer` holds it. Attribution
 * graphs take either kind; the paper's attribution, connections and the greedy search take per-layer
 * transcoders.
 */
import { basename } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { native, type NativePlacement, type NativeReplacementModel } from '../native.js';
import { loadModel, PROCESSINGS, type LoadModelOptions, type MlpReplacement, type Model, type Processing, type RunOptions, type RunOutput, type TokensInput } from '../models/model.js';
import { Tensor } from '../tensor.js';
import { CrossLayerTranscoder } from '../transcoders/cross-layer.js';
import { crossLayerFolder, loadCrossLayerTranscoder } from '../transcoders/formats/cross-layer.js';
import { loadTranscoderSet } from '../transcoders/transcoder-set.js';
import { Transcoder } from '../transcoders/transcoder.js';

/** Where a transcoder sits: its layer, the hooks it reads and writes, and what it receives in the forward. */
export type Placement = NativePlacement;

/** Which MLPs a run replaces and which of their features stay active. */
export interface ReplaceOptions {
  /** Layers whose MLP is replaced (default: every layer with a transcoder). */
  layers?: readonly number[];
  /** Per layer, the only features left active (the paper's "only these features"). */
  keep?: Readonly<Record<number, readonly number[]>>;
  /** Per layer, features forced to zero at every position (feature ablation). */
  remove?: Readonly<Record<number, readonly number[]>>;
}

export interface LoadReplacementOptions extends Omit<LoadModelOptions, 'processing'> {
  /** Weight processing; default: what the transcoders record, else `fallbackProcessing`. */
  processing?: Processing;
  /** The processing when neither the option nor the transcoders say (default 'none'). */
  fallbackProcessing?: Processing;
}

/** The model name a transcoder records, reduced to what two spellings of one model share. */
function modelKey(name: string | null | undefined): string | null {
  return name ? basename(name.replace(/[\\/]+$/, '')).toLowerCase() : null;
}

export class ReplacementModel {
  readonly model: Model;
  /** Transcoders by layer, ascending. */
  readonly transcoders: ReadonlyMap<number, Transcoder>;
  /** Placements by layer, ascending. */
  readonly placements: ReadonlyMap<number, Placement>;
  /** The cross-layer transcoder replacing every MLP, when there is one (then `transcoders` is empty). */
  readonly crossLayer: CrossLayerTranscoder | null;
  /** @internal */
  readonly handle: NativeReplacementModel;

  private constructor(model: Model, transcoders: Map<number, Transcoder>, placements: Map<number, Placement>, handle: NativeReplacementModel, crossLayer: CrossLayerTranscoder | null = null) {
    this.model = model;
    this.transcoders = transcoders;
    this.placements = placements;
    this.handle = handle;
    this.crossLayer = crossLayer;
  }

  /**
   * A cross-layer transcoder in place of every MLP of `model`: its depth, hooks, widths, device and
   * processing checked against the model. Throws InvalidArgumentError naming what is wrong.
   */
  static createCrossLayer(model: Model, crossLayer: CrossLayerTranscoder): ReplacementModel {
    if (!(crossLayer instanceof CrossLayerTranscoder)) throw new InvalidArgumentError('createCrossLayer takes a CrossLayerTranscoder');
    const wanted = crossLayer.config.processing;
    if (wanted && wanted !== model.processing) throw new InvalidArgumentError(`the cross-layer transcoder expects the model loaded with processing '${wanted}', not '${model.processing}'`);
    const handle = native().ReplacementModel.createCrossLayer(model.handle, crossLayer.handle);
    return new ReplacementModel(model, new Map(), new Map(handle.placements().map((p) => [p.layer, p])), handle, crossLayer);
  }

  /**
   * Checks `transcoders` against `model` and pairs them by their `config.layer`: layer range, hooks
   * the model has and that replace its MLP, widths, device, processing, one transcoder per layer,
   * one model. Throws InvalidArgumentError naming the layer and what is wrong.
   */
  static create(model: Model, transcoders: readonly Transcoder[] | ReadonlyMap<number, Transcoder>): ReplacementModel {
    const list: Transcoder[] = [];
    for (const [key, tc] of Array.isArray(transcoders) ? transcoders.entries() : (transcoders as ReadonlyMap<number, Transcoder>).entries()) {
      if (!(tc instanceof Transcoder)) throw new InvalidArgumentError(`transcoders must be Transcoder objects (entry ${key} is not)`);
      if (!Array.isArray(transcoders) && key !== tc.config.layer) {
        throw new InvalidArgumentError(`the transcoder given for layer ${key} records layer ${tc.config.layer}: load it with { layer: ${key} } (loadTranscoder) so that it knows its placement`);
      }
      list.push(tc);
    }
    if (list.length === 0) throw new InvalidArgumentError('a replacement model needs at least one transcoder');
    for (const tc of list) {
      const wanted = tc.config.processing;
      if (wanted && wanted !== model.processing) {
        throw new InvalidArgumentError(`the layer-${tc.config.layer} transcoder expects the model loaded with processing '${wanted}', not '${model.processing}'`);
      }
    }
    const named = list.filter((tc) => modelKey(tc.config.modelName) !== null);
    const other = named.find((tc) => modelKey(tc.config.modelName) !== modelKey(named[0]!.config.modelName));
    if (other) {
      throw new InvalidArgumentError(`transcoders of different models: layer ${named[0]!.config.layer} was trained on ${named[0]!.config.modelName}, layer ${other.config.layer} on ${other.config.modelName}`);
    }
    // The structural checks (layers, hooks, widths, device, duplicates) live in one place: natively.
    const handle = native().ReplacementModel.create(model.handle, list.map((tc) => tc.handle));
    const placements = new Map(handle.placements().map((p) => [p.layer, p]));
    const byLayer = new Map([...placements.keys()].map((l) => [l, list.find((tc) => tc.config.layer === l)!]));
    return new ReplacementModel(model, byLayer, placements, handle);
  }

  /**
   * Loads transcoders (files, folders, a training output folder of `layer_L/`, a circuit-tracer set)
   * and then the model from `modelDir` with the processing they record (or `options.processing`).
   */
  static async load(modelDir: string, transcoderPaths: readonly string[], options: LoadReplacementOptions = {}): Promise<ReplacementModel> {
    if (transcoderPaths.length === 0) throw new InvalidArgumentError('give at least one transcoder path');
    if (options.processing !== undefined && !PROCESSINGS.includes(options.processing)) {
      throw new InvalidArgumentError(`processing must be one of ${PROCESSINGS.join(', ')}, got '${String(options.processing)}'`);
    }
    const placement = { ...(options.device ? { device: options.device } : {}) };
    const { fallbackProcessing: _fallback, ...modelOptions } = options;
    const cltDir = transcoderPaths.map(crossLayerFolder).find((p) => p !== null);
    if (cltDir) {
      if (transcoderPaths.length > 1) throw new InvalidArgumentError(`${cltDir} is a cross-layer transcoder: it replaces every MLP, so give it alone`);
      const clt = await loadCrossLayerTranscoder(cltDir, placement);
      const model = await loadModel(modelDir, { ...modelOptions, processing: options.processing ?? clt.config.processing ?? options.fallbackProcessing ?? 'none' });
      try {
        return ReplacementModel.createCrossLayer(model, clt);
      } catch (err) {
        model.dispose();
        throw err;
      }
    }
    const transcoders = (await Promise.all(transcoderPaths.map((p) => loadTranscoderSet(p, placement)))).flat();
    const processing = options.processing ?? transcoders.find((t) => t.config.processing)?.config.processing ?? options.fallbackProcessing ?? 'none';
    const model = await loadModel(modelDir, { ...modelOptions, processing });
    try {
      return ReplacementModel.create(model, transcoders);
    } catch (err) {
      model.dispose();
      throw err;
    }
  }

  /** Layers with a transcoder (every layer, with a cross-layer transcoder), ascending. */
  get layers(): number[] {
    return [...this.placements.keys()];
  }

  /** The layer's transcoder; throws naming the layer when it has none (or only a share of a cross-layer one). */
  transcoder(layer: number): Transcoder {
    if (this.crossLayer) throw new InvalidArgumentError(`layer ${layer}'s MLP is replaced by a cross-layer transcoder, not a transcoder of its own: this analysis takes per-layer transcoders`);
    const tc = this.transcoders.get(layer);
    if (!tc) throw new InvalidArgumentError(`no transcoder for layer ${layer} (the replacement model has layers ${this.layers.join(', ')})`);
    return tc;
  }

  /** Features of the layer's transcoder (of the layer's source features, for a cross-layer transcoder); 0 when it has none. */
  featureCount(layer: number): number {
    if (this.crossLayer) return this.placements.has(layer) ? this.crossLayer.config.dSae : 0;
    return this.transcoders.get(layer)?.config.dSae ?? 0;
  }

  /** The layer's placement; throws naming the layer when it has no transcoder. */
  placement(layer: number): Placement {
    const p = this.placements.get(layer);
    if (!p) throw new InvalidArgumentError(`no transcoder for layer ${layer} (the replacement model has layers ${this.layers.join(', ')})`);
    return p;
  }

  /** The hooks each transcoder reads and writes: what evaluation and training capture. */
  hooks(): string[] {
    return [...this.placements.values()].flatMap((p) => [p.hookIn, p.hookOut]);
  }

  /** The MLP replacements of a run with transcoders (for {@link Model.run}'s `replaceMlp`; per-layer transcoders only). */
  replacements(options: ReplaceOptions = {}): Record<number, MlpReplacement> {
    if (this.crossLayer) throw new InvalidArgumentError("a cross-layer transcoder replaces every MLP at once: run with { crossLayer } (ReplacementModel.run does)");
    const layers = options.layers ?? this.layers;
    const out: Record<number, MlpReplacement> = {};
    for (const layer of layers) {
      const tc = this.transcoder(layer);
      const keep = options.keep?.[layer];
      const remove = options.remove?.[layer];
      if (keep === undefined && remove === undefined) {
        out[layer] = tc;
        continue;
      }
      const m = tc.config.dSae;
      const mask = new Uint8Array(m).fill(keep === undefined ? 1 : 0);
      for (const [features, value] of [[keep, 1], [remove, 0]] as const) {
        for (const f of features ?? []) {
          if (!Number.isInteger(f) || f < 0 || f >= m) throw new InvalidArgumentError(`feature ${f} of layer ${layer} is out of range [0, ${m})`);
          mask[f] = value;
        }
      }
      out[layer] = { module: tc, keep: Tensor.from(mask, [m]) };
    }
    return out;
  }

  /** Runs the model with the transcoders in place of their MLPs (all, or `replace.layers`). */
  async run(tokens: TokensInput | string, options: Omit<RunOptions, 'replaceMlp'> & { replace?: ReplaceOptions } = {}): Promise<RunOutput> {
    const { replace, ...rest } = options;
    return this.model.run(tokens, { ...rest, ...this.replacementOptions(replace) });
  }

  /** Mean next-token cross-entropy with the transcoders in place of their MLPs. */
  async loss(tokens: TokensInput | string, options: Omit<RunOptions, 'replaceMlp' | 'logits'> & { replace?: ReplaceOptions } = {}): Promise<number> {
    const { replace, ...rest } = options;
    return this.model.loss(tokens, { ...rest, ...this.replacementOptions(replace) });
  }

  /** The run options that put the transcoders in place: `replaceMlp`, or a cross-layer transcoder's `crossLayer`. */
  private replacementOptions(replace: ReplaceOptions | undefined): Pick<RunOptions, 'replaceMlp' | 'crossLayer'> {
    if (!this.crossLayer) return { replaceMlp: this.replacements(replace) };
    if (replace?.layers || replace?.keep || replace?.remove) throw new InvalidArgumentError('a cross-layer transcoder replaces every MLP at once: layers, keep and remove do not apply');
    return { crossLayer: this.crossLayer };
  }

  /** Token ids of `text` (the model's tokenizer and BOS convention). */
  tokenize(text: string, options: { prependBos?: boolean } = {}): number[] {
    return this.model.tokenize(text, options);
  }

  /** Releases the model's weights (the transcoders stay usable). */
  dispose(): void {
    this.model.dispose();
  }
}
