/**
 * The templated text the shipped demo model is trained on: the paper's greater-than task in
 * miniature ("The war lasted from the year 1732 to the year 1756."), mixed with a few other simple
 * tasks so that the model holds more than one mechanism (a less-than task on prices, counting,
 * name moving as in indirect-object identification, and copying a word list). Everything is drawn
 * from a seeded generator, so a seed gives the same text on every machine.
 */
import { Rng } from '../util/random.js';

export const EVENTS = [
  'war', 'siege', 'expedition', 'journey', 'famine', 'drought', 'reign', 'voyage', 'rebellion', 'strike',
  'trial', 'festival', 'plague', 'revolt', 'crusade', 'migration', 'blockade', 'occupation', 'truce', 'embargo',
] as const;
export const GOODS = ['bread', 'salt', 'wool', 'copper', 'silver', 'coffee', 'sugar', 'timber', 'cotton', 'wheat'] as const;
export const NAMES = ['Mary', 'John', 'Anna', 'Paul', 'Sarah', 'David', 'Emma', 'Peter', 'Lucy', 'James'] as const;
export const PLACES = ['store', 'park', 'market', 'station', 'school', 'river', 'garden', 'church'] as const;
export const ITEMS = ['drink', 'book', 'letter', 'ring', 'coin', 'map', 'key', 'hat', 'lamp', 'knife'] as const;
export const WORDS = [
  'apple', 'river', 'stone', 'cloud', 'horse', 'glass', 'paper', 'tiger', 'honey', 'chair',
  'flame', 'ocean', 'music', 'grass', 'snow', 'bread', 'light', 'wheel', 'sword', 'shell',
] as const;

/** Centuries of the greater-than sentences (the first two digits of both years). */
export const CENTURIES = [11, 12, 13, 14, 15, 16, 17, 18, 19] as const;
/** Start years YY of the greater-than task, as in the paper: 02 to 98. */
export const FIRST_START_YEAR = 2;
export const LAST_START_YEAR = 98;

/**
 * Ways of saying when the event happened; `{e}` is the event, `{a}` / `{b}` the start and end
 * year. The text before `{b}`'s last two digits is a greater-than prompt.
 */
export const PHRASINGS = [
  'The {e} lasted from the year {a} to the year {b}.',
  'The {e} lasted from {a} to {b}.',
  'The {e} started in {a} and ended in {b}.',
  'The {e} began in the year {a} and ended in the year {b}.',
] as const;

export type TaskName = 'greater-than' | 'price-fell' | 'counting' | 'names' | 'copy';

/** The other tasks' sentences; `{x}` are filled in by {@link taskExample}. */
export const TEMPLATES: Readonly<Record<Exclude<TaskName, 'greater-than'>, string>> = {
  'price-fell': 'The price of {good} fell from {from} to {to} dollars.',
  counting: 'We counted {numbers}.',
  names: 'When {a} and {b} went to the {place}, {b} gave a {item} to {a}.',
  copy: 'The list is {words}. Again: {words}.',
};

/** `template` with every `{name}` replaced by `values[name]`. */
export function fill(template: string, values: Readonly<Record<string, string | number>>): string {
  return template.replace(/\{(\w+)\}/g, (_, name: string) => {
    if (!(name in values)) throw new RangeError(`no value for {${name}} in "${template}"`);
    return String(values[name]);
  });
}

/** Share of each task in the training text. */
export const TASK_MIX: readonly (readonly [TaskName, number])[] = [
  ['greater-than', 0.5],
  ['price-fell', 0.125],
  ['counting', 0.125],
  ['names', 0.125],
  ['copy', 0.125],
];

export const twoDigits = (n: number): string => String(n).padStart(2, '0');

function pick<T>(rng: Rng, list: readonly T[]): T {
  return list[rng.int(list.length)]!;
}

/** Uniform integer in [lo, hi]. */
function between(rng: Rng, lo: number, hi: number): number {
  return lo + rng.int(hi - lo + 1);
}

/**
 * Share of greater-than sentences whose event ends in the next century: there any end year is
 * valid, so the rule "end > start" only holds when the centuries agree, and the model has to
 * compare them before comparing the years (a non-linear step that attention alone does poorly).
 */
