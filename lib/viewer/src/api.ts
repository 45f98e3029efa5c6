/**
 * Calls to the transcoders service, by relative URL so the viewer works wherever the service mounts it.
 * Errors become ApiError with the service's `{error}` text, which the page shows as it is.
 */
import { SseParser } from './sse.js';
import type { FeatureCard, GraphJsonMetadata, GraphProgress, Health, InterveneResult, Intervention, QParams, Steering, SteerResult } from './types.js';

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** The message of a failed answer: its JSON `error`, else its text, else the status. */
async function errorOf(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => '');
  let message = text;
  try {
    const body = JSON.parse(text) as { error?: unknown };
    if (typeof body.error === 'string') message = body.error;
  } catch {
    // not JSON: the text itself
  }
  return new ApiError(message.trim() || `HTTP ${response.status} ${response.statusText}`, response.status);
}

const TOKEN_KEY = 'transcoders-token';

/**
 * The service's bearer token, when it has one: given once as `#token=SECRET` in the page's address
 * (a fragment never reaches a server or its logs), then kept for the tab in sessionStorage and taken
 * out of the address bar.
 */
function token(): string | null {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]!));
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function authorization(): Record<string, string> {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function request<T>(url: string, init: RequestInit = {}): Promise<T> {
  const response = await fetch(url, { ...init, headers: { Accept: 'application/json', ...authorization(), ...init.headers } });
  if (!response.ok) throw await errorOf(response);
  return (await response.json()) as T;
}

function sendJson<T>(method: 'POST' | 'PUT', url: string, body: unknown): Promise<T> {
  return request<T>(url, { method, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
}

/**
 * The service's health when the page is served by it, else null (a file:// page, no answer within a
 * few seconds, or an answer that is not the service's).
 */
export async function detectService(): Promise<Health | null> {
  if (location.protocol === 'file:') return null;
  try {
    const response = await fetch('api/health', { headers: { Accept: 'application/json' }, signal: AbortSignal.timeout(5000) });
    if (!response.ok) return null;
    const health = (await response.json()) as Partial<Health> | null;
    return health?.ok === true ? (health as Health) : null;
  } catch {
    return null;
  }
}

export async function listGraphs(): Promise<GraphJsonMetadata[]> {
  const body = await request<{ graphs?: GraphJsonMetadata[] }>('api/graphs');
  return Array.isArray(body.graphs) ? body.graphs : [];
}

export function fetchGraph(slug: string): Promise<unknown> {
  return request<unknown>(`api/graphs/${encodeURIComponent(slug)}`);
}

/** A feature's card, or null when the service has none for it (404). */
export async function fetchFeatureCard(layer: number, index: number): Promise<FeatureCard | null> {
  try {
    return await request<FeatureCard>(`api/features/${layer}/${index}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    throw err;
  }
}

/**
 * POST api/graph: computes a graph for `prompt`, reporting the stream's progress events; resolves with
 * the result event's graph. A refusal before the stream (400, 429) and an error event both reject with
 * the service's message. A plain JSON answer (a service that does not stream) is taken as the graph.
 */
export async function computeGraph(prompt: string, slug: string | undefined, onProgress: (p: GraphProgress) => void): Promise<unknown> {
  const response = await fetch('api/graph', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream', ...authorization() },
    body: JSON.stringify(slug ? { prompt, slug } : { prompt }),
  });
  if (!response.ok) throw await errorOf(response);
  if (!(response.headers.get('Content-Type') ?? '').includes('text/event-stream')) return response.json();
  if (!response.body) throw new ApiError('the service answered without a body', response.status);

  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      for (const event of parser.push(value)) {
        if (event.event === 'progress') {
          const p = JSON.parse(event.data) as Partial<GraphProgress>;
          onProgress({ stage: String(p.stage ?? ''), done: Number(p.done ?? 0), total: Number(p.total ?? 0) });
        } else if (event.event === 'result') {
          return JSON.parse(event.data) as unknown;
        } else if (event.event === 'error') {
          const e = JSON.parse(event.data) as { error?: unknown; status?: unknown };
          throw new ApiError(typeof e.error === 'string' ? e.error : 'the graph job failed', typeof e.status === 'number' ? e.status : 500);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => undefined);
  }
  throw new ApiError('the stream ended without a graph', 0);
}

export function intervene(prompt: string, interventions: Intervention[], topK: number): Promise<InterveneResult> {
  return sendJson('POST', 'api/intervene', { prompt, interventions, topK });
}

export function steer(prompt: string, steering: Steering[], maxNewTokens: number): Promise<SteerResult> {
  return sendJson('POST', 'api/steer', { prompt, steering, maxNewTokens });
}

/** PUT api/graphs/{slug}/qparams with circuit-tracer's five keys and our labels (the service takes no others). */
export function saveQParams(slug: string, qParams: QParams): Promise<{ ok: true }> {
  const { pinnedIds, supernodes, linkType, clickedId, sg_pos, clerps } = qParams;
  return sendJson('PUT', `api/graphs/${encodeURIComponent(slug)}/qparams`, { pinnedIds, supernodes, linkType, clickedId, sg_pos, ...(clerps && { clerps }) });
}
