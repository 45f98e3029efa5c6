/** Small inline-SVG charts for self-contained HTML reports (no scripts, no external files). */
import { escapeHtml } from '../circuits/render.js';

export interface Series {
  label: string;
  color: string;
  values: readonly number[];
  dashed?: boolean;
}

export interface ChartOptions {
  width?: number;
  height?: number;
  xLabel?: string;
  yLabel?: string;
  /** Y range (default: the data's range, including 0). */
  yMin?: number;
  yMax?: number;
  /** A vertical marker at this x, e.g. the start year. */
  markX?: number;
}

function frame(xs: readonly number[], all: number[], o: ChartOptions) {
  const width = o.width ?? 640;
  const height = o.height ?? 300;
  const pad = { left: 52, right: 12, top: 12, bottom: 36 };
  const lo = o.yMin ?? Math.min(0, ...all);
  const hi = o.yMax ?? Math.max(0, ...all);
  const span = hi - lo || 1;
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs);
  const sx = (x: number) => pad.left + ((x - x0) / (x1 - x0 || 1)) * (width - pad.left - pad.right);
  const sy = (y: number) => pad.top + (1 - (y - lo) / span) * (height - pad.top - pad.bottom);
  const ticks = [lo, lo + span / 2, hi].map((y) => `<line x1="${pad.left}" x2="${width - pad.right}" y1="${sy(y).toFixed(1)}" y2="${sy(y).toFixed(1)}" stroke="#eee"/><text x="${pad.left - 6}" y="${(sy(y) + 4).toFixed(1)}" font-size="10" text-anchor="end">${+y.toFixed(2)}</text>`);
  const xTicks = [x0, Math.round((x0 + x1) / 2), x1].map((x) => `<text x="${sx(x).toFixed(1)}" y="${height - pad.bottom + 14}" font-size="10" text-anchor="middle">${x}</text>`);
  const zero = lo < 0 && hi > 0 ? `<line x1="${pad.left}" x2="${width - pad.right}" y1="${sy(0).toFixed(1)}" y2="${sy(0).toFixed(1)}" stroke="#999"/>` : '';
  const mark = o.markX !== undefined ? `<line x1="${sx(o.markX).toFixed(1)}" x2="${sx(o.markX).toFixed(1)}" y1="${pad.top}" y2="${height - pad.bottom}" stroke="#e67e22" stroke-dasharray="3 3"/>` : '';
  const labels =
    (o.xLabel ? `<text x="${(pad.left + width - pad.right) / 2}" y="${height - 6}" font-size="11" text-anchor="middle">${escapeHtml(o.xLabel)}</text>` : '') +
    (o.yLabel ? `<text x="12" y="${(pad.top + height - pad.bottom) / 2}" font-size="11" text-anchor="middle" transform="rotate(-90 12 ${(pad.top + height - pad.bottom) / 2})">${escapeHtml(o.yLabel)}</text>` : '');
  return { width, height, pad, sx, sy, axes: ticks.join('') + xTicks.join('') + zero + mark + labels };
}

/** Lines over shared x values, with a legend below the plot. */
export function lineChart(xs: readonly number[], series: readonly Series[], options: ChartOptions = {}): string {
  const f = frame(xs, series.flatMap((s) => [...s.values]), options);
  const total = f.height + 14 * series.length + 4;
  const lines = series.map((s) => {
    const points = s.values.map((y, i) => `${f.sx(xs[i]!).toFixed(1)},${f.sy(y).toFixed(1)}`).join(' ');
    return `<polyline fill="none" stroke="${s.color}" stroke-width="1.8"${s.dashed ? ' stroke-dasharray="5 3"' : ''} points="${points}"><title>${escapeHtml(s.label)}</title></polyline>`;
  });
  const legend = series.map((s, i) => `<g transform="translate(${f.pad.left + 10},${f.height + 10 + 14 * i})"><line x1="0" x2="18" y1="-4" y2="-4" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5 3"' : ''}/><text x="24" y="0" font-size="10">${escapeHtml(s.label)}</text></g>`);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${f.width}" height="${total}" viewBox="0 0 ${f.width} ${total}">${f.axes}${lines.join('')}${legend.join('')}</svg>`;
}

/** Bars over x values (blue positive, red negative), hover titles with each value. */
export function barChart(xs: readonly number[], values: readonly number[], options: ChartOptions = {}): string {
  const f = frame(xs, [...values], { width: 300, height: 140, ...options });
  const w = Math.max(1, (f.width - f.pad.left - f.pad.right) / xs.length - 0.5);
  const bars = values.map((v, i) => {
    const y0 = f.sy(Math.max(0, Math.min(v, options.yMax ?? Infinity)));
    const y1 = f.sy(Math.min(0, v));
    return `<rect x="${(f.sx(xs[i]!) - w / 2).toFixed(1)}" y="${y0.toFixed(1)}" width="${w.toFixed(1)}" height="${Math.max(0.5, y1 - y0).toFixed(1)}" fill="${v < 0 ? '#d9534f' : '#3b7dd8'}"><title>${xs[i]}: ${v.toPrecision(3)}</title></rect>`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${f.width}" height="${f.height}" viewBox="0 0 ${f.width} ${f.height}">${f.axes}${bars.join('')}</svg>`;
}
