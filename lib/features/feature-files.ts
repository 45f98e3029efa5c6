/**
 * Feature cards: their JSON schema (circuit-tracer's, with a few fields of ours) and their files, in
 * the compact layout circuit-tracer's viewer reads (peers.md 8, "Feature files"):
 * - `index.json.gz`: a gzipped JSON array indexed by layer of `{filename, offsets}` (null for a layer
 *   without features);
 * - per layer a `.bin` file of records, each a 4-byte little-endian length followed by that many bytes
 *   of zlib-deflated JSON; feature f's record spans bytes `offsets[f] .. offsets[f + 1]`. The viewer
 *   fetches that range (HTTP Range) and inflates it.
 * With `json`, every card is also written as `json/layer_{l}/{f}.json`; `features.json` records the run.
 *
 * Files are written under temporary names and renamed into place; the index last, so a folder
 * with an index holds complete layer files.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readSync, renameSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync, gunzipSync, gzipSync, inflateSync } from 'node:zlib';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';

/** One context of a feature card. */
export interface FeatureExample {
  tokens: string[];
  tokens_acts_list: number[];
  /** The token with the largest activation. */
  train_token_ind: number;
  is_repeated_datapoint: boolean;
}

/** A feature card in circuit-tracer's schema (plus `layer`, `feature` and, in layer 0, `de_embedding`). */
export interface FeatureCardJson {
  index: number;
  transcoder_id: string;
  layer: number;
  feature: number;
  examples_quantiles: { quantile_name: string; examples: FeatureExample[] }[];
  top_logits: string[];
  bottom_logits: string[];
  top_logit_values: number[];
  bottom_logit_values: number[];
  act_min: number;
  act_max: number;
  quantile_values: number[];
  histogram: number[];
  /** [0, histogram_max): the histogram's range (a power of two covering act_max). */
  histogram_max: number;
  activation_frequency: number;
  de_embedding?: { top: string[]; top_values: number[]; bottom: string[]; bottom_values: number[] };
}

export const FEATURE_INDEX_FILE = 'index.json.gz';
export const FEATURE_RUN_FILE = 'features.json';
export const layerBinFile = (layer: number) => `layer_${layer}.bin`;

export interface FeatureIndexEntry {
  filename: string;
  /** F + 1 byte offsets: record f is bytes [offsets[f], offsets[f + 1]). */
  offsets: number[];
}

/** Appends a layer's records in feature order, then renames the file into place. */
export class LayerBinWriter {
  private readonly fd: number;
  private readonly temp: string;
  private readonly offsets: number[] = [0];
  private position = 0;

  constructor(
    private readonly dir: string,
    readonly layer: number,
  ) {
    mkdirSync(dir, { recursive: true });
    this.temp = join(dir, `.${layerBinFile(layer)}.${process.pid}.tmp`);
    this.fd = openSync(this.temp, 'w');
  }

  /** Writes the next feature's card. */
  append(card: FeatureCardJson): void {
    const body = deflateSync(Buffer.from(JSON.stringify(card)));
    const head = Buffer.alloc(4);
    head.writeUInt32LE(body.length, 0);
    const record = Buffer.concat([head, body]);
    for (let done = 0; done < record.length; ) done += writeSync(this.fd, record, done, record.length - done, this.position + done);
    this.position += record.length;
    this.offsets.push(this.position);
  }

  /** Flushes and renames the file into place; its index entry. */
  close(): FeatureIndexEntry {
    fsyncSync(this.fd);
    closeSync(this.fd);
    renameSync(this.temp, join(this.dir, layerBinFile(this.layer)));
    return { filename: layerBinFile(this.layer), offsets: this.offsets };
  }
}

/** Writes `index.json.gz` (an array indexed by layer; null where a layer has no file). */
export function writeFeatureIndex(dir: string, entries: ReadonlyMap<number, FeatureIndexEntry>): void {
  const top = Math.max(...entries.keys());
  const index = Array.from({ length: top + 1 }, (_, l) => entries.get(l) ?? null);
  writeFileAtomic(join(dir, FEATURE_INDEX_FILE), [gzipSync(Buffer.from(JSON.stringify(index)))]);
}

/** Writes a card as `json/layer_{l}/{f}.json`. */
export function writeFeatureJson(dir: string, card: FeatureCardJson): void {
  const folder = join(dir, 'json', `layer_${card.layer}`);
  mkdirSync(folder, { recursive: true });
  writeFileAtomic(join(folder, `${card.feature}.json`), [JSON.stringify(card)]);
}

