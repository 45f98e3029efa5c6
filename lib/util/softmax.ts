/** Softmax of one row of logits, in float64 and shifted by the maximum (no overflow). */
export function softmax(logits: ArrayLike<number>, temperature = 1): Float64Array {
  let peak = -Infinity;
  for (let i = 0; i < logits.length; i++) peak = Math.max(peak, logits[i]!);
  const p = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += p[i] = Math.exp((logits[i]! - peak) / temperature);
  for (let i = 0; i < p.length; i++) p[i]! /= total;
  return p;
}
