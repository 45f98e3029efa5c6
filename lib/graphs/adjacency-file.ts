/**
 * The attribution graph as a safetensors file, for analysis outside this library (numpy, torch): the
 * dense adjacency and one array per node field. Layout in docs/graphs.md.
 */
import { constants as bufferConstants } from 'node:buffer';
import { InvalidArgumentError } from '../errors.js';
import { writeSafetensors, type RawTensor } from '../io/safetensors.js';
import { rawF32, prepareOutputFile } from '../transcoders/formats/common.js';
import { formatBytes } from '../util/memory.js';
import { NODE_KIND_CODES, toDenseValues, validateAttributionGraph, type AttributionGraph } from './graph.js';

/** `format` in the file's metadata. */
export const ADJACENCY_FILE_FORMAT = 'transcoders.attribution-graph';
export const ADJACENCY_FILE_VERSION = 1;

/** Default bound on the dense adjacency (n² float32): 4 GiB, n ≈ 32768 nodes. */
export const DEFAULT_MAX_DENSE_BYTES = 4 * 1024 ** 3;

export interface AdjacencyFileOptions {
  /** Refuse graphs whose dense n x n float32 adjacency would exceed this many bytes (default 4 GiB). */
  maxDenseBytes?: number;
}

function rawI32(data: Int32Array, shape: number[]): RawTensor {
  return { dtype: 'I32', shape, bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/**
 * Writes `graph` to `path` (atomically) as safetensors:
 *
 * - `adjacency` F32 [n, n]: rows targets, columns sources, A[target, source] (a sparse graph densified);
 * - `node_kind` I32 [n] (NODE_KIND_CODES), `node_layer`, `node_position`, `node_index` I32 [n];
 * - `node_activation` F32 [n]; `node_probability` F32 [n] (the logit weight vector: 0 off the logits);
 * - metadata: format, version, prompt, scan, and JSON texts of tokens, token strings, transcoder_list,
 *   d_transcoder, n_layers and the kind codes.
 *
 * Validates the graph; refuses, before allocating, a graph whose dense adjacency would exceed
 * `maxDenseBytes`, naming the size.
 */
export function writeAdjacencyFile(path: string, graph: AttributionGraph, options: AdjacencyFileOptions = {}): void {
  const limit = options.maxDenseBytes ?? DEFAULT_MAX_DENSE_BYTES;
  validateAttributionGraph(graph);
  const n = graph.nodes.length;
  const bytes = n * n * 4;
  if (bytes > limit) {
    throw new InvalidArgumentError(
      `writeAdjacencyFile: ${path}: the dense adjacency of ${n} nodes would take ${formatBytes(bytes)} (${n}² float32), above the limit of ${formatBytes(limit)} (maxDenseBytes); prune the graph first or raise the limit`,
    );
  }
  if (bytes > bufferConstants.MAX_LENGTH) {
    throw new InvalidArgumentError(`writeAdjacencyFile: ${path}: the dense adjacency of ${n} nodes would take ${formatBytes(bytes)}, more than one buffer of this Node.js can hold (${formatBytes(bufferConstants.MAX_LENGTH)})`);
  }
  prepareOutputFile(path, 'writeAdjacencyFile');
  const kind = new Int32Array(n);
  const layer = new Int32Array(n);
  const position = new Int32Array(n);
  const index = new Int32Array(n);
  const activation = new Float32Array(n);
  const probability = new Float32Array(n);
  graph.nodes.forEach((node, i) => {
    kind[i] = NODE_KIND_CODES[node.kind];
    layer[i] = node.layer;
    position[i] = node.position;
    index[i] = node.index;
    activation[i] = node.activation;
    probability[i] = node.kind === 'logit' ? node.probability ?? 0 : 0;
  });
  writeSafetensors(
    path,
    {
      adjacency: rawF32(toDenseValues(graph.adjacency), [n, n]),
      node_kind: rawI32(kind, [n]),
      node_layer: rawI32(layer, [n]),
      node_position: rawI32(position, [n]),
      node_index: rawI32(index, [n]),
      node_activation: rawF32(activation, [n]),
      node_probability: rawF32(probability, [n]),
    },
    {
      format: ADJACENCY_FILE_FORMAT,
      version: String(ADJACENCY_FILE_VERSION),
      prompt: graph.prompt,
      scan: graph.scan,
      tokens: JSON.stringify(graph.tokens),
      token_strings: JSON.stringify(graph.tokenStrings),
      transcoder_list: JSON.stringify(graph.transcoderList),
      n_layers: String(graph.nLayers),
      d_transcoder: JSON.stringify(graph.dTranscoder),
      node_kind_codes: JSON.stringify(NODE_KIND_CODES),
    },
  );
}