/** Reads cards from a features folder (what the service serves and tests check). */
export class FeatureFiles {
  private readonly index: (FeatureIndexEntry | null)[];

  constructor(readonly dir: string) {
    const file = join(dir, FEATURE_INDEX_FILE);
    if (!existsSync(file)) throw new FormatError(`${dir}: not a features folder (no ${FEATURE_INDEX_FILE}; write one with \`transcoders features\`)`, file);
    let parsed: unknown;
    try {
      parsed = JSON.parse(gunzipSync(readFileSync(file)).toString('utf8'));
    } catch (err) {
      throw new FormatError(`${file}: not a gzipped JSON index (${(err as Error).message})`, file);
    }
    if (!Array.isArray(parsed)) throw new FormatError(`${file}: expected an array indexed by layer`, file);
    this.index = parsed.map((e, l) => {
      if (e === null) return null;
      const entry = e as Partial<FeatureIndexEntry>;
      if (typeof entry.filename !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(entry.filename) || !Array.isArray(entry.offsets) || entry.offsets.some((o) => !Number.isSafeInteger(o) || o < 0)) {
        throw new FormatError(`${file}: layer ${l}'s entry must be {filename, offsets} with a plain file name and byte offsets`, file);
      }
      return entry as FeatureIndexEntry;
    });
  }

  /** Layers with cards. */
  get layers(): number[] {
    return this.index.flatMap((e, l) => (e ? [l] : []));
  }

  /** Features of `layer` (0 when it has none). */
  features(layer: number): number {
    const e = this.index[layer];
    return e ? e.offsets.length - 1 : 0;
  }

  /** The card of feature `feature` of `layer`. */
  read(layer: number, feature: number): FeatureCardJson {
    const text = this.readJson(layer, feature);
    try {
      return JSON.parse(text) as FeatureCardJson;
    } catch (err) {
      throw new FormatError(`${join(this.dir, this.index[layer]!.filename)}: record ${feature} is not JSON (${(err as Error).message})`, join(this.dir, this.index[layer]!.filename));
    }
  }

  /** The card's JSON text. */
  readJson(layer: number, feature: number): string {
    const file = join(this.dir, this.index[layer]?.filename ?? '');
    try {
      return inflateSync(this.readDeflated(layer, feature)).toString('utf8');
    } catch (err) {
      if (err instanceof FormatError || err instanceof InvalidArgumentError) throw err;
      throw new FormatError(`${file}: record ${feature} does not inflate (${(err as Error).message})`, file);
    }
  }

  /**
   * The card's record as stored: zlib-deflated JSON, which is HTTP's `Content-Encoding: deflate`, so
   * the service sends it as it is to clients that accept that.
   */
  readDeflated(layer: number, feature: number): Buffer {
    const e = Number.isInteger(layer) && layer >= 0 ? this.index[layer] : undefined;
    if (!e) throw new InvalidArgumentError(`no feature cards for layer ${String(layer)} in ${this.dir} (layers ${this.layers.join(', ')})`);
    if (!Number.isInteger(feature) || feature < 0 || feature >= e.offsets.length - 1) throw new InvalidArgumentError(`feature ${String(feature)} is out of range [0, ${e.offsets.length - 1}) of layer ${layer}`);
    const file = join(this.dir, e.filename);
    const [start, end] = [e.offsets[feature]!, e.offsets[feature + 1]!];
    const size = statSync(file).size;
    if (end > size || end - start < 4) throw new FormatError(`${file}: record ${feature} spans bytes ${start}..${end}, but the file has ${size}`, file);
    const buf = Buffer.alloc(end - start);
    const fd = openSync(file, 'r');
    try {
      for (let done = 0; done < buf.length; ) {
        const n = readSync(fd, buf, done, buf.length - done, start + done);
        if (n === 0) throw new FormatError(`${file}: truncated at byte ${start + done}`, file);
        done += n;
      }
    } finally {
      closeSync(fd);
    }
    const length = buf.readUInt32LE(0);
    if (length + 4 > buf.length) throw new FormatError(`${file}: record ${feature} claims ${length} bytes, its span holds ${buf.length - 4}`, file);
    return buf.subarray(4, 4 + length);
  }
}
