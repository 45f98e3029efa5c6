/**
 * Small DOM helpers. Every piece of data reaches the page as text (textContent, attribute values),
 * never as markup: tokens and labels come from models and files and are untrusted.
 */

const SVG_NS = 'http://www.w3.org/2000/svg';

type Child = Node | string | null | undefined | false;

/** An HTML element with attributes and children (strings become text nodes). */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  append(el, children);
  return el;
}

/** An SVG element with attributes (numbers written as they are) and children. */
export function s<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {}, ...children: Child[]): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

function append(el: Element, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
}

/** The element with this id; throws when the page lacks it (index.html and the code disagree). */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`viewer: the page has no #${id}`);
  return el as T;
}

/** The SVG element with this id. */
export function svgById(id: string): SVGSVGElement {
  const el = document.getElementById(id);
  if (!(el instanceof SVGSVGElement)) throw new Error(`viewer: the page has no <svg id="${id}">`);
  return el;
}

/** A number for people: up to 4 significant digits, no exponent for ordinary magnitudes. */
export function fmt(value: number | null | undefined): string {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  if (value === 0) return '0';
  const abs = Math.abs(value);
  if (abs >= 1e5 || abs < 1e-3) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
}

/** Shortens text for a tight spot (the full text goes in a title). */
export function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/** circuit-tracer's visible escapes of newline, tab and carriage return, for tokens in feature cards. */
export function visibleToken(token: string): string {
  return token.replaceAll('\n', '⏎').replaceAll('\t', '→').replaceAll('\r', '↵');
}
