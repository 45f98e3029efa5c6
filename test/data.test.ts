/**
 * The text-to-token data stage: documents from files, the paper's token packing (checked against an
 * independent Python version of `get_batch_tokens`), token files, and the end-to-end tokenizer run.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { main } from '../lib/cli/main.js';
import { FormatError, InvalidArgumentError } from '../lib/errors.js';
import { writeSafetensors } from '../lib/io/safetensors.js';
import { Tokenizer } from '../lib/tokenizer/tokenizer.js';
import { Rng } from '../lib/util/random.js';
import {
  packDocuments,
  readDocuments,
  readTokenFileHeader,
  readTokenRows,
  tokenizeToFile,
  TokenPacker,
  writeTokenFile,
  type BosMode,
} from '../lib/data/index.js';
import { makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';

const PYTHON = '/usr/bin/python3';

/**
 * The paper's packing loop (sae_training/activations_store.py, `get_batch_tokens`), written from
 * paper-method.md §2.3 over pre-tokenised documents. `to_tokens` is TransformerLens's
 * `model.to_tokens(text, truncate=True)`: BOS + tokens, cut to max_len (BOS included). Because the
 * test stream is finite, a call that runs out of documents returns what it has, plus the tokens
 * left in its unfinished row.
 */
const PYTHON_REFERENCE = String.raw`
import json, sys

def get_batch_tokens(docs, batch_size, context_size, to_tokens, bos_token_id, prepend_bos):
    batch_tokens = []
    current_batch = []
    current_length = 0
    while len(batch_tokens) < batch_size:
        try:
            doc = next(docs)
        except StopIteration:
            return batch_tokens, [t for part in current_batch for t in part], True
        tokens = to_tokens(doc)
        token_len = len(tokens)
        while token_len > 0 and len(batch_tokens) < batch_size:
            space_left = context_size - current_length
            if token_len <= space_left:
                current_batch.append(tokens[:token_len])
                current_length += token_len
                break
            else:
                current_batch.append(tokens[:space_left])
                tokens = tokens[space_left:]
                if prepend_bos:
                    tokens = [bos_token_id] + tokens
                    token_len += 1
                token_len -= space_left
                current_length = context_size
            if current_length == context_size:
                full_batch = [t for part in current_batch for t in part]
                batch_tokens.append(full_batch)
                current_batch = []
                current_length = 0
    return batch_tokens[:batch_size], [], False

def run(case):
    prepend_bos = case["bos"] == "paper"
    bos, max_len = case["bosId"], case["maxDoc"]
    def to_tokens(doc):
        tokens = ([bos] if prepend_bos else []) + list(doc)
        return tokens[:max_len]
    docs = iter(case["docs"])
    batch_size = case["storeBatchSize"] or float("inf")
    rows = []
    while True:
        batch, leftover, done = get_batch_tokens(docs, batch_size, case["C"], to_tokens, bos, prepend_bos)
        rows.extend(batch)
        if done:
            return {"rows": rows, "leftover": leftover}

cases = json.load(sys.stdin)
json.dump([run(c) for c in cases], sys.stdout)
`;

interface Case {
  C: number;
  maxDoc: number;
  bos: BosMode;
  bosId: number;
  storeBatchSize: number | null;
  docs: number[][];
}

