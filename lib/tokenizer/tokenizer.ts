/**
 * Text <-> token ids from a Hugging Face tokenizer.json, through @huggingface/tokenizers (a
 * maintained pure-JS implementation). Special tokens are never added by the tokenizer itself
 * (`add_special_tokens: false`); whether prompts start with a BOS token is decided once per tokenizer
 * (see {@link BosDecision}) and applied by {@link Tokenizer.encode}, so the library and the CLI agree.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { describe, readJsonFile } from '../io/json.js';

export interface TokenizerOptions {
  /**
   * BOS id to use when the tokenizer files name none (a model's config.json `bos_token_id`); the
   * BOS token of tokenizer_config.json, or of tokenizer.json's post-processor template, comes first.
   */
  bosTokenId?: number | null;
  /** Forces {@link Tokenizer.encode}'s default `prependBos`, whatever the files say. */
  prependBos?: boolean;
  /**
   * The model family's convention (ModelConfig.defaultPrependBos), used when neither
   * tokenizer_config.json's `add_bos_token` nor tokenizer.json's post-processor says (default false).
   */
  defaultPrependBos?: boolean;
}

export interface EncodeOptions {
  /** Put the BOS token first (default: {@link Tokenizer.prependBosByDefault}). */
  prependBos?: boolean;
}

/** Where {@link BosDecision.prependBos} came from, strongest first. */
export type BosSource = 'option' | 'tokenizer_config.json add_bos_token' | 'tokenizer.json post_processor' | 'model default';

/**
 * Whether and with which token prompts begin, and why. In order: an explicit `prependBos` option;
 * tokenizer_config.json's `add_bos_token` (Gemma, Mistral, Llama 2 say true; Qwen false); a
 * tokenizer.json post-processor template that starts with a special token (Llama 3's
 * `<|begin_of_text|> $A`); the model family's default (ModelConfig.defaultPrependBos: GPT-2 yes,
 * GPT-NeoX no). The token is tokenizer_config.json's `bos_token` (a string or `{content}`), else the
 * template's, else the model's `bos_token_id`, else `<|endoftext|>` or `<s>` when the vocabulary has one.
 */
export interface BosDecision {
  prependBos: boolean;
  source: BosSource;
  /** Null when the tokenizer has no BOS token (then prependBos is false). */
  tokenId: number | null;
  token: string | null;
}

/** tokenizer_config.json's special tokens (`bos_token`, `eos_token`, `pad_token`, `unk_token`), resolved to ids. */
export type SpecialTokenIds = Record<'bos' | 'eos' | 'pad' | 'unk', { token: string; id: number } | null>;

export class Tokenizer {
  readonly path: string;
  readonly bosTokenId: number | null;
  readonly prependBosByDefault: boolean;
  /** How BOS is handled, and why (what the CLI prints and `transcoders tokenize` follows). */
  readonly bos: BosDecision;
  /** The special tokens tokenizer_config.json names (null entries: not named there). */
  readonly specialTokens: SpecialTokenIds;
  /** Number of ids the tokenizer can produce (including added tokens). */
  readonly vocabSize: number;
  private readonly hf: HfTokenizer;

