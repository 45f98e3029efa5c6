/**
 * BOS handling from tokenizer_config.json and tokenizer.json (lib/tokenizer/tokenizer.ts): small
 * fixtures of the three modern conventions — a Gemma-style byte-fallback BPE (`add_bos_token: true`,
 * `<bos>`), a Llama-3-style byte-level BPE whose post-processor template starts with the added special
 * token `<|begin_of_text|>`, a Qwen-style one (`add_bos_token: false`, `bos_token: null`) — with ids
 * derived by hand from the fixtures' vocabularies and merges; and loadModel, `transcoders info` and
 * `transcoders tokenize` following the same decision.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { main } from '../lib/cli/main.js';
import { readTokenFileHeader } from '../lib/data/token-file.js';
import { FormatError } from '../lib/errors.js';
import { loadModel } from '../lib/models/model.js';
import { createRandomModel } from '../lib/models/random.js';
import { Tokenizer } from '../lib/tokenizer/tokenizer.js';
import { trainByteLevelBpe } from '../lib/tokenizer/train-bpe.js';
import { tempDir, TINY_GPT2 } from './helpers/fixtures.js';

function special(id: number, content: string) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

/** A Gemma-style tokenizer.json: SentencePiece BPE with byte fallback, ' ' -> '▁', `<bos> $A` template. */
function gemmaTokenizerJson(): object {
  const vocab: Record<string, number> = { '<pad>': 0, '<eos>': 1, '<bos>': 2, '<unk>': 3 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 4 + b;
  const pieces = ['▁', 'h', 'e', 'l', 'o', 'w', 'r', 'd', 'he', 'll', 'hell', 'hello', '▁w', 'or', '▁wor', 'ld', '▁world'];
  pieces.forEach((p, i) => (vocab[p] = 260 + i));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<pad>'), special(1, '<eos>'), special(2, '<bos>'), special(3, '<unk>')],
    normalizer: { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<bos>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<bos>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<bos>': { id: '<bos>', ids: [2], tokens: ['<bos>'] } },
    },
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }] },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab,
      merges: ['h e', 'l l', 'he ll', 'hell o', '▁ w', 'o r', '▁w or', 'l d', '▁wor ld'],
    },
  };
}

const corpus = ['the cat sat on the mat', 'the cat ate the rat', 'year 1732 to year 1756'];

/** A byte-level BPE (GPT-2 style) with `specials` added last; ids of the specials by name. */
function byteLevelJson(specials: string[]): { json: Record<string, unknown>; ids: Record<string, number> } {
  const json = trainByteLevelBpe(corpus, { vocabSize: 300, specialTokens: specials }) as Record<string, unknown>;
  const ids = Object.fromEntries((json.added_tokens as { id: number; content: string }[]).map((t) => [t.content, t.id]));
  return { json, ids };
}

function folder(tokenizer: object, config?: object): string {
  const dir = tempDir('tok-');
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
  if (config) writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return join(dir, 'tokenizer.json');
}

const GEMMA_CONFIG = { add_bos_token: true, add_eos_token: false, bos_token: '<bos>', eos_token: '<eos>', pad_token: '<pad>', unk_token: '<unk>' };

