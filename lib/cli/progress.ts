/**
 * A progress bar on stderr: redrawn in place on a terminal, a line every few seconds otherwise
 * (logs and CI stay readable).
 */
export class ProgressBar {
  private readonly started = performance.now();
  private lastLine = 0;
  private readonly tty = process.stderr.isTTY === true;

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly unit = '',
  ) {}

  update(done: number, detail = ''): void {
    const now = performance.now();
    const final = done >= this.total;
    if (!this.tty && !final && now - this.lastLine < 5000) return;
    this.lastLine = now;
    const fraction = this.total > 0 ? Math.min(1, done / this.total) : 1;
    const elapsed = (now - this.started) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const eta = rate > 0 ? (this.total - done) / rate : 0;
    const width = 24;
    const bar = '#'.repeat(Math.round(fraction * width)).padEnd(width, '-');
    const text = `${this.label} [${bar}] ${(100 * fraction).toFixed(0).padStart(3)}% ${done}/${this.total}${this.unit}` +
      `${detail ? ` | ${detail}` : ''} | ${formatDuration(elapsed)}${final ? '' : ` eta ${formatDuration(eta)}`}`;
    if (this.tty) process.stderr.write(`\r\x1b[2K${text}${final ? '\n' : ''}`);
    else process.stderr.write(`${text}\n`);
  }
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  if (seconds < 60) return `${seconds.toFixed(0)}s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m${String(Math.floor(seconds % 60)).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}