  private constructor(path: string, hf: HfTokenizer, bos: BosDecision, specialTokens: SpecialTokenIds) {
    this.path = path;
    this.hf = hf;
    // A loop, not Math.max(...values): spreading a large vocabulary overflows the argument stack.
    let maxId = -1;
    for (const id of hf.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    this.bos = bos;
    this.bosTokenId = bos.tokenId;
    this.prependBosByDefault = bos.prependBos;
    this.specialTokens = specialTokens;
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
    const idOf = (token: string): number | null => hf.token_to_id(token) ?? null;
    const specialTokens = readSpecialTokens(config as Record<string, unknown>, configPath, idOf);
    const bos = decideBos(json as Record<string, unknown>, config as Record<string, unknown>, specialTokens, { path, configPath, idOf, options });
    return new Tokenizer(path, hf, bos, specialTokens);
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

/** A special token as tokenizer_config.json writes it: a string, an AddedToken object `{content, ...}`, or null. */
function specialTokenContent(value: unknown, field: string, file: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && !Array.isArray(value) && typeof (value as Record<string, unknown>).content === 'string') {
    return (value as Record<string, unknown>).content as string;
  }
  throw new FormatError(`${file}: field '${field}' must be a token string, {"content": "..."} or null, got ${describe(value)}`, file);
}

function readSpecialTokens(config: Record<string, unknown>, file: string, idOf: (token: string) => number | null): SpecialTokenIds {
  const out = { bos: null, eos: null, pad: null, unk: null } as SpecialTokenIds;
  for (const name of ['bos', 'eos', 'pad', 'unk'] as const) {
    const field = `${name}_token`;
    const token = specialTokenContent(Object.hasOwn(config, field) ? config[field] : undefined, field, file);
    if (token === null) continue;
    const id = idOf(token);
    if (id === null) throw new FormatError(`${file}: field '${field}' names ${describe(token)}, which the tokenizer's vocabulary does not have`, file);
    out[name] = { token, id };
  }
  return out;
}

/** The special token a TemplateProcessing post-processor puts before the text (`single`), if any. */
function templateBosToken(json: Record<string, unknown>): string | null {
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const processors: unknown[] = [];
  const pp = json.post_processor;
  if (isObject(pp)) {
    if (pp.type === 'Sequence' && Array.isArray(pp.processors)) processors.push(...pp.processors);
    else processors.push(pp);
  }
  for (const p of processors) {
    if (!isObject(p) || p.type !== 'TemplateProcessing' || !Array.isArray(p.single)) continue;
    const first = p.single[0];
    if (isObject(first) && isObject(first.SpecialToken) && typeof first.SpecialToken.id === 'string') return first.SpecialToken.id;
  }
  return null;
}

/** See {@link BosDecision}. */
function decideBos(
  json: Record<string, unknown>,
  config: Record<string, unknown>,
  special: SpecialTokenIds,
  ctx: { path: string; configPath: string; idOf: (token: string) => number | null; options: TokenizerOptions },
): BosDecision {
  const { path, configPath, idOf, options } = ctx;
  const addBos = Object.hasOwn(config, 'add_bos_token') ? config.add_bos_token : undefined;
  if (addBos !== undefined && addBos !== null && typeof addBos !== 'boolean') {
    throw new FormatError(`${configPath}: field 'add_bos_token' must be true or false, got ${describe(addBos)}`, configPath);
  }
  const template = templateBosToken(json);
  const templateId = template === null ? null : idOf(template);
  // The token: the one the tokenizer files name, else the model's id, else a conventional name.
  let token: string | null = null;
  let tokenId: number | null = null;
  if (special.bos) ({ token, id: tokenId } = special.bos);
  else if (template !== null && templateId !== null) [token, tokenId] = [template, templateId];
  else if (options.bosTokenId !== undefined && options.bosTokenId !== null) tokenId = options.bosTokenId;
  else {
    for (const guess of ['<|endoftext|>', '<s>']) {
      const id = idOf(guess);
      if (id !== null) {
        [token, tokenId] = [guess, id];
        break;
      }
    }
  }
  let prependBos: boolean;
  let source: BosSource;
  if (options.prependBos !== undefined) [prependBos, source] = [options.prependBos, 'option'];
  else if (typeof addBos === 'boolean') [prependBos, source] = [addBos, 'tokenizer_config.json add_bos_token'];
  else if (templateId !== null) [prependBos, source] = [true, 'tokenizer.json post_processor'];
  else [prependBos, source] = [options.defaultPrependBos ?? false, 'model default'];
  if (prependBos && tokenId === null) {
    // Only a file's explicit request is an error here; a default without a token just does not apply.
    if (source === 'tokenizer_config.json add_bos_token') {
      throw new FormatError(`${configPath}: 'add_bos_token' is true but no BOS token is known (no 'bos_token' there, no bos_token_id in config.json, and ${path} has no <|endoftext|> or <s>)`, configPath);
    }
  }
  return { prependBos, source, tokenId, token: token ?? (tokenId !== null ? tokenOf(json, tokenId) : null) };
}

/** The text of token `id` in a tokenizer.json (added tokens first, then the vocabulary), or null. */
function tokenOf(json: Record<string, unknown>, id: number): string | null {
  const added = Array.isArray(json.added_tokens) ? (json.added_tokens as { id?: unknown; content?: unknown }[]) : [];
  const hit = added.find((t) => t && t.id === id && typeof t.content === 'string');
  if (hit) return hit.content as string;
  const vocab = (json.model as Record<string, unknown> | undefined)?.vocab;
  if (vocab && typeof vocab === 'object' && !Array.isArray(vocab)) {
    for (const [token, v] of Object.entries(vocab)) if (v === id) return token;
  }
  return null;
}

/**
 * The tokenizer of a model folder (`tokenizer.json` + `tokenizer_config.json`), with the model's BOS
 * id and family default from its config; null when the folder has no tokenizer.json. What loadModel
 * and the CLI use, so that both prepend BOS alike.
 */
export function loadFolderTokenizer(dir: string, config: { bosTokenId: number | null; defaultPrependBos: boolean }): Tokenizer | null {
  const file = join(dir, 'tokenizer.json');
  if (!existsSync(file)) return null;
  return Tokenizer.fromFile(file, { bosTokenId: config.bosTokenId, defaultPrependBos: config.defaultPrependBos });
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
