/**
 * A server-sent-events parser for streams read with fetch (EventSource cannot POST). It follows the
 * HTML spec's line rules: LF, CRLF or CR line ends, `field: value` with one optional space after the
 * colon, several data lines joined by newlines, comment lines starting with ':', and an event
 * dispatched at each blank line (an event whose blank line never comes is dropped, as the spec says).
 */

export interface SseEvent {
  event: string;
  data: string;
}

export class SseParser {
  /** The current line's text so far, in the pieces it came in (joined once the line ends). */
  private partial: string[] = [];
  /** The last chunk ended in CR: an LF starting the next one is the rest of a CRLF. */
  private afterCR = false;
  private eventName = '';
  private data: string[] = [];

  /** Feeds decoded text; returns the events it completed. */
  push(text: string): SseEvent[] {
    const events: SseEvent[] = [];
    let start = 0;
    if (this.afterCR && text.charCodeAt(0) === 10) start = 1;
    this.afterCR = false;
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.partial.push(text.slice(start, i));
      const event = this.line(this.partial.join(''));
      this.partial = [];
      if (event) events.push(event);
      if (c === 13) {
        if (i + 1 === text.length) this.afterCR = true;
        else if (text.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    if (start < text.length) this.partial.push(text.slice(start));
    return events;
  }

  private line(line: string): SseEvent | null {
    if (line === '') {
      if (this.data.length === 0) {
        this.eventName = '';
        return null;
      }
      const event = { event: this.eventName || 'message', data: this.data.join('\n') };
      this.eventName = '';
      this.data = [];
      return event;
    }
    if (line.startsWith(':')) return null;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.eventName = value;
    else if (field === 'data') this.data.push(value);
    return null;
  }
}
