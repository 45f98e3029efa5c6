/** What the prompt-based commands (`circuit`, `graph`) read from their arguments: tokens. */
import { InvalidArgumentError } from '../errors.js';
import type { Model } from '../models/model.js';

/** A token given as text (one token without BOS) or as `#id`. */
export function resolveToken(model: Model, text: string, flag: string): number {
  if (/^#\d+$/.test(text)) return Number(text.slice(1));
  const ids = model.tokenize(text, { prependBos: false });
  if (ids.length !== 1) throw new InvalidArgumentError(`${flag} '${text}' is ${ids.length} tokens (${ids.join(', ')}); give one token, or an id as #N`);
  return ids[0]!;
}
