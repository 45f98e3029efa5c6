/**
 * The demo model's tokenizer.json: every word of the task templates and every two-digit number is a
 * single token (" war", " 17", "32", "."), the way GPT-2 tokenizes years, so a year is a century
 * token followed by a two-digit token. It is an ordinary Hugging Face byte-level BPE tokenizer
 * (loaded by the same code as GPT-2's): a Split pre-tokenizer cuts text into words and digit
 * pairs, and `ignore_merges` maps each piece in the vocabulary straight to its id; text outside the
 * vocabulary falls back to GPT-2's 256 byte tokens, so any prompt can be encoded.
 */
import { byteLevelBpeJson, bytesToUnicode } from '../tokenizer/train-bpe.js';
import { CENTURIES, EVENTS, GOODS, ITEMS, NAMES, PHRASINGS, PLACES, TEMPLATES, WORDS } from './tasks.js';

export const END_OF_TEXT = '<|endoftext|>';

/** Words, then digit pairs, then single digits, then punctuation and spaces (GPT-2 style). */
export const PIECE_PATTERN = " ?\\p{N}{2}| ?\\p{N}| ?\\p{L}+| ?[^\\s\\p{L}\\p{N}]|\\s+(?!\\S)|\\s+";

/**
 * Every text piece the task generator can produce, in a fixed order: the templates' words (with a
 * leading space, and bare where a text starts with them), the filler words, and every number.
 */
function taskPieces(): string[] {
  const texts = [...PHRASINGS, ...Object.values(TEMPLATES)].map((t) => t.replace(/\{\w+\}/g, '').replace(/ +(?=[,.:])/g, ''));
  texts.push(...EVENTS, ...GOODS, ...NAMES, ...PLACES, ...ITEMS, ...WORDS);
  const pieces = new Set<string>();
  const pattern = new RegExp(PIECE_PATTERN, 'gu');
  for (const text of texts) {
    for (const piece of [...(text.match(pattern) ?? []), ...(text.match(/\p{L}+/gu) ?? []).map((w) => ` ${w}`)]) {
      if (piece.trim() !== '') pieces.add(piece);
    }
  }
  for (let n = 0; n < 100; n++) {
    const digits = String(n).padStart(2, '0');
    pieces.add(digits);
    pieces.add(` ${digits}`);
  }
  for (let n = 0; n < 10; n++) pieces.add(` ${n}`);
  for (const c of CENTURIES) pieces.add(` ${c}`);
  // " ." was in the first vocabulary the shipped model was trained with (the data never produces it);
  // it stays so that the ids, and with them the committed weights, are reproduced exactly.
  pieces.add(' .');
  return [...pieces].sort();
}

/** The tokenizer.json object: 256 byte tokens, the task pieces, then `<|endoftext|>` last (as GPT-2). */
export function demoTokenizerJson(): object {
  const byteChars = bytesToUnicode();
  const encoder = new TextEncoder();
  const vocab: Record<string, number> = {};
  byteChars.forEach((ch, i) => (vocab[ch] = i));
  for (const piece of taskPieces()) {
    const mapped = [...encoder.encode(piece)].map((b) => byteChars[b]!).join('');
    if (!(mapped in vocab)) vocab[mapped] = Object.keys(vocab).length;
  }
  return byteLevelBpeJson({
    vocab,
    merges: [],
    specialTokens: [{ id: Object.keys(vocab).length, content: END_OF_TEXT }],
    preTokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: PIECE_PATTERN }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    ignoreMerges: true,
  });
}
