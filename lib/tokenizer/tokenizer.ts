/**
 * Text <-> token ids from a Hugging Face tokenizer.json, through @huggingface/tokenizers (a
 * maintained pure-JS implementation). BOS handling follows the TransformerLens convention of the
 * model: GPT-2 prompts start with <|endoftext|>, Pythia prompts do not (unless asked).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { describe, readJsonFile } from '../io/json.js';

export interface TokenizerOptions {
  /** Id prepended when `prependBos` is on (defaults to the tokenizer's `<|endoftext|>` / bos token). */
  bosTokenId?: number | null;
  /** Default for {@link Tokenizer.encode}'s `prependBos`. */
  prependBos?: boolean;
}

export interface EncodeOptions {
  /** Put the BOS token first (default: the model's convention). */
  prependBos?: boolean;
}

export class Tokenizer {
  readonly path: string;
  readonly bosTokenId: number | null;
  readonly prependBosByDefault: boolean;
  /** Number of ids the tokenizer can produce (including added tokens). */
  readonly vocabSize: number;
  private readonly hf: HfTokenizer;

  private constructor(path: string, hf: HfTokenizer, options: TokenizerOptions) {
    this.path = path;
    this.hf = hf;
    // A loop, not Math.max(...values): spreading a large vocabulary overflows the argument stack.
    let maxId = -1;
    for (const id of hf.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    this.bosTokenId = options.bosTokenId ?? hf.token_to_id('<|endoftext|>') ?? hf.token_to_id('<s>') ?? null;
    this.prependBosByDefault = options.prependBos ?? false;
  }

  /** Loads `tokenizer.json` (and `tokenizer_config.json` beside it, when present). */
  static fromFile(path: string, options: TokenizerOptions = {}): Tokenizer {
    const json = readJsonFile(path);
    checkTokenizerJson(json, path);
    const configPath = join(path, '..', 'tokenizer_config.json');
    const config = existsSync(configPath) ? readJsonFile(configPath) : {};
    if (typeof config !== 'object' || config === null || Array.isArray(config)) {
      throw new FormatError(`${configPath}: expected a JSON object, got ${describe(config)}`, configPath);
    }
    let hf: HfTokenizer;
    try {
      hf = new HfTokenizer(json as object, config as object);
    } catch (err) {
      const why = String((err as Error)?.message ?? err);
      throw new FormatError(`${path}: not a usable tokenizer.json (${why.length > 200 ? `${why.slice(0, 199)}…` : why})`, path);
    }
    return new Tokenizer(path, hf, options);
  }

  /** Token ids of `text`. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids = this.hf.encode(text, { add_special_tokens: false }).ids;
    const prepend = options.prependBos ?? this.prependBosByDefault;
    if (!prepend) return ids;
    if (this.bosTokenId === null) throw new InvalidArgumentError(`${this.path}: prependBos requested but the tokenizer has no BOS token`);
    return [this.bosTokenId, ...ids];
  }

  /** Text of a sequence of ids (special tokens kept). */
  decode(ids: readonly number[]): string {
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new InvalidArgumentError(`decode: token id ${id} is outside the tokenizer's vocabulary [0, ${this.vocabSize})`);
      }
    }
    if (ids.length === 0) return '';
    return this.hf.decode([...ids], { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  /** Text of each id on its own, e.g. for labelling positions: `['<|endoftext|>', 'The', ' war']`. */
  decodeEach(ids: readonly number[]): string[] {
    return ids.map((id) => this.decode([id]));
  }
}

/**
 * Structural checks of a tokenizer.json made before handing it to @huggingface/tokenizers, which
 * trusts its input: it sizes tables by the largest id (one id of 2^31 keeps it busy for minutes)
 * and reports wrong types as TypeErrors deep inside. Every id (vocabulary and added tokens) must
 * be an integer below the number of tokens the file defines.
 */
export function checkTokenizerJson(json: unknown, file: string): void {
  const fail = (why: string): never => {
    throw new FormatError(`${file}: ${why}`, file);
  };
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (!isObject(json)) return fail(`expected a JSON object, got ${describe(json)}`);
  const model = Object.hasOwn(json, 'model') ? json.model : undefined;
  if (!isObject(model)) return fail(`field 'model' must be an object, got ${describe(model)}`);
  const added = Object.hasOwn(json, 'added_tokens') ? json.added_tokens : [];
  if (added !== null && !Array.isArray(added)) fail(`field 'added_tokens' must be a list, got ${describe(added)}`);
  const addedTokens = (added ?? []) as unknown[];
  const vocab = Object.hasOwn(model, 'vocab') ? model.vocab : undefined;
  // Unigram vocabularies are lists of [token, score], their ids the positions; the others map tokens to ids.
  let vocabIds: [string, unknown][] = [];
  if (Array.isArray(vocab)) {
    vocab.forEach((entry, i) => {
      if (!Array.isArray(entry) || typeof entry[0] !== 'string' || typeof entry[1] !== 'number') fail(`field 'model.vocab[${i}]' must be [token, score], got ${describe(entry)}`);
    });
  } else if (isObject(vocab)) {
    vocabIds = Object.entries(vocab);
  } else if (vocab !== undefined) {
    fail(`field 'model.vocab' must be an object or a list, got ${describe(vocab)}`);
  }
  const size = (Array.isArray(vocab) ? vocab.length : vocabIds.length) + addedTokens.length;
  const checkId = (where: string, token: string, id: unknown): void => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= size) {
      fail(`${where}: token ${describe(token)} has id ${describe(id)}, outside the vocabulary's ${size} ids [0, ${size})`);
    }
  };
  for (const [token, id] of vocabIds) checkId("field 'model.vocab'", token, id);
  addedTokens.forEach((t, i) => {
    if (!isObject(t)) return fail(`field 'added_tokens[${i}]' must be an object, got ${describe(t)}`);
    const content = Object.hasOwn(t, 'content') ? t.content : undefined;
    if (typeof content !== 'string') fail(`field 'added_tokens[${i}].content' must be a string, got ${describe(content)}`);
    checkId(`field 'added_tokens[${i}]'`, content as string, Object.hasOwn(t, 'id') ? t.id : undefined);
  });
  const merges = Object.hasOwn(model, 'merges') ? model.merges : undefined;
  if (merges !== undefined && merges !== null) {
    if (!Array.isArray(merges)) fail(`field 'model.merges' must be a list, got ${describe(merges)}`);
    (merges as unknown[]).forEach((m, i) => {
      const ok = typeof m === 'string' || (Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string');
      if (!ok) fail(`field 'model.merges[${i}]' must be "a b" or ["a", "b"], got ${describe(m)}`);
    });
  }
}