describe('Gemma-style byte-fallback BPE, add_bos_token: true', () => {
  it('encodes by the merges, falls back to bytes, and prepends <bos> because tokenizer_config.json says so', () => {
    // The family default is deliberately false here: the file's explicit add_bos_token wins.
    const tok = Tokenizer.fromFile(folder(gemmaTokenizerJson(), GEMMA_CONFIG), { defaultPrependBos: false, bosTokenId: 2 });
    expect(tok.bos).toEqual({ prependBos: true, source: 'tokenizer_config.json add_bos_token', tokenId: 2, token: '<bos>' });
    // hello▁world: he, ll, hell, hello, ▁w, or, ▁wor, ld, ▁world (merge order) -> [hello, ▁world].
    expect(tok.encode('hello world')).toEqual([2, 271, 276]);
    // é is not in the vocabulary: its UTF-8 bytes C3 A9 become <0xC3> <0xA9> (ids 4 + byte).
    expect(tok.encode('hello é', { prependBos: false })).toEqual([271, 260, 4 + 0xc3, 4 + 0xa9]);
    expect(tok.decode([271, 260, 4 + 0xc3, 4 + 0xa9])).toBe('hello é');
    expect(tok.specialTokens).toEqual({ bos: { token: '<bos>', id: 2 }, eos: { token: '<eos>', id: 1 }, pad: { token: '<pad>', id: 0 }, unk: { token: '<unk>', id: 3 } });
  });

  it('reads bos_token given as an AddedToken object, and without tokenizer_config.json follows the template', () => {
    const asObject = Tokenizer.fromFile(folder(gemmaTokenizerJson(), { ...GEMMA_CONFIG, bos_token: { __type: 'AddedToken', content: '<bos>', lstrip: false } }));
    expect(asObject.bos.token).toBe('<bos>');
    const noConfig = Tokenizer.fromFile(folder(gemmaTokenizerJson()), { defaultPrependBos: false });
    expect(noConfig.bos).toEqual({ prependBos: true, source: 'tokenizer.json post_processor', tokenId: 2, token: '<bos>' });
  });

  it('an explicit add_bos_token: false wins over the template and the family default', () => {
    const tok = Tokenizer.fromFile(folder(gemmaTokenizerJson(), { ...GEMMA_CONFIG, add_bos_token: false }), { defaultPrependBos: true });
    expect(tok.bos.prependBos).toBe(false);
    expect(tok.encode('hello')).toEqual([271]);
    // The caller's explicit choice still wins over everything.
    expect(Tokenizer.fromFile(folder(gemmaTokenizerJson(), { ...GEMMA_CONFIG, add_bos_token: false }), { prependBos: true }).encode('hello')).toEqual([2, 271]);
  });
});

describe('Llama-3-style byte-level BPE with <|begin_of_text|> as an added special token', () => {
  const { json, ids } = byteLevelJson(['<|begin_of_text|>', '<|end_of_text|>']);
  const template = {
    ...json,
    post_processor: {
      type: 'Sequence',
      processors: [
        { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
        { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }], pair: [], special_tokens: {} },
      ],
    },
  };
  const config = { bos_token: '<|begin_of_text|>', eos_token: '<|end_of_text|>', tokenizer_class: 'PreTrainedTokenizerFast' };

  it('prepends <|begin_of_text|> (no add_bos_token: the template, else the family default)', () => {
    const bos = ids['<|begin_of_text|>']!;
    const tok = Tokenizer.fromFile(folder(template, config), { defaultPrependBos: false });
    expect(tok.bos).toEqual({ prependBos: true, source: 'tokenizer.json post_processor', tokenId: bos, token: '<|begin_of_text|>' });
    const plain = tok.encode('the cat', { prependBos: false });
    expect(plain.length).toBeGreaterThan(0);
    expect(plain).not.toContain(bos);
    expect(tok.encode('the cat')).toEqual([bos, ...plain]);
    // Without the template the family default decides, with tokenizer_config.json's token.
    const byDefault = Tokenizer.fromFile(folder(json, config), { defaultPrependBos: true, bosTokenId: 0 });
    expect(byDefault.bos).toEqual({ prependBos: true, source: 'model default', tokenId: bos, token: '<|begin_of_text|>' });
    // The special token in the text is one token.
    expect(tok.encode('<|begin_of_text|>the', { prependBos: false })[0]).toBe(bos);
  });
});

