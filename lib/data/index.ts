/** The text-to-token data stage: documents from files, the paper's packing, token files. */
export { readDocuments, resolveInputFiles, type Document, type ReadDocumentsOptions } from './text-source.js';
export { TokenPacker, packDocuments, BOS_MODES, type BosMode, type PackOptions, type TokenPackerOptions, type TextDocument } from './packing.js';
export {
  writeTokenFile,
  readTokenFileHeader,
  readTokenRows,
  TOKEN_FILE_FORMAT,
  TOKEN_FILE_VERSION,
  type TokenFileMeta,
  type TokenFileHeader,
} from './token-file.js';
export { tokenizeToFile, type TokenizeToFileOptions, type TokenizeResult } from './tokenize.js';
