/**
 * Progress on stderr: a line redrawn in place on a terminal, a line every few seconds otherwise (logs
 * and CI stay readable). A redrawn line that is wider than the terminal wraps, and every redraw
 * then stacks another copy: lines are cut to fit the width, the detail first.
 */

/** Where progress goes: process.stderr, or any stream-like object (tests pass their own). */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  /** Terminal width; 80 is assumed when unknown. */
  columns?: number;
}

export interface ProgressOptions {
  /** Default process.stderr. */
  stream?: ProgressStream;
  /** Clock in milliseconds (default performance.now). */
  now?: () => number;
  /** Milliseconds between lines when the stream is not a terminal (default 5000). */
  interval?: number;
}

const DEFAULT_COLUMNS = 80;
const BAR_WIDTH = 24;
const MIN_BAR_WIDTH = 8;
/** Shortest cut detail worth showing; with less room the detail goes. */
const MIN_DETAIL = 12;

/** `text` cut to at most `width` characters, with an ellipsis when cut. */
export function truncate(text: string, width: number): string {
  const chars = Array.from(text);
  if (chars.length <= width) return text;
  return width <= 0 ? '' : `${chars.slice(0, width - 1).join('')}…`;
}

/** Characters a line may take on `stream`: one less than its width, so that the cursor never wraps. */
export function lineWidth(stream: ProgressStream): number {
  const columns = typeof stream.columns === 'number' && stream.columns > 0 ? stream.columns : DEFAULT_COLUMNS;
  return Math.max(10, columns - 1);
}

/** One status line: redrawn in place on a terminal, throttled to a line every `interval` otherwise. */
export class StatusLine {
  protected readonly stream: ProgressStream;
  protected readonly now: () => number;
  private readonly interval: number;
  private readonly tty: boolean;
  private lastWrite = -Infinity;
  /** A partial line is on the terminal (it needs a newline before anything else is printed). */
  private open = false;
  /** Not a terminal: the latest line that the throttle held back (close() prints it). */
  private pending: string | null = null;
  private closed = false;

  constructor(options: ProgressOptions = {}) {
    this.stream = options.stream ?? process.stderr;
    this.now = options.now ?? (() => performance.now());
    this.interval = options.interval ?? 5000;
    this.tty = this.stream.isTTY === true;
  }

  /** Shows `text` (cut to the width); `final` ends the line, after which updates are ignored. */
  show(text: string, final = false): void {
    if (this.closed) return;
    const line = truncate(text, lineWidth(this.stream));
    const now = this.now();
    if (this.tty) {
      this.stream.write(`\r\x1b[2K${line}${final ? '\n' : ''}`);
      this.open = !final;
    } else if (final || now - this.lastWrite >= this.interval) {
      this.stream.write(`${line}\n`);
      this.lastWrite = now;
      this.pending = null;
    } else {
      this.pending = line;
    }
    if (final) this.closed = true;
  }

  /** Ends the line (a newline on a terminal, the held-back last line otherwise); safe to call twice. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.open) this.stream.write('\n');
    if (this.pending !== null) this.stream.write(`${this.pending}\n`);
    this.open = false;
    this.pending = null;
  }
}

/** A progress bar with counts, an optional detail, the elapsed time and an estimate of the rest. */
export class ProgressBar extends StatusLine {
  private readonly started: number;

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly unit = '',
    options: ProgressOptions = {},
  ) {
    super(options);
    this.started = this.now();
  }

  update(done: number, detail = ''): void {
    const final = done >= this.total;
    this.show(this.render(done, detail, final), final);
  }

  /** The line for `done` items, fitted to the stream's width. */
  render(done: number, detail: string, final: boolean): string {
    const max = lineWidth(this.stream);
    const fraction = this.total > 0 ? Math.min(1, done / this.total) : 1;
    const elapsed = (this.now() - this.started) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const eta = rate > 0 ? (this.total - done) / rate : Infinity; // shown as '?' until there is a rate
    const counts = `${(100 * fraction).toFixed(0).padStart(3)}% ${done}/${this.total}${this.unit}`;
    const time = formatDuration(elapsed);
    const timeEta = `${time}${final ? '' : ` eta ${formatDuration(eta)}`}`;
    const compose = (barWidth: number, text: string, clock: string): string => {
      const bar = barWidth > 0 ? ` [${'#'.repeat(Math.round(fraction * barWidth)).padEnd(barWidth, '-')}]` : '';
      return `${this.label}${bar} ${counts}${text ? ` | ${text}` : ''} | ${clock}`;
    };
    let barWidth = BAR_WIDTH;
    if (detail) {
      // The detail says more than the bar's width: narrow the bar (down to MIN_BAR_WIDTH) to show
      // as much of it as possible, cut the rest, and drop it when not even MIN_DETAIL characters fit.
      const room = (width: number) => max - compose(width, '', timeEta).length - 3;
      const wanted = Array.from(detail).length;
      barWidth = Math.min(BAR_WIDTH, Math.max(MIN_BAR_WIDTH, BAR_WIDTH - (wanted - room(BAR_WIDTH))));
      if (room(barWidth) >= Math.min(MIN_DETAIL, wanted)) return compose(barWidth, truncate(detail, room(barWidth)), timeEta);
    }
    // No detail fits: keep the counts and time, giving up the bar's width, then the estimate, then the bar.
    for (const [width, clock] of [[barWidth, timeEta], [MIN_BAR_WIDTH, timeEta], [MIN_BAR_WIDTH, time], [0, time]] as const) {
      const line = compose(width, '', clock);
      if (line.length <= max) return line;
    }
    return truncate(compose(0, '', time), max);
  }
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  if (seconds < 60) return `${seconds.toFixed(0)}s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m${String(Math.floor(seconds % 60)).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}
