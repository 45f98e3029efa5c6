/**
 * JSON schemas of the service's request bodies and parameters (Fastify checks them with ajv, no type
 * coercion: a body's "5" is not 5), and the types they guarantee. Strings that become file names
 * match a safe alphabet; arrays and strings are bounded so that a body cannot ask for unbounded work.
 */

/** Graph slugs and feature file names: no separators, no leading dot. */
export const SLUG = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';

const int = (minimum: number, maximum = 1e9) => ({ type: 'integer', minimum, maximum }) as const;
const prompt = { type: 'string', minLength: 1, maxLength: 20000 } as const;

export const GRAPH_BODY = {
  type: 'object',
  required: ['prompt'],
  additionalProperties: false,
  properties: {
    prompt,
    slug: { type: 'string', pattern: SLUG },
    maxFeatureNodes: int(1),
    maxLogits: int(1, 100),
    nodeThreshold: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
    edgeThreshold: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
  },
} as const;

export interface GraphBody {
  prompt: string;
  slug?: string;
  maxFeatureNodes?: number;
  maxLogits?: number;
  nodeThreshold?: number;
  edgeThreshold?: number;
}

/** One intervention: set the feature to `value`, or scale its activation on the prompt by `scale`. */
const INTERVENTION = {
  type: 'object',
  required: ['layer', 'position', 'feature'],
  additionalProperties: false,
  properties: {
    layer: int(0),
    position: int(-1e6, 1e6),
    feature: int(0),
    value: { type: 'number', minimum: -1e6, maximum: 1e6 },
    scale: { type: 'number', minimum: -1e6, maximum: 1e6 },
  },
  oneOf: [{ required: ['value'] }, { required: ['scale'] }],
} as const;

export const INTERVENE_BODY = {
  type: 'object',
  required: ['prompt', 'interventions'],
  additionalProperties: false,
  properties: {
    prompt,
    interventions: { type: 'array', minItems: 1, maxItems: 256, items: INTERVENTION },
    /** Whose logits are shown (default: the last token). */
    position: int(-1e6, 1e6),
    topK: int(1, 100),
    freezeAttention: { type: 'boolean' },
  },
} as const;

export interface InterventionBody {
  layer: number;
  position: number;
  feature: number;
  value?: number;
  scale?: number;
}

export interface InterveneBody {
  prompt: string;
  interventions: InterventionBody[];
  position?: number;
  topK?: number;
  freezeAttention?: boolean;
}

export const STEER_BODY = {
  type: 'object',
  required: ['prompt', 'steering'],
  additionalProperties: false,
  properties: {
    prompt,
    steering: {
      type: 'array',
      maxItems: 256,
      items: {
        type: 'object',
        required: ['layer', 'feature', 'value', 'position'],
        additionalProperties: false,
        properties: {
          layer: int(0),
          feature: int(0),
          value: { type: 'number', minimum: -1e6, maximum: 1e6 },
          position: { oneOf: [int(-1e6, 1e6), { const: 'new' }] },
        },
      },
    },
    maxNewTokens: int(1),
    temperature: { type: 'number', minimum: 0, maximum: 100 },
    seed: int(0),
  },
} as const;

export interface SteerBody {
  prompt: string;
  steering: { layer: number; feature: number; value: number; position: number | 'new' }[];
  maxNewTokens?: number;
  temperature?: number;
  seed?: number;
}

const ids = { type: 'array', maxItems: 100000, items: { type: 'string', maxLength: 200 } } as const;

/** The viewer's saved state (circuit-tracer's five keys, plus our edited labels). */
export const QPARAMS_BODY = {
  type: 'object',
  required: ['pinnedIds', 'supernodes', 'linkType', 'clickedId', 'sg_pos'],
  additionalProperties: false,
  properties: {
    pinnedIds: ids,
    supernodes: { type: 'array', maxItems: 10000, items: ids },
    linkType: { type: 'string', maxLength: 100 },
    clickedId: { type: 'string', maxLength: 200 },
    sg_pos: { type: 'string', maxLength: 100000 },
    clerps: { type: 'array', maxItems: 100000, items: { type: 'array', minItems: 2, maxItems: 2, items: { type: 'string', maxLength: 2000 } } },
  },
} as const;

export interface QParamsBody {
  pinnedIds: string[];
  supernodes: string[][];
  linkType: string;
  clickedId: string;
  sg_pos: string;
  clerps?: [string, string][];
}

export const SLUG_PARAMS = { type: 'object', required: ['slug'], properties: { slug: { type: 'string', pattern: SLUG } } } as const;
export const FILE_PARAMS = { type: 'object', required: ['file'], properties: { file: { type: 'string', pattern: SLUG } } } as const;
export const GRAPH_FILE_PARAMS = { type: 'object', required: ['file'], properties: { file: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\\.json$' } } } as const;
/** Path parameters are strings: ids by pattern. */
const id = { type: 'string', pattern: '^[0-9]{1,9}$' } as const;
export const FEATURE_PARAMS = { type: 'object', required: ['layer', 'index'], properties: { layer: id, index: id } } as const;
