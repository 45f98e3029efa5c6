/**
 * Hook-name selection: exact TransformerLens names or `*` patterns
 * (`blocks.*.hook_resid_post`, `blocks.3.attn.*`) resolved against the names a model has.
 */
import { InvalidArgumentError } from '../errors.js';

function patternToRegExp(pattern: string): RegExp {
  const escaped = pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*');
  return new RegExp(`^${escaped}$`);
}

/** Expands names and patterns to the model's hook names, in forward order, without duplicates. */
export function selectHooks(requested: readonly string[], available: readonly string[]): string[] {
  const wanted = new Set<string>();
  if (!Array.isArray(requested)) throw new InvalidArgumentError(`hooks must be an array of hook names or patterns, got ${JSON.stringify(requested)}`);
  for (const item of requested) {
    if (typeof item !== 'string') throw new InvalidArgumentError(`hook names must be strings, got ${JSON.stringify(item)}`);
    const name = item.trim();
    if (name.includes('*')) {
      const re = patternToRegExp(name);
      const matches = available.filter((n) => re.test(n));
      if (matches.length === 0) throw new InvalidArgumentError(`hook pattern '${name}' matches no hook of this model`);
      matches.forEach((m) => wanted.add(m));
    } else if (available.includes(name)) {
      wanted.add(name);
    } else {
      const tail = name.split('.').pop() ?? name;
      const similar = available.filter((n) => n.endsWith(tail)).slice(0, 3);
      throw new InvalidArgumentError(
        `unknown hook '${name}'${similar.length ? ` (similar: ${similar.join(', ')})` : ''}; see model.hookNames`,
      );
    }
  }
  return available.filter((n) => wanted.has(n));
}
