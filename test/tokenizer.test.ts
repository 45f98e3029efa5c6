/** Tokenization from tokenizer.json (byte-level BPE like GPT-2 and Pythia) and the fixture BPE trainer. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, Tokenizer } from '../lib/index.js';
import { bytesToUnicode, trainByteLevelBpe } from '../lib/tokenizer/train-bpe.js';
import { tempDir } from './helpers/fixtures.js';

const corpus = ['the cat sat on the mat', 'the cat ate the rat', 'year 1732 to year 1756'];

function tokenizerFile(specials: string[], first: boolean, vocabSize = 300): string {
  const file = join(tempDir(), 'tokenizer.json');
  writeFileSync(file, JSON.stringify(trainByteLevelBpe(corpus, { vocabSize, specialTokens: specials, specialTokensFirst: first })));
  return file;
}

describe('tokenizer', () => {
  it('round-trips arbitrary text, including bytes never seen in training', () => {
    const tok = Tokenizer.fromFile(tokenizerFile(['<|endoftext|>'], false));
    for (const text of ['the cat sat', 'Zebras überall! 🦓 1732\n\ttabs', '', ' leading and trailing ']) {
      expect(tok.decode(tok.encode(text))).toBe(text);
    }
  });

  it('uses the learned merges (frequent words become single tokens)', () => {
    const tok = Tokenizer.fromFile(tokenizerFile(['<|endoftext|>'], false));
    expect(tok.encode(' cat')).toHaveLength(1);
    expect(tok.encode('the cat').length).toBeLessThan('the cat'.length);
  });

  it('places special tokens last (GPT-2) or first (Pythia) and handles BOS', () => {
    const gpt2 = Tokenizer.fromFile(tokenizerFile(['<|endoftext|>'], false), { prependBos: true });
    expect(gpt2.bosTokenId).toBe(gpt2.vocabSize - 1);
    expect(gpt2.encode('the')[0]).toBe(gpt2.bosTokenId);
    expect(gpt2.encode('the', { prependBos: false })[0]).not.toBe(gpt2.bosTokenId);
    const neox = Tokenizer.fromFile(tokenizerFile(['<|endoftext|>', '<|padding|>'], true));
    expect(neox.bosTokenId).toBe(0);
    expect(neox.encode('the')[0]).not.toBe(0);
    expect(neox.decode([0])).toBe('<|endoftext|>');
    // Special tokens in the text are recognised as such.
    expect(neox.encode('a<|endoftext|>b')).toContain(0);
  });

  it('is deterministic and maps all 256 bytes', () => {
    const a = JSON.stringify(trainByteLevelBpe(corpus, { vocabSize: 280, specialTokens: ['<|endoftext|>'] }));
    const b = JSON.stringify(trainByteLevelBpe(corpus, { vocabSize: 280, specialTokens: ['<|endoftext|>'] }));
    expect(a).toBe(b);
    expect(new Set(bytesToUnicode()).size).toBe(256);
  });

  it('rejects ids outside the vocabulary when decoding', () => {
    const tok = Tokenizer.fromFile(tokenizerFile(['<|endoftext|>'], false));
    expect(() => tok.decode([tok.vocabSize])).toThrow(InvalidArgumentError);
    expect(() => tok.decode([-1])).toThrow(/outside the tokenizer's vocabulary/);
  });
});