export const NEXT_CENTURY_SHARE = 0.25;

/** A greater-than sentence "... from the year 17YY to the year 17ZZ" (the end century defaults to the start's). */
export function greaterThanSentence(event: string, century: number, startYear: number, endYear: number, phrasing = 0, endCentury = century): string {
  const template = PHRASINGS[phrasing];
  if (template === undefined) throw new RangeError(`phrasing ${phrasing} does not exist (0..${PHRASINGS.length - 1})`);
  return fill(template, { e: event, a: `${century}${twoDigits(startYear)}`, b: `${endCentury}${twoDigits(endYear)}` });
}

/**
 * The greater-than prompt: the sentence up to the end year's century, e.g.
 * "The war lasted from the year 1732 to the year 17". The model should continue with a two-digit
 * token above YY.
 */
export function greaterThanPrompt(event: string, century: number, startYear: number, phrasing = 0): string {
  const template = PHRASINGS[phrasing];
  if (template === undefined) throw new RangeError(`phrasing ${phrasing} does not exist (0..${PHRASINGS.length - 1})`);
  return fill(template.slice(0, template.indexOf('{b}')), { e: event, a: `${century}${twoDigits(startYear)}` }) + century;
}

/** One example of `task`. */
export function taskExample(task: TaskName, rng: Rng): string {
  switch (task) {
    case 'greater-than': {
      const event = pick(rng, EVENTS);
      const century = pick(rng, CENTURIES);
      const phrasing = rng.int(PHRASINGS.length);
      const yy = between(rng, FIRST_START_YEAR, LAST_START_YEAR);
      if (century < CENTURIES[CENTURIES.length - 1]! && rng.uniform() < NEXT_CENTURY_SHARE) return greaterThanSentence(event, century, yy, between(rng, 0, 99), phrasing, century + 1);
      return greaterThanSentence(event, century, yy, between(rng, yy + 1, 99), phrasing);
    }
    case 'price-fell': {
      const from = between(rng, 12, 99);
      const to = between(rng, 10, from - 1);
      return fill(TEMPLATES[task], { good: pick(rng, GOODS), from, to });
    }
    case 'counting': {
      const start = between(rng, 10, 90);
      const length = between(rng, 4, 8);
      const numbers = Array.from({ length }, (_, i) => start + i).filter((n) => n <= 99);
      return fill(TEMPLATES[task], { numbers: numbers.join(' ') });
    }
    case 'names': {
      const a = pick(rng, NAMES);
      let b = pick(rng, NAMES);
      while (b === a) b = pick(rng, NAMES);
      const place = pick(rng, PLACES);
      return fill(TEMPLATES[task], { a, b, place, item: pick(rng, ITEMS) });
    }
    case 'copy': {
      const words = Array.from({ length: between(rng, 3, 5) }, () => pick(rng, WORDS)).join(' ');
      return fill(TEMPLATES[task], { words });
    }
  }
}

/** A task drawn by {@link TASK_MIX}. */
export function drawTask(rng: Rng): TaskName {
  let u = rng.uniform();
  for (const [task, share] of TASK_MIX) {
    if (u < share) return task;
    u -= share;
  }
  return TASK_MIX[TASK_MIX.length - 1]![0];
}

/** An endless seeded stream of examples from the task mix. */
export function* examples(seed: number): Generator<string> {
  const rng = new Rng(seed);
  for (;;) yield taskExample(drawTask(rng), rng);
}

/**
 * Token rows of `length` ids for training: examples, each preceded by the BOS token, packed one
 * after another; the example that crosses a row's end is cut there, and the next row starts with
 * the next example (so every row starts with BOS, like the paper's GPT-2 contexts).
 */
export function* packedRows(encode: (text: string) => number[], bos: number, length: number, seed: number): Generator<number[]> {
  let row: number[] = [];
  for (const text of examples(seed)) {
    const ids = [bos, ...encode(text)];
    row.push(...ids.slice(0, length - row.length));
    if (row.length === length) {
      yield row;
      row = [];
    }
  }
}