function python(script: string, input: string): string {
  const r = spawnSync(PYTHON, ['-c', script], { input, encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return r.stdout;
}

function pythonPack(cases: Case[]): { rows: number[][]; leftover: number[] }[] {
  return JSON.parse(python(PYTHON_REFERENCE, JSON.stringify(cases)));
}

function tsPack(c: Case): { rows: number[][]; flushed: number[] | null; partial: number[] | null } {
  const packer = new TokenPacker({
    contextSize: c.C,
    bos: c.bos,
    bosTokenId: c.bosId,
    maxDocumentTokens: c.maxDoc,
    ...(c.storeBatchSize ? { storeBatchSize: c.storeBatchSize } : {}),
  });
  const rows: number[][] = [];
  for (const d of c.docs) rows.push(...packer.push(d));
  const pending = packer.pendingTokens;
  const flushed = packer.flush();
  // Re-run to read the partial row as well (flush resets the packer).
  const again = new TokenPacker({ contextSize: c.C, bos: c.bos, bosTokenId: c.bosId, maxDocumentTokens: c.maxDoc, ...(c.storeBatchSize ? { storeBatchSize: c.storeBatchSize } : {}) });
  for (const d of c.docs) again.push(d);
  const partial = again.flush({ keepPartial: true });
  expect(partial?.length ?? 0).toBe(pending);
  return { rows, flushed, partial };
}

const BOS = 299;

function randomCases(seed: number, n: number): Case[] {
  const rng = new Rng(seed);
  const int = (lo: number, hi: number): number => lo + Math.floor(rng.uniform() * (hi - lo + 1));
  const doc = (len: number): number[] => Array.from({ length: len }, () => int(1, 298));
  const cases: Case[] = [];
  for (let i = 0; i < n; i++) {
    const bos: BosMode = i % 4 === 3 ? 'none' : 'paper';
    const C = [2, 3, 4, 5, 8, 16, 33][int(0, 6)]!;
    const maxDoc = [1024, C, C + 1, 2 * C, 3, 7][int(0, 5)]!;
    const off = bos === 'paper' ? 1 : 0; // BOS tokens the paper adds to a document
    const docs: number[][] = [];
    const nDocs = int(0, 40);
    const pattern = int(0, 5);
    for (let d = 0; d < nDocs; d++) {
      const kind = pattern === 0 ? int(0, 8) : pattern === 1 ? 1 : int(0, 8); // pattern 1: runs of exact fits
      let len: number;
      switch (kind) {
        case 0: len = 0; break; // empty document: [BOS] in the paper
        case 1: len = C - off; break; // exactly one row with its BOS
        case 2: len = maxDoc - off; break; // exactly maxDocumentTokens with its BOS
        case 3: len = int(C, 4 * C); break; // longer than a row
        case 4: len = maxDoc + int(0, 10); break; // truncated
        case 5: len = 2 * C - 1 - off; break; // exact fit of the continuation row
        default: len = int(0, C); break;
      }
      docs.push(doc(Math.max(0, len)));
    }
    const storeBatchSize = i % 5 === 4 ? int(1, 4) : null;
    cases.push({ C, maxDoc, bos, bosId: BOS, storeBatchSize, docs });
  }
  // Named cases: a run of exact fits, an empty document after an exact fit, maxDocumentTokens docs.
  cases.push({ C: 4, maxDoc: 1024, bos: 'paper', bosId: BOS, storeBatchSize: null, docs: [doc(3), doc(3), doc(3), doc(3), doc(3)] });
  cases.push({ C: 4, maxDoc: 1024, bos: 'paper', bosId: BOS, storeBatchSize: null, docs: [doc(3), [], [], doc(2), doc(9)] });
  cases.push({ C: 128, maxDoc: 1024, bos: 'paper', bosId: BOS, storeBatchSize: null, docs: [doc(1023), doc(2000), doc(127), doc(0), doc(1023)] });
  cases.push({ C: 128, maxDoc: 1024, bos: 'paper', bosId: BOS, storeBatchSize: 3, docs: [doc(127), doc(500), doc(127), doc(127), doc(5), doc(127)] });
  return cases;
}

describe('token packing', () => {
  it('follows the paper: BOS, truncation, overflow with a new BOS, the exact-fit quirk', () => {
    const B = 0;
    const p = new TokenPacker({ contextSize: 4, bosTokenId: B });
    expect(p.push([1, 2, 3])).toEqual([]); // [B,1,2,3] fills the row exactly: pending
    expect(p.push([4])).toEqual([[B, 1, 2, 3]]); // emitted when the next document arrives...
    expect(p.pendingTokens).toBe(3); // ...which starts with two BOS: [B,B,4]
    expect(p.push([5, 6, 7, 8, 9])).toEqual([[B, B, 4, B], [B, 5, 6, 7]]); // overflow: the rest gets a BOS
    expect(p.flush({ keepPartial: true })).toEqual([B, 8, 9]);
    // A continuation that fills its row exactly is pending too; flush returns a full pending row.
    const q = new TokenPacker({ contextSize: 4, bosTokenId: B });
    expect(q.push([1, 2, 3, 4, 5, 6])).toEqual([[B, 1, 2, 3]]);
    expect(q.flush()).toEqual([B, 4, 5, 6]);
    // Truncation to maxDocumentTokens counts the BOS; an empty document is a lone BOS.
    const r = new TokenPacker({ contextSize: 8, bosTokenId: B, maxDocumentTokens: 3 });
    r.push([1, 2, 3, 4, 5]);
    r.push([]);
    expect(r.flush({ keepPartial: true })).toEqual([B, 1, 2, B]);
    expect(r.flush({ keepPartial: true })).toBeNull();
    // Partial rows are dropped by default.
    const s = new TokenPacker({ contextSize: 8, bosTokenId: B });
    s.push([1]);
    expect(s.flush()).toBeNull();
  });

  it('matches an independent Python get_batch_tokens on random document-length patterns', () => {
    const cases = randomCases(12345, 400);
    const expected = pythonPack(cases);
    let rowsCompared = 0;
    let quirks = 0;
    cases.forEach((c, i) => {
      const want = expected[i]!;
      const got = tsPack(c);
      expect(got.rows, `case ${i}: ${JSON.stringify(c).slice(0, 300)}`).toEqual(want.rows);
      expect(got.flushed).toEqual(want.leftover.length === c.C ? want.leftover : null);
      expect(got.partial).toEqual(want.leftover.length > 0 ? want.leftover : null);
      rowsCompared += want.rows.length;
      if (c.bos === 'paper') quirks += want.rows.filter((r) => r[0] === BOS && r[1] === BOS).length;
    });
    expect(rowsCompared).toBeGreaterThan(2000);
    expect(quirks).toBeGreaterThan(50); // the double-BOS quirk was exercised
  });

  it('keeps its invariants: full rows, BOS-led rows (paper), plain concatenation (none)', () => {
    for (const c of randomCases(777, 200)) {
      const { rows, flushed } = tsPack(c);
      const all = flushed ? [...rows, flushed] : rows;
      for (const row of all) expect(row).toHaveLength(c.C);
      if (c.bos === 'paper') {
        for (const row of all) expect(row[0]).toBe(BOS);
      } else if (c.storeBatchSize === null) {
        const stream = c.docs.flatMap((d) => d.slice(0, c.maxDoc));
        expect(all.flat()).toEqual(stream.slice(0, Math.floor(stream.length / c.C) * c.C));
      }
    }
  });

  it('counts the documents truncated to maxDocumentTokens and the tokens cut off them', () => {
    const B = 0;
    // paper: the BOS counts, so at most 3 ids of a document fit in maxDocumentTokens 4.
    const p = new TokenPacker({ contextSize: 4, bosTokenId: B, maxDocumentTokens: 4 });
    p.push([1, 2, 3]); // exactly at the limit: not truncated
    p.push([]);
    expect([p.truncatedDocuments, p.truncatedTokens]).toEqual([0, 0]);
    p.push([1, 2, 3, 4, 5, 6, 7]); // 4 ids cut
    p.push([1, 2, 3, 4]); // 1 id cut
    expect([p.truncatedDocuments, p.truncatedTokens]).toEqual([2, 5]);
    p.flush();
    expect([p.truncatedDocuments, p.truncatedTokens]).toEqual([2, 5]); // counts are kept over flushes
    // none: no BOS, the limit is on the ids themselves.
    const q = new TokenPacker({ contextSize: 2, bos: 'none', maxDocumentTokens: 3 });
    expect(q.push([1, 2, 3, 4, 5])).toEqual([[1, 2]]);
    q.push([6, 7, 8]);
    expect([q.truncatedDocuments, q.truncatedTokens]).toEqual([1, 2]);
    // Random cases: exactly the tokens that never reach a row because of the truncation.
    for (const c of randomCases(4242, 100)) {
      const packer = new TokenPacker({ contextSize: c.C, bos: c.bos, bosTokenId: c.bosId, maxDocumentTokens: c.maxDoc });
      for (const d of c.docs) packer.push(d);
      const limit = c.bos === 'paper' ? c.maxDoc - 1 : c.maxDoc;
      expect(packer.truncatedTokens).toBe(c.docs.reduce((sum, d) => sum + Math.max(0, d.length - limit), 0));
      expect(packer.truncatedDocuments).toBe(c.docs.filter((d) => d.length > limit).length);
    }
  });

  it('rejects bad options', () => {
    expect(() => new TokenPacker({ contextSize: 1, bosTokenId: 0 })).toThrow(InvalidArgumentError);
    expect(() => new TokenPacker({ contextSize: 8 })).toThrow(InvalidArgumentError); // paper needs a BOS id
    expect(() => new TokenPacker({ contextSize: 8, bos: 'none', maxDocumentTokens: 0 })).toThrow(InvalidArgumentError);
    expect(() => new TokenPacker({ contextSize: 8, bos: 'x' as BosMode, bosTokenId: 0 })).toThrow(InvalidArgumentError);
    expect(new TokenPacker({ contextSize: 1, bos: 'none' }).push([1, 2])).toEqual([[1]]);
  });
});

describe('readDocuments', () => {
  const collect = async (paths: string[]) => {
    const out = [];
    for await (const d of readDocuments(paths)) out.push(d);
    return out;
  };

  it('reads paragraphs of .txt files, lines of .jsonl files and folders sorted by path', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'a.txt'), '\uFEFFFirst para\nline two\n\n\n  \nSecond para\r\nstill second\r\n\r\nThird');
    writeFileSync(join(dir, 'b.jsonl'), '{"text": "one"}\n\n   \n{"text": "", "id": 3}\n{"text": "two\\nlines"}\n');
    const docs = await collect([join(dir, 'a.txt'), join(dir, 'b.jsonl')]);
    expect(docs.map((d) => d.text)).toEqual(['First para\nline two', 'Second para\nstill second', 'Third', 'one', '', 'two\nlines']);
    expect(docs.map((d) => d.line)).toEqual([1, 6, 9, 1, 4, 5]);
    expect(docs[3]!.source).toBe(join(dir, 'b.jsonl'));

    const folder = join(dir, 'corpus');
    mkdirSync(join(folder, 'sub'), { recursive: true });
    writeFileSync(join(folder, 'z.txt'), 'zed');
    writeFileSync(join(folder, 'b.jsonl'), '{"text":"bee"}');
    writeFileSync(join(folder, 'sub', 'a.txt'), 'sub a');
    writeFileSync(join(folder, 'a.txt'), 'ay\n\nay two');
    writeFileSync(join(folder, 'notes.md'), 'ignored');
    writeFileSync(join(folder, '.hidden.txt'), 'ignored');
    const fromFolder = await collect([folder]);
    expect(fromFolder.map((d) => d.text)).toEqual(['ay', 'ay two', 'bee', 'sub a', 'zed']);
  });

  it('reports bad inputs with the file (and line)', async () => {
    const dir = tempDir();
    const bad = join(dir, 'bad.jsonl');
    writeFileSync(bad, '{"text": "ok"}\n\n{"text": broken}\n');
    const err = await collect([bad]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FormatError);
    expect((err as FormatError).message).toContain(`${bad}:3`);
    expect((err as FormatError).file).toBe(bad);
    writeFileSync(bad, '{"text": "ok"}\n{"body": "no text"}\n');
    await expect(collect([bad])).rejects.toThrow(`${bad}:2`);
    writeFileSync(bad, '{"text": 5}\n');
    await expect(collect([bad])).rejects.toThrow(`${bad}:1`);
    writeFileSync(bad, '["text"]\n');
    await expect(collect([bad])).rejects.toThrow(FormatError);
    await expect(collect([join(dir, 'missing.txt')])).rejects.toThrow(FormatError);
    writeFileSync(join(dir, 'x.csv'), 'a,b');
    await expect(collect([join(dir, 'x.csv')])).rejects.toThrow(InvalidArgumentError);
    mkdirSync(join(dir, 'empty'));
    await expect(collect([join(dir, 'empty')])).rejects.toThrow(FormatError);
  });

  it('warns when a .txt file of several lines has no blank line (it is one document)', async () => {
    const dir = tempDir();
    const warnings: string[] = [];
    const read = async (name: string, text: string) => {
      const file = join(dir, name);
      writeFileSync(file, text);
      const docs = [];
      for await (const d of readDocuments([file], { onWarning: (m) => warnings.push(m) })) docs.push(d.text);
      return docs;
    };
    expect(await read('lines.txt', 'doc one\ndoc two\r\ndoc three\n')).toEqual(['doc one\ndoc two\ndoc three']);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`${join(dir, 'lines.txt')}: no blank line separates its 3 lines, so the whole file is one document`);
    expect(warnings[0]).toContain('.jsonl');
    // Blank lines only around the text: still a single document of several lines.
    expect(await read('padded.txt', '\n\nfirst\nsecond\n\n\n')).toEqual(['first\nsecond']);
    expect(warnings).toHaveLength(2);
    expect(warnings[1]).toContain('padded.txt: no blank line separates its 2 lines');
    // No warning: paragraphs, a single line, an empty file, .jsonl.
    expect(await read('paragraphs.txt', 'a\nb\n\nc')).toEqual(['a\nb', 'c']);
    expect(await read('one-line.txt', 'just one line\n')).toEqual(['just one line']);
    expect(await read('empty.txt', '')).toEqual([]);
    expect(await read('lines.jsonl', '{"text": "a"}\n{"text": "b"}\n')).toEqual(['a', 'b']);
    expect(warnings).toHaveLength(2);
    // Without a callback the documents are the same and nothing is thrown.
    const plain = [];
    for await (const d of readDocuments([join(dir, 'lines.txt')])) plain.push(d.text);
    expect(plain).toEqual(['doc one\ndoc two\ndoc three']);
  });

  it('streams: stopping early works on a large file', async () => {
    const dir = tempDir();
    const file = join(dir, 'big.jsonl');
    writeFileSync(file, Array.from({ length: 50_000 }, (_, i) => JSON.stringify({ text: `doc ${i}` })).join('\n'));
    let n = 0;
    for await (const d of readDocuments([file])) {
      if (++n === 3) {
        expect(d.text).toBe('doc 2');
        break;
      }
    }
    expect(n).toBe(3);
  });
});

