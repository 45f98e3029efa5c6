/**
 * Text <-> token ids from a Hugging Face tokenizer.json, through @huggingface/tokenizers (a
 * maintained pure-JS implementation). BOS handling follows the TransformerLens convention of the
 * model: GPT-2 prompts start with <|endoftext|>, Pythia prompts do not (unless asked).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { FormatError, InvalidArgumentError } from '../errors.js';

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
    const vocab = hf.get_vocab(true);
    this.vocabSize = Math.max(...vocab.values()) + 1;
    this.bosTokenId = options.bosTokenId ?? hf.token_to_id('<|endoftext|>') ?? hf.token_to_id('<s>') ?? null;
    this.prependBosByDefault = options.prependBos ?? false;
  }

  /** Loads `tokenizer.json` (and `tokenizer_config.json` beside it, when present). */
  static fromFile(path: string, options: TokenizerOptions = {}): Tokenizer {
    const read = (file: string): unknown => {
      try {
        return JSON.parse(readFileSync(file, 'utf8'));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        throw new FormatError(`${file}: ${code ? `cannot read (${code})` : `invalid JSON (${(err as Error).message})`}`, file);
      }
    };
    const json = read(path);
    const configPath = join(path, '..', 'tokenizer_config.json');
    const config = existsSync(configPath) ? read(configPath) : {};
    let hf: HfTokenizer;
    try {
      hf = new HfTokenizer(json as object, config as object);
    } catch (err) {
      throw new FormatError(`${path}: not a usable tokenizer.json (${(err as Error).message})`, path);
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
