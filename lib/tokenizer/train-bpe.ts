/**
 * Trains a small GPT-2-style byte-level BPE tokenizer and returns its tokenizer.json, so tests and
 * the shipped models have a real tokenizer without any download. Deterministic: ties between
 * equally frequent pairs are broken by the pair's text.
 */

/** GPT-2's reversible map from bytes to printable unicode characters. */
export function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    table[b] = printable.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++);
  }
  return table;
}

/** GPT-2's pre-tokenization pattern (contractions, letters, numbers, other symbols, spaces). */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

export interface TrainBpeOptions {
  /** Total vocabulary including the 256 byte tokens and the special tokens. */
  vocabSize: number;
  /** Special tokens, e.g. ['<|endoftext|>'] (GPT-2: placed last) or ['<|endoftext|>', '<|padding|>'] (Pythia: first). */
  specialTokens: string[];
  specialTokensFirst?: boolean;
}

export function trainByteLevelBpe(corpus: readonly string[], options: TrainBpeOptions): object {
  const byteChars = bytesToUnicode();
  const encoder = new TextEncoder();
  // word (as symbol list) -> frequency
  const words = new Map<string, { symbols: string[]; count: number }>();
  for (const text of corpus) {
    for (const piece of text.match(GPT2_SPLIT) ?? []) {
      const mapped = [...encoder.encode(piece)].map((b) => byteChars[b]!);
      const key = mapped.join('');
      const w = words.get(key);
      if (w) w.count++;
      else words.set(key, { symbols: mapped, count: 1 });
    }
  }
  const nSpecial = options.specialTokens.length;
  const offset = options.specialTokensFirst ? nSpecial : 0;
  const vocab: Record<string, number> = {};
  byteChars.forEach((ch, i) => (vocab[ch] = offset + i));
  const merges: string[] = [];
  const budget = options.vocabSize - 256 - nSpecial;
  while (merges.length < budget) {
    const pairs = new Map<string, number>();
    for (const { symbols, count } of words.values()) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const pair = `${symbols[i]} ${symbols[i + 1]}`;
        pairs.set(pair, (pairs.get(pair) ?? 0) + count);
      }
    }
    let best: string | null = null;
    let bestCount = 0;
    for (const [pair, count] of pairs) {
      if (count > bestCount || (count === bestCount && best !== null && pair < best)) {
        best = pair;
        bestCount = count;
      }
    }
    if (best === null) break;
    const [a, b] = best.split(' ') as [string, string];
    const merged = a + b;
    merges.push(best);
    vocab[merged] = offset + 256 + merges.length - 1;
    for (const w of words.values()) {
      const out: string[] = [];
      for (let i = 0; i < w.symbols.length; i++) {
        if (i + 1 < w.symbols.length && w.symbols[i] === a && w.symbols[i + 1] === b) {
          out.push(merged);
          i++;
        } else out.push(w.symbols[i]!);
      }
      w.symbols = out;
    }
  }
  const firstSpecial = options.specialTokensFirst ? 0 : 256 + merges.length;
  const specials = options.specialTokens.map((content, i) => ({ id: firstSpecial + i, content }));
  return byteLevelBpeJson({ vocab, merges, specialTokens: specials });
}

export interface ByteLevelBpeParts {
  /** Token (in GPT-2's byte-to-unicode alphabet) -> id, without the special tokens. */
  vocab: Record<string, number>;
  merges: string[];
  specialTokens: { id: number; content: string }[];
  /** Default: GPT-2's ByteLevel pre-tokenizer with its regex. */
  preTokenizer?: object;
  /** Map a pre-token that is in the vocabulary straight to its id (default false). */
  ignoreMerges?: boolean;
}

/** A Hugging Face tokenizer.json for a byte-level BPE model (GPT-2's decoder and post-processor). */
export function byteLevelBpeJson(parts: ByteLevelBpeParts): object {
  const vocab = { ...parts.vocab };
  const addedTokens = parts.specialTokens.map(({ id, content }) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  for (const t of addedTokens) vocab[t.content] = t.id;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: parts.preTokenizer ?? { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ...(parts.ignoreMerges ? { ignore_merges: true } : {}),
      vocab,
      merges: parts.merges,
    },
  };
}