describe('Qwen-style: add_bos_token false, bos_token null', () => {
  const { json, ids } = byteLevelJson(['<|endoftext|>', '<|im_start|>', '<|im_end|>']);
  const config = { add_bos_token: false, bos_token: null, eos_token: '<|im_end|>', pad_token: '<|endoftext|>', add_prefix_space: false };

  it('prepends nothing, even with a family default that says otherwise; an explicit request uses config.json\'s bos_token_id', () => {
    const eot = ids['<|endoftext|>']!;
    const tok = Tokenizer.fromFile(folder(json, config), { bosTokenId: eot, defaultPrependBos: true });
    expect(tok.bos).toEqual({ prependBos: false, source: 'tokenizer_config.json add_bos_token', tokenId: eot, token: '<|endoftext|>' });
    const plain = tok.encode('the cat');
    expect(plain).not.toContain(eot);
    expect(tok.encode('the cat', { prependBos: true })).toEqual([eot, ...plain]);
    expect(tok.specialTokens.bos).toBeNull();
    expect(tok.specialTokens.eos).toEqual({ token: '<|im_end|>', id: ids['<|im_end|>'] });
  });
});

describe('malformed tokenizer_config.json', () => {
  it('names the file and the field', () => {
    const gemma = gemmaTokenizerJson();
    for (const [config, message] of [
      [{ add_bos_token: 'yes' }, /field 'add_bos_token' must be true or false, got "yes"/],
      [{ bos_token: { content: 5 } }, /field 'bos_token' must be a token string, \{"content": "..."\} or null/],
      [{ bos_token: '<nope>' }, /field 'bos_token' names "<nope>", which the tokenizer's vocabulary does not have/],
      [{ add_bos_token: true, bos_token: null }, null],
    ] as const) {
      const file = folder(gemma, config);
      const configFile = join(file, '..', 'tokenizer_config.json');
      if (message === null) {
        // No bos_token, but the template names <bos>: usable.
        expect(Tokenizer.fromFile(file).bos.tokenId).toBe(2);
        continue;
      }
      expect(() => Tokenizer.fromFile(file)).toThrow(FormatError);
      expect(() => Tokenizer.fromFile(file)).toThrow(message);
      expect(() => Tokenizer.fromFile(file)).toThrow(configFile);
    }
    const noBos = byteLevelJson(['<|im_end|>']).json;
    expect(() => Tokenizer.fromFile(folder(noBos, { add_bos_token: true }))).toThrow(/'add_bos_token' is true but no BOS token is known/);
  });
});

describe('loadModel and the CLI follow the same decision', () => {
  afterEach(() => vi.restoreAllMocks());

  it('a GPT-2 folder whose tokenizer_config.json says add_bos_token: false', async () => {
    const dir = createRandomModel(join(tempDir(), 'gpt2'), TINY_GPT2);
    const plain = await loadModel(dir);
    expect(plain.tokenizer!.bos.source).toBe('model default');
    expect(plain.tokenize('the cat')[0]).toBe(plain.tokenizer!.bosTokenId);
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ add_bos_token: false }));
    const model = await loadModel(dir);
    expect(model.tokenizer!.bos).toMatchObject({ prependBos: false, source: 'tokenizer_config.json add_bos_token' });
    expect(model.tokenize('the cat')).toEqual(plain.tokenize('the cat').slice(1));
    plain.dispose();
    model.dispose();

    const out: string[] = [];
    vi.spyOn(console, 'log').mockImplementation((s: unknown) => void out.push(String(s)));
    expect(await main(['info', dir, '--json'])).toBe(0);
    expect(JSON.parse(out.join('\n')).tokenizer.bos).toMatchObject({ prependBos: false, source: 'tokenizer_config.json add_bos_token' });
    const data = join(tempDir(), 'data');
    mkdirSync(data);
    writeFileSync(join(data, 'a.txt'), 'the cat sat on the mat\nthe cat ate the rat\n');
    const tokens = join(tempDir(), 'tokens.safetensors');
    expect(await main(['tokenize', dir, '--data', data, '--out', tokens, '--context-size', '4'])).toBe(0);
    expect(readTokenFileHeader(tokens).bos).toBe('none');
  });
});