describe('token files', () => {
  const meta = { contextSize: 5, tokenizer: 'gpt2', bos: 'paper' as const, sources: ['a.txt', 'dir/b.jsonl'], documents: 7 };
  const makeRows = (n: number, C: number) => Array.from({ length: n }, (_, r) => Int32Array.from({ length: C }, (_, j) => r * 1000 + j - 3));

  it('round-trips rows and metadata, with partial reads and no temp file left', async () => {
    const dir = tempDir();
    const path = join(dir, 'tokens.safetensors');
    const rows = makeRows(13, 5);
    async function* gen() {
      for (const r of rows) yield r;
    }
    expect(await writeTokenFile(path, gen(), { ...meta, documents: () => 9 })).toEqual({ rows: 13, documents: 9 });
    expect(readdirSync(dir)).toEqual(['tokens.safetensors']);
    const h = readTokenFileHeader(path);
    expect(h).toMatchObject({ rows: 13, contextSize: 5, tokenizer: 'gpt2', bos: 'paper', sources: ['a.txt', 'dir/b.jsonl'], documents: 9 });
    expect(h.metadata).toMatchObject({ format: 'transcoders-tokens', version: '1', contextSize: '5', documents: '9', sources: '["a.txt","dir/b.jsonl"]' });
    expect(h.dataStart % 8).toBe(0);
    expect([...(await readTokenRows(path, 0, 13))]).toEqual(rows.flatMap((r) => [...r]));
    expect([...(await readTokenRows(h, 4, 3))]).toEqual(rows.slice(4, 7).flatMap((r) => [...r]));
    expect(await readTokenRows(h, 13, 0)).toHaveLength(0);
    await expect(readTokenRows(h, 12, 2)).rejects.toThrow(InvalidArgumentError);
    await expect(readTokenRows(h, -1, 1)).rejects.toThrow(InvalidArgumentError);

    // A plain safetensors reader (Python's struct + json, no library) sees the same file.
    const py = python(
      String.raw`
import json, struct, sys, array
f = open(sys.argv[1], 'rb')
n = struct.unpack('<Q', f.read(8))[0]
h = json.loads(f.read(n))
t = h['tokens']
a = array.array('i'); a.frombytes(f.read()[t['data_offsets'][0]:t['data_offsets'][1]])
print(json.dumps({'shape': t['shape'], 'dtype': t['dtype'], 'meta': h['__metadata__'], 'data': a.tolist()}))
`.replace('sys.argv[1]', JSON.stringify(path)),
      '',
    );
    const parsed = JSON.parse(py);
    expect(parsed.shape).toEqual([13, 5]);
    expect(parsed.dtype).toBe('I32');
    expect(parsed.meta.format).toBe('transcoders-tokens');
    expect(parsed.data).toEqual(rows.flatMap((r) => [...r]));

    // Empty and multi-chunk files (rows of 1024 tokens: 256 per write chunk).
    await writeTokenFile(path, [], meta);
    expect(readTokenFileHeader(path).rows).toBe(0);
    const big = makeRows(700, 1024);
    await writeTokenFile(path, big, { ...meta, contextSize: 1024 });
    expect([...(await readTokenRows(path, 255, 3))]).toEqual(big.slice(255, 258).flatMap((r) => [...r]));
    expect([...(await readTokenRows(path, 699, 1))]).toEqual([...big[699]!]);
  });

  it('a failing row source leaves no target and no temp file (and an existing target untouched)', async () => {
    const dir = tempDir();
    const path = join(dir, 'tokens.safetensors');
    async function* failing() {
      for (const r of makeRows(600, 1024)) yield r; // more than two write chunks reach the disk
      throw new Error('boom');
    }
    await expect(writeTokenFile(path, failing(), { ...meta, contextSize: 1024 })).rejects.toThrow('boom');
    expect(readdirSync(dir)).toEqual([]);
    await writeTokenFile(path, makeRows(2, 5), meta);
    const before = readFileSync(path);
    await expect(writeTokenFile(path, failing(), { ...meta, contextSize: 1024 })).rejects.toThrow('boom');
    await expect(writeTokenFile(path, [new Int32Array(4)], meta)).rejects.toThrow(InvalidArgumentError); // wrong row length
    expect(readdirSync(dir)).toEqual(['tokens.safetensors']);
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  it('rejects corrupted headers, wrong dtype or shape, and foreign safetensors files', async () => {
    const dir = tempDir();
    const path = join(dir, 't.safetensors');
    await writeTokenFile(path, makeRows(3, 5), meta);
    const good = readFileSync(path);
    const corrupt = Buffer.from(good);
    corrupt.write('#garbage#', 8);
    writeFileSync(path, corrupt);
    expect(() => readTokenFileHeader(path)).toThrow(FormatError);
    writeFileSync(path, good.subarray(0, good.length - 4)); // truncated data
    expect(() => readTokenFileHeader(path)).toThrow(FormatError);

    const metadata = { format: 'transcoders-tokens', version: '1', contextSize: '5', tokenizer: 'gpt2', bos: 'paper', sources: '[]', documents: '1' };
    const cases: [Record<string, { dtype: 'F32' | 'I32'; shape: number[]; bytes: Uint8Array }>, Record<string, string>, string][] = [
      [{ tokens: { dtype: 'F32', shape: [2, 5], bytes: new Uint8Array(40) } }, metadata, 'dtype F32'],
      [{ tokens: { dtype: 'I32', shape: [10], bytes: new Uint8Array(40) } }, metadata, 'shape'],
      [{ tokens: { dtype: 'I32', shape: [2, 5], bytes: new Uint8Array(40) } }, { ...metadata, contextSize: '4' }, 'contextSize'],
      [{ tokens: { dtype: 'I32', shape: [2, 5], bytes: new Uint8Array(40) } }, { ...metadata, format: 'pt' }, 'format'],
      [{ tokens: { dtype: 'I32', shape: [2, 5], bytes: new Uint8Array(40) } }, { ...metadata, version: '2' }, 'version'],
      [{ tokens: { dtype: 'I32', shape: [2, 5], bytes: new Uint8Array(40) } }, { ...metadata, bos: 'yes' }, 'bos'],
      [{ tokens: { dtype: 'I32', shape: [2, 5], bytes: new Uint8Array(40) } }, { ...metadata, sources: 'a.txt' }, 'sources'],
      [{ other: { dtype: 'I32', shape: [2, 5], bytes: new Uint8Array(40) } }, metadata, "'tokens'"],
    ];
    for (const [tensors, md, why] of cases) {
      writeSafetensors(path, tensors, md);
      expect(() => readTokenFileHeader(path), why).toThrow(FormatError);
      expect(() => readTokenFileHeader(path), why).toThrow(why);
    }
    writeSafetensors(path, { tokens: { dtype: 'I32', shape: [2, 5], bytes: new Uint8Array(40) } }, metadata);
    expect(readTokenFileHeader(path).rows).toBe(2);
    await expect(readTokenRows(join(dir, 'missing.safetensors'), 0, 1)).rejects.toThrow(FormatError);
  });
});

describe('tokenizeToFile', () => {
  it('tokenises files with a tiny model tokenizer into the rows the paper would make', async () => {
    const modelDir = makeTempModel(TINY_GPT2);
    const config = JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')) as { bos_token_id: number };
    const tokenizer = Tokenizer.fromFile(join(modelDir, 'tokenizer.json'), { bosTokenId: config.bos_token_id });
    const dir = tempDir();
    const rng = new Rng(5);
    const words = ['the', 'war', 'lasted', 'from', 'year', '1732', 'to', 'dog', 'quick', 'Mary', 'John', 'store', 'model', 'tokens'];
    const sentence = (n: number) => Array.from({ length: n }, () => words[Math.floor(rng.uniform() * words.length)]).join(' ');
    const texts: string[] = [];
    const paragraphs = Array.from({ length: 30 }, (_, i) => sentence(1 + ((i * 7) % 40)));
    texts.push(...paragraphs);
    writeFileSync(join(dir, 'a.txt'), paragraphs.join('\n\n'));
    const lines = Array.from({ length: 30 }, (_, i) => (i === 4 ? '' : sentence(1 + ((i * 11) % 90))));
    texts.push(...lines);
    writeFileSync(join(dir, 'b.jsonl'), lines.map((text) => JSON.stringify({ text })).join('\n'));
    const inputs = [join(dir, 'a.txt'), join(dir, 'b.jsonl')];

    const docs = texts.map((t) => tokenizer.encode(t, { prependBos: false }));
    const [want, wantNone] = pythonPack([
      { C: 16, maxDoc: 1024, bos: 'paper', bosId: config.bos_token_id, storeBatchSize: null, docs },
      { C: 16, maxDoc: 1024, bos: 'none', bosId: config.bos_token_id, storeBatchSize: null, docs },
    ]);
    const expectedRows = (r: { rows: number[][]; leftover: number[] }) => (r.leftover.length === 16 ? [...r.rows, r.leftover] : r.rows);

    const out = join(dir, 'tokens.safetensors');
    const progress: { documents: number; rows: number }[] = [];
    const result = await tokenizeToFile(inputs, tokenizer, out, { contextSize: 16, onProgress: (p) => progress.push(p) });
    const rows = expectedRows(want!);
    expect(result).toEqual({ rows: rows.length, documents: 60, truncated: { documents: 0, tokens: 0 }, warnings: [] });
    expect(progress.at(-1)).toEqual({ rows: rows.length, documents: 60 });
    const h = readTokenFileHeader(out);
    expect(h).toMatchObject({ rows: rows.length, contextSize: 16, bos: 'paper', documents: 60, sources: inputs, tokenizer: join(modelDir, 'tokenizer.json') });
    expect([...(await readTokenRows(h, 0, h.rows))]).toEqual(rows.flat());

    // packDocuments over readDocuments gives the same rows.
    const streamed: number[][] = [];
    for await (const row of packDocuments(readDocuments(inputs), tokenizer, { contextSize: 16 })) streamed.push([...row]);
    expect(streamed).toEqual(rows);

    // bos 'none' and maxRows.
    const r2 = await tokenizeToFile(inputs, tokenizer, out, { contextSize: 16, bos: 'none', maxRows: 5 });
    expect(r2.rows).toBe(5);
    expect(r2.documents).toBeLessThan(60);
    expect(readTokenFileHeader(out)).toMatchObject({ rows: 5, bos: 'none', documents: r2.documents });
    expect([...(await readTokenRows(out, 0, 5))]).toEqual(expectedRows(wantNone!).slice(0, 5).flat());
    expect(readdirSync(dir).sort()).toEqual(['a.txt', 'b.jsonl', 'tokens.safetensors']);

    // Truncation to maxDocumentTokens is reported (counts and a warning), not silent; so is a .txt
    // file without blank lines, read as one document (which the truncation then cuts).
    const maxDoc = 12;
    const limit = maxDoc - 1; // BOS included
    const cut = docs.filter((d) => d.length > limit);
    expect(cut.length).toBeGreaterThan(5);
    const dropped = cut.reduce((sum, d) => sum + d.length - limit, 0);
    const [wantCut] = pythonPack([{ C: 16, maxDoc, bos: 'paper', bosId: config.bos_token_id, storeBatchSize: null, docs }]);
    const heard: string[] = [];
    const cutOut = join(dir, 'cut.safetensors');
    const r3 = await tokenizeToFile(inputs, tokenizer, cutOut, { contextSize: 16, maxDocumentTokens: maxDoc, onWarning: (m) => heard.push(m) });
    expect(r3.truncated).toEqual({ documents: cut.length, tokens: dropped });
    expect(r3.warnings).toEqual(heard);
    expect(heard).toEqual([`${cut.length} of 60 documents were longer than 12 tokens (BOS included) and were truncated to 12, as the paper's to_tokens(truncate=True) does: ${dropped} tokens dropped`]);
    expect([...(await readTokenRows(cutOut, 0, readTokenFileHeader(cutOut).rows))]).toEqual(expectedRows(wantCut!).flat());
    const oneDoc = join(dir, 'lines.txt');
    writeFileSync(oneDoc, paragraphs.join('\n'));
    const whole = tokenizer.encode(paragraphs.join('\n'), { prependBos: false }).length;
    const r4 = await tokenizeToFile([oneDoc], tokenizer, cutOut, { contextSize: 16 });
    expect(r4).toMatchObject({ documents: 1, truncated: { documents: 1, tokens: whole - 1023 } });
    expect(r4.warnings).toEqual([
      `${oneDoc}: no blank line separates its 30 lines, so the whole file is one document (in .txt files documents are separated by blank lines; for one document per line, put blank lines between them or use .jsonl)`,
      `1 of 1 document was longer than 1024 tokens (BOS included) and was truncated to 1024, as the paper's to_tokens(truncate=True) does: ${whole - 1023} tokens dropped`,
    ]);
    // The warnings are given even when the text then gives too few rows (the run fails).
    const short = join(dir, 'short.txt');
    writeFileSync(short, 'one line\nand another');
    const failing: string[] = [];
    await expect(tokenizeToFile([short], tokenizer, join(dir, 'none.safetensors'), { contextSize: 16, minRows: 5, onWarning: (m) => failing.push(m) })).rejects.toThrow(InvalidArgumentError);
    expect(failing).toEqual([expect.stringContaining(`${short}: no blank line separates its 2 lines`)]);
    for (const f of [oneDoc, short, cutOut]) rmSync(f);

    // A bad input line fails the run and leaves the previous file in place.
    writeFileSync(join(dir, 'c.jsonl'), '{"text": "fine"}\nnot json\n');
    await expect(tokenizeToFile([...inputs, join(dir, 'c.jsonl')], tokenizer, out, { contextSize: 16 })).rejects.toThrow(`c.jsonl:2`);
    expect(readTokenFileHeader(out).rows).toBe(5);
    expect(readdirSync(dir).sort()).toEqual(['a.txt', 'b.jsonl', 'c.jsonl', 'tokens.safetensors']);
  });
});

describe('transcoders tokenize', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('prints the warnings and the truncation counts', async () => {
    const modelDir = makeTempModel(TINY_GPT2);
    const dir = tempDir();
    const text = join(dir, 'corpus.txt');
    // One document per line and no blank lines: read as one document, longer than 1024 tokens.
    writeFileSync(text, Array.from({ length: 200 }, (_, i) => `document number ${i} is about the war of the year 17${i % 90}`).join('\n'));
    const out: string[] = [];
    const err: string[] = [];
    vi.spyOn(console, 'log').mockImplementation((s: unknown) => void out.push(String(s)));
    vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (err.push(String(s)), true));
    expect(await main(['tokenize', modelDir, '--data', text, '--out', join(dir, 't.safetensors'), '--context-size', '16'])).toBe(0);
    const warnings = err.filter((l) => l.startsWith('transcoders tokenize: warning: '));
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toContain(`${text}: no blank line separates its 200 lines, so the whole file is one document`);
    expect(warnings[1]).toMatch(/^transcoders tokenize: warning: 1 of 1 document was longer than 1024 tokens \(BOS included\) and was truncated to 1024, as the paper's to_tokens\(truncate=True\) does: \d+ tokens dropped\n$/);
    expect(out.join('\n')).toMatch(/wrote \d+ rows from 1 document \(16 tokens each\) to .*t\.safetensors; 1 document truncated \(\d+ tokens dropped\)/);
  });
});
