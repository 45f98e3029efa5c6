/**
 * Documents from text files, streamed line by line (readline over createReadStream), so inputs of
 * many gigabytes never sit in memory as a whole.
 *
 * What counts as a document:
 * - `.txt`: every paragraph is a document. Paragraphs are separated by one or more blank lines
 *   (empty or whitespace-only); a paragraph's text is its lines joined with "\n" (line endings
 *   "\n" and "\r\n" are both accepted; the lines themselves are kept as they are). A file without
 *   blank lines is therefore one document, and it is held in memory whole. When a file of several
 *   lines gives a single document, `onWarning` is told so (a corpus with one document per line
 *   and no blank lines is read as one document, which tokenisation then truncates).
 * - `.jsonl`: every non-empty line is a JSON object with a string `text` field, which is the
 *   document (an empty string is a document too: the paper tokenises it to a lone BOS). Lines that
 *   are empty or whitespace-only are skipped. Any other line is a FormatError naming `file:line`.
 * - a folder: every `.txt` / `.jsonl` file below it (recursively; names starting with "." are
 *   skipped, as are other extensions), in order of their full paths (plain string order).
 * Inputs are read in the order given. A UTF-8 byte-order mark at the start of a file is ignored.
 */
import { createReadStream, readdirSync, statSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { FormatError, InvalidArgumentError } from '../errors.js';

export interface Document {
  text: string;
  /** The file the document comes from. */
  source: string;
  /** 1-based line of the file where the document starts. */
  line: number;
}

const EXTENSIONS = ['.txt', '.jsonl'] as const;

function extensionOf(path: string): (typeof EXTENSIONS)[number] | null {
  const lower = path.toLowerCase();
  return EXTENSIONS.find((ext) => lower.endsWith(ext)) ?? null;
}

function statOrFail(path: string): Stats {
  try {
    return statSync(path);
  } catch (err) {
    throw new FormatError(`${path}: cannot open (${(err as NodeJS.ErrnoException).code ?? String(err)})`, path);
  }
}

function listFolder(dir: string, out: string[]): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name.startsWith('.')) continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) listFolder(path, out);
    else if (entry.isFile() && extensionOf(entry.name)) out.push(path);
  }
}

/**
 * The files that `paths` stand for, in reading order: files as given, folders expanded to their
 * `.txt` / `.jsonl` files sorted by path. Throws FormatError for a missing path or a folder with
 * no such file, InvalidArgumentError for a file with another extension.
 */
export function resolveInputFiles(paths: readonly string[]): string[] {
  const files: string[] = [];
  for (const path of paths) {
    const stat = statOrFail(path);
    if (stat.isDirectory()) {
      const found: string[] = [];
      listFolder(path, found);
      if (found.length === 0) throw new FormatError(`${path}: the folder holds no .txt or .jsonl files`, path);
      found.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      files.push(...found);
    } else {
      if (!extensionOf(path)) throw new InvalidArgumentError(`${path}: unsupported input (expected a .txt or .jsonl file, or a folder of them)`);
      files.push(path);
    }
  }
  return files;
}

/** The lines of a file with their 1-based numbers, streamed; the stream is closed when the caller stops early. */
async function* readLines(file: string): AsyncGenerator<{ line: string; number: number }> {
  const stream = createReadStream(file, { encoding: 'utf8' });
  // readline does not forward errors of its input: keep the first one and rethrow it.
  let streamError: Error | null = null;
  stream.on('error', (err) => {
    streamError = err;
  });
  const rl = createInterface({ input: stream, crlfDelay: Infinity });
  let number = 0;
  try {
    for await (const raw of rl) {
      number++;
      yield { line: number === 1 && raw.startsWith('\uFEFF') ? raw.slice(1) : raw, number };
    }
  } catch (err) {
    streamError ??= err as Error;
  } finally {
    rl.close();
    stream.destroy();
  }
  if (streamError) {
    const e = streamError as NodeJS.ErrnoException;
    throw new FormatError(`${file}: cannot read (${e.code ?? e.message})`, file);
  }
}

export interface ReadDocumentsOptions {
  /** Called with each warning (a `.txt` file of several lines that is a single document). */
  onWarning?: (message: string) => void;
}

async function* readTxt(file: string, options: ReadDocumentsOptions): AsyncGenerator<Document> {
  let lines: string[] = [];
  let start = 0;
  let documents = 0;
  let firstLines = 0;
  const warnOneDocument = (count: number): void =>
    options.onWarning?.(
      `${file}: no blank line separates its ${count} lines, so the whole file is one document ` +
        '(in .txt files documents are separated by blank lines; for one document per line, put blank lines between them or use .jsonl)',
    );
  for await (const { line, number } of readLines(file)) {
    if (line.trim() === '') {
      if (lines.length > 0) {
        if (++documents === 1) firstLines = lines.length;
        yield { text: lines.join('\n'), source: file, line: start };
      }
      lines = [];
    } else {
      if (lines.length === 0) start = number;
      lines.push(line);
    }
  }
  if (lines.length > 0) {
    // Said before the document goes on, so that it precedes what the document then causes.
    if (documents === 0 && lines.length > 1) warnOneDocument(lines.length);
    yield { text: lines.join('\n'), source: file, line: start };
  } else if (documents === 1 && firstLines > 1) {
    warnOneDocument(firstLines); // the document was followed by blank lines only
  }
}

async function* readJsonl(file: string): AsyncGenerator<Document> {
  for await (const { line, number } of readLines(file)) {
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      throw new FormatError(`${file}:${number}: not valid JSON (${(err as Error).message})`, file);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new FormatError(`${file}:${number}: expected a JSON object with a string "text" field`, file);
    }
    const text = (value as { text?: unknown }).text;
    if (typeof text !== 'string') {
      throw new FormatError(`${file}:${number}: the object has no string "text" field (got ${text === undefined ? 'none' : typeof text})`, file);
    }
    yield { text, source: file, line: number };
  }
}

/**
 * Streams the documents of `.txt` files, `.jsonl` files and folders of them, in order (see the
 * module comment for what a document is). Stopping the iteration early closes the open file.
 */
export async function* readDocuments(paths: readonly string[], options: ReadDocumentsOptions = {}): AsyncGenerator<Document> {
  for (const file of resolveInputFiles(paths)) {
    if (extensionOf(file) === '.jsonl') yield* readJsonl(file);
    else yield* readTxt(file, options);
  }
}
